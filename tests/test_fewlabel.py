"""Few-label selection: the closed-form leave-one-out criteria against explicit refits, the bootstrap against
an explicit resampling loop, and ``select_timestep(labels=)`` / ``aselect select --labels`` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from aselect_kernels import fewlabel
from aselect_kernels.cli import main
from aselect_kernels.result import SelectionResult
from aselect_kernels.select import capture_features, select_timestep

from tiny_models import tiny_dit


def _data(seed: int, n_per: int, k: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(k), n_per))
    f = rng.normal(size=(len(y), c)) * rng.uniform(0.1, 5, c) + rng.normal(size=(k, c))[y] * rng.uniform(0, 1)
    return f, y


def _ridge_oracle(f: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    z = (f - f.mean(0)) / f.std(0)
    onehot = np.eye(y.max() + 1)[y]
    out = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        fit = Ridge(alpha=lam, fit_intercept=True).fit(z[keep], onehot[keep])
        out.append(fit.predict(z[i:i + 1]).argmax() == y[i])
    return np.array(out)


def _ncm_oracle(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = (f - f.mean(0)) / f.std(0)
    out = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        means = np.stack([z[keep & (y == k)].mean(0) for k in range(y.max() + 1)])
        cos = means @ z[i] / (np.linalg.norm(means, axis=1) * np.linalg.norm(z[i]))
        out.append(cos.argmax() == y[i])
    return np.array(out)


@pytest.mark.parametrize("seed,n_per,k,c", [(0, 5, 3, 40), (1, 10, 4, 12), (2, 3, 10, 64), (3, 8, 2, 200)])
def test_closed_forms_match_explicit_refits(seed, n_per, k, c):
    f, y = _data(seed, n_per, k, c)
    for lam in (fewlabel.RIDGE_LAMBDA, 0.5):
        np.testing.assert_array_equal(fewlabel.ridge_loo_correct(f, y, lam), _ridge_oracle(f, y, lam))
    np.testing.assert_array_equal(fewlabel.ncm_loo_correct(f, y), _ncm_oracle(f, y))
    # batched over leading axes: each slice as on its own
    g, _ = _data(seed + 10, n_per, k, c)
    both = fewlabel.ridge_loo_correct(np.stack([f, g]), y)
    np.testing.assert_array_equal(both[1], _ridge_oracle(g, y, fewlabel.RIDGE_LAMBDA))


def test_closed_form_is_not_resubstitution():
    """Pure noise features, many channels: resubstitution would be perfect, leave-one-out is near chance."""
    f, y = _data(5, 20, 2, 500)
    f = np.random.default_rng(6).normal(size=f.shape)
    assert fewlabel.ridge_loo_correct(f, y, 1e-6).mean() < 0.8
    assert fewlabel.ridge_loo_correct(f, y).mean() == _ridge_oracle(f, y, fewlabel.RIDGE_LAMBDA).mean()


def test_bootstrap_against_an_explicit_resampling_loop():
    rng = np.random.default_rng(7)
    n, cells = 60, 8
    p = rng.uniform(0.5, 0.8, cells)
    correct = (rng.uniform(size=(n, cells)) < p).astype(float)
    cert = fewlabel.bootstrap(correct, resamples=3000, seed=1)
    assert cert.pick == int(np.argmax(correct.mean(0)))
    loop = np.random.default_rng(99)
    picks, diffs = [], []
    for _ in range(3000):
        draw = correct[loop.integers(0, n, n)].mean(0)
        picks.append(np.argmax(draw))
        diffs.append(draw[cert.pick] - draw)
    assert abs(cert.share - np.mean(np.array(picks) == cert.pick)) < 0.04
    lo = np.percentile(np.array(diffs), 2.5, axis=0)
    clear = [i for i in range(cells) if abs(lo[i]) > 0.02]  # away from the interval's edge
    assert all((i in cert.tied) == (lo[i] <= 0) for i in clear)


def test_bootstrap_dominant_and_duplicate_cells():
    rng = np.random.default_rng(8)
    correct = (rng.uniform(size=(40, 5)) < 0.5).astype(float)
    correct[:, 3] = 1.0
    cert = fewlabel.bootstrap(correct, seed=2)
    assert (cert.pick, cert.share, cert.tied) == (3, 1.0, [3])
    correct[:, 1] = correct[:, 3]
    correct[:, 4] = np.nan  # a dead cell is never picked nor tied
    cert = fewlabel.bootstrap(correct, seed=2)
    assert cert.pick == 1 and cert.tied == [1, 3] and cert.share == 1.0


def _labelled(n_per: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randperm(3 * n_per, generator=gen) % 3 + 4
    base = torch.randn(3, 1, 12, 12, generator=gen)
    x = (0.6 * base[y - 4] + torch.randn(len(y), 1, 12, 12, generator=gen)).clamp(-1, 1)
    return x, y


def test_select_with_labels_against_an_oracle():
    model = tiny_dit()
    x, y = _labelled(5, 3)
    ts = [0, 200, 600]
    res = select_timestep(model, x, ts, taps="all", labels=y, progress=False, seed=4)
    assert res.primary == "ridge_loo" and res.scorers[-2:] == ["ridge_loo", "ncm_loo"]
    assert res.meta["samples"] == len(y) * len(ts)  # one draw, no second forward
    pooled, _ = capture_features(model, x, ts, "all", seed=4, progress=False)
    yi = (y - 4).numpy()
    acc = np.zeros((len(ts), len(res.taps)))
    for p, tap in enumerate(res.taps):
        np.testing.assert_allclose(res.channel_means[tap].numpy(), pooled[tap].numpy(), rtol=1e-4, atol=1e-5)
        for ti in range(len(ts)):
            f = res.channel_means[tap][:, ti].double().numpy()
            oracle = _ridge_oracle(f, yi, fewlabel.RIDGE_LAMBDA)
            acc[ti, p] = oracle.mean()
            np.testing.assert_array_equal(res.per_sample[:, ti, p, -2], oracle)
            np.testing.assert_array_equal(res.per_sample[:, ti, p, -1], _ncm_oracle(f, yi))
    np.testing.assert_allclose(res.mean[:, :, -2], acc)
    ti, p = divmod(int(np.argmax(acc)), len(res.taps))
    assert res.best() == (ts[ti], res.taps[p]) and res.meta["labels"]["pick"] == [ts[ti], res.taps[p]]
    assert 0 < res.meta["labels"]["pick_share"] <= 1 and [ts[ti], res.taps[p]] in res.meta["labels"]["tied"]
    back = SelectionResult.from_json(res.to_json())
    assert back.best() == res.best() and back.meta["labels"] == res.meta["labels"]
    assert "bootstrap resamples" in back.table() and back.table() == res.table()
    other = select_timestep(model, x, ts, taps="all", labels=y, scorer="hfr", progress=False, seed=4)
    assert other.primary == "hfr" and np.array_equal(other.mean[..., -2:], res.mean[..., -2:])


@pytest.mark.parametrize("labels,match", [([1] * 6, "at least 2 classes"), ([0, 0, 0, 1, 1, 2], "2 images of each"),
                                          ([0, 1] * 2, "one per image"), ([0.0, 1.0] * 3, "integers")])
def test_bad_labels_fail_before_the_forward(labels, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        select_timestep(tiny_dit(), torch.zeros(6, 1, 12, 12), [0], labels=labels, progress=False,
                        call=lambda *a: calls.append(a))
    assert not calls


def test_label_criterion_needs_labels():
    with pytest.raises(ValueError, match="needs labels"):
        select_timestep(tiny_dit(), torch.zeros(4, 1, 12, 12), [0], scorer="ridge_loo", progress=False)


def test_draw_per_class():
    y = np.random.default_rng(0).integers(0, 4, 50)
    idx = fewlabel.draw_per_class(y, 3, seed=5)
    assert np.array_equal(np.bincount(y[idx]), np.minimum(np.bincount(y), 3)) and len(set(idx)) == len(idx)
    assert not np.array_equal(idx, fewlabel.draw_per_class(y, 3, seed=6))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewlabel_cli")
    tiny_dit(sample=12).save_pretrained(root / "dit")
    x, y = _labelled(6, 9)
    u8 = ((x[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    np.savez(root / "labelled.npz", images=u8, labels=y.numpy())
    np.savez(root / "unlabelled.npz", images=u8)
    from PIL import Image

    for i, (img, lab) in enumerate(zip(u8, y.tolist(), strict=True)):
        (root / "folder" / f"class{lab}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "folder" / f"class{lab}" / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("source", ["labelled.npz", "folder"])
def test_cli_select_labels_equals_the_library(files, tmp_path, source):
    from aselect_kernels.images import load_labelled
    from aselect_kernels.models import load_model

    out = tmp_path / "out"
    code = main(["select", "--model", str(files / "dit"), "--images", str(files / source), "--labels",
                 "--per-class", "4", "--timesteps", "0,500", "--taps", "all", "--seed", "2", "--device", "cpu",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    data = load_labelled(files / source)
    idx = fewlabel.draw_per_class(data.labels.numpy(), 4, seed=2)
    direct = select_timestep(load_model(str(files / "dit"), device="cpu"), data.images[idx], "0,500", "all",
                             labels=data.labels[idx], seed=2, progress=False)
    back = SelectionResult.from_json(out / "result.json")
    assert back.primary == "ridge_loo" and back.best() == direct.best()
    np.testing.assert_array_equal(back.moments.total, direct.moments.total)
    facts = ("fit_s",)  # run facts
    assert back.meta["labels"]["per_class"] == [4, 4, 4]
    assert {k: v for k, v in back.meta["labels"].items() if k not in facts} == {
        k: v for k, v in direct.meta["labels"].items() if k not in facts}


@pytest.mark.parametrize("args,message", [
    (["--images", "unlabelled.npz", "--labels"], "--labels"),
    (["--images", "labelled.npz", "--scorer", "ridge_loo"], "needs --labels"),
    (["--images", "labelled.npz", "--labels", "--per-class", "1"], "2 images of each"),
])
def test_cli_select_labels_errors(files, tmp_path, capsys, args, message):
    args = [a if not a.endswith(".npz") else str(files / a) for a in args]
    code = main(["select", "--model", str(files / "dit"), *args, "--timesteps", "0", "--device", "cpu",
                 "--no-progress", "--out", str(tmp_path / "o")])
    assert code != 0 and message in capsys.readouterr().err
