"""Probes and the validation report against sklearn / scipy oracles and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import jaccard_score

from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments
from aselect_kernels.validation.compare import compare, paired_bootstrap_ci, spearman
from aselect_kernels.validation.grids import ProbeGrid, dense_probe_grid, probe_grid
from aselect_kernels.validation.probe import (
    dense_probe_miou,
    dense_target,
    fit_logistic,
    linear_probe_accuracy,
    mean_iou,
    patch_labels,
    standardize,
)
from aselect_kernels.validation.report import report_markdown

from tiny_models import tiny_dit


def test_logistic_matches_sklearn():
    rng = np.random.default_rng(0)
    n, d, k = 300, 7, 4
    centers = rng.standard_normal((k, d)) * 1.5
    y = rng.integers(0, k, n)
    x = centers[y] + rng.standard_normal((n, d))
    l2 = 1e-2
    w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), k, l2=l2)
    # sklearn minimises 0.5||W||^2 + C sum CE  <=>  mean CE + ||W||^2 / (2 C n):  C = 1 / (2 n l2)
    sk = LogisticRegression(C=1 / (2 * n * l2), tol=1e-10, max_iter=5000).fit(x, y)
    ours = torch.softmax(torch.from_numpy(x) @ w + b, 1).numpy()
    np.testing.assert_allclose(ours, sk.predict_proba(x), atol=2e-4)


def test_probe_accuracy_uses_train_statistics_only():
    rng = np.random.default_rng(1)
    xtr = torch.from_numpy(rng.standard_normal((200, 5)))
    ytr = (xtr[:, 0] > 0).long()
    xte = torch.from_numpy(rng.standard_normal((100, 5)))
    yte = (xte[:, 0] > 0).long()
    assert linear_probe_accuracy(xtr, ytr, xte, yte, 2) > 0.9
    tr, te = standardize(xtr, xte + 100)
    assert tr.mean().abs() < 1e-9 and te.mean() > 50  # the test split is scaled by the train statistics


def test_dense_target_patch_labels_and_miou():
    rng = np.random.default_rng(2)
    u8 = torch.from_numpy(rng.integers(0, 256, (3, 6, 8)).astype(np.uint8))
    labels = torch.tensor([0, 4, 9])
    target = dense_target(u8, labels)
    assert target.max() <= 10 and ((target == 0) == (u8 <= 32)).all()
    assert (target[1][u8[1] > 32] == 5).all()
    patches = patch_labels(target, (3, 4), 11)
    manual = np.zeros((3, 3, 4), dtype=np.int64)
    for i in range(3):
        for a in range(3):
            for b in range(4):
                block = target[i, 2 * a:2 * a + 2, 2 * b:2 * b + 2].numpy().ravel()
                manual[i, a, b] = np.bincount(block, minlength=11).argmax()
    np.testing.assert_array_equal(patches.numpy(), manual)
    pred = torch.from_numpy(rng.integers(0, 4, (50,)))
    true = torch.from_numpy(rng.integers(0, 3, (50,)))
    present = sorted(set(pred.tolist()) | set(true.tolist()))
    expected = jaccard_score(true, pred, labels=present, average="macro")
    assert mean_iou(pred, true, 11) == pytest.approx(expected)


def test_dense_probe_learns_a_separable_grid():
    rng = np.random.default_rng(3)
    n, c, h, w = 20, 3, 4, 4
    target = torch.from_numpy(rng.integers(0, 3, (n, 8, 8)))
    patch = patch_labels(target, (h, w), 3)
    grid = torch.nn.functional.one_hot(patch, c).permute(0, 3, 1, 2).double() * 4
    grid = grid + 0.1 * torch.from_numpy(rng.standard_normal(grid.shape))
    miou = dense_probe_miou(grid[:14], target[:14], grid[14:], target[14:], 3)
    assert 0.3 < miou <= 1.0


def test_dense_probe_matches_sklearn_and_jaccard():
    """The dense probe against an independent pipeline: scikit-learn's fit on the same standardized patch tokens,
    numpy's bilinear upsampling (half-pixel centres, edge clamped) and mIoU by ``jaccard_score``."""
    rng = np.random.default_rng(5)
    n, c, h, w, classes, size = 16, 4, 4, 4, 3, 8
    target = torch.from_numpy(rng.integers(0, classes, (n, size, size)))
    patch = patch_labels(target, (h, w), classes)
    grid = torch.nn.functional.one_hot(patch, c).permute(0, 3, 1, 2).double() * 1.5
    grid = grid + torch.from_numpy(rng.standard_normal(grid.shape))
    grid = grid * torch.tensor([0.02, 30.0, 1.0, 4.0]).reshape(1, c, 1, 1) + 5.0  # standardization matters
    l2 = 1e-2
    miou = dense_probe_miou(grid[:10], target[:10], grid[10:], target[10:], classes, l2=l2)

    tokens = grid.permute(0, 2, 3, 1).reshape(n, h * w, c).numpy()
    tr, te = tokens[:10].reshape(-1, c), tokens[10:].reshape(-1, c)
    mu, sd = tr.mean(0), np.maximum(tr.std(0, ddof=1), 1e-6)
    tr, te = (tr - mu) / sd, (te - mu) / sd
    labels = patch[:10].reshape(-1).numpy()
    sk = LogisticRegression(C=1 / (2 * len(labels) * l2), tol=1e-10, max_iter=5000).fit(tr, labels)
    logits = sk.decision_function(te).reshape(n - 10, h, w, classes)

    def upsample_axis(a: np.ndarray, axis: int, out: int) -> np.ndarray:
        pos = np.clip((np.arange(out) + 0.5) * a.shape[axis] / out - 0.5, 0, a.shape[axis] - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, a.shape[axis] - 1)
        frac = (pos - lo).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
        return np.take(a, lo, axis) * (1 - frac) + np.take(a, hi, axis) * frac

    pred = upsample_axis(upsample_axis(logits, 1, size), 2, size).argmax(-1)
    truth = target[10:].numpy()
    present = sorted(set(pred.ravel()) | set(truth.ravel()))
    expected = jaccard_score(truth.ravel(), pred.ravel(), labels=present, average="macro")
    assert miou == pytest.approx(expected, abs=0.01)


def test_spearman_matches_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(12), rng.standard_normal(12)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    a[3] = a[5]  # ties
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert np.isnan(spearman(np.ones(5), np.arange(5)))


def _selection(ts, taps, score):
    t, p = score.shape
    m = Moments(np.ones((t, p, 1), dtype=np.int64), score[..., None].astype(float),
                score[..., None].astype(float) ** 2, np.zeros((t, p, 1), dtype=np.int64))
    return SelectionResult(ts, taps, ["s"], {"s": "max"}, m, "s")


def test_compare_on_a_hand_built_grid():
    ts, taps = [0, 100, 200, 300], ["a", "b", "c"]
    acc = np.array([[0.80, 0.70, 0.60], [0.85, 0.72, 0.61], [0.82, 0.75, 0.62], [0.70, 0.65, 0.50]])
    score = np.array([[1.0, 5.0, 0.0], [2.0, 4.0, 3.0], [3.0, 3.0, 1.0], [4.0, 2.0, 2.0]])
    grid = ProbeGrid(ts, taps, acc, "accuracy", 0.5, 100, 1.0)
    rep = compare(_selection(ts, taps, score), grid)["tap_sets"]["all"]
    assert rep["best"] == {"t": 100, "tap": "a", "metric": pytest.approx(85.0)}
    mx = rep["scorers"]["s:max"]
    assert mx["selected_t_per_tap"] == {"a": 300, "b": 0, "c": 100}
    assert mx["mean_gap"] == pytest.approx(((85 - 70) + (75 - 70) + (62 - 61)) / 3)
    assert mx["joint"] == {"t": 0, "tap": "b", "metric": pytest.approx(70.0), "gap": pytest.approx(15.0)}
    rho_a = spearmanr(score[:, 0], acc[:, 0]).statistic
    rho_b = spearmanr(score[:, 1], acc[:, 1]).statistic
    rho_c = spearmanr(score[:, 2], acc[:, 2]).statistic
    assert mx["mean_rho"] == pytest.approx((rho_a + rho_b + rho_c) / 3)
    assert rep["scorers"]["s:min"]["mean_rho"] == pytest.approx(-(rho_a + rho_b + rho_c) / 3)
    triv = rep["trivial"]
    assert triv["smallest_t"]["joint"] == {"t": 0, "tap": "b", "metric": pytest.approx(70.0),
                                           "gap": pytest.approx(15.0)}
    assert triv["t100"]["mean_gap"] == pytest.approx(((85 - 85) + (75 - 72) + (62 - 61)) / 3)
    assert triv["random"]["joint"]["gap"] == pytest.approx(85 - acc.mean() * 100)
    cost = {"select_wall_s": 1.0, "select_forward_samples": 8, "grid_wall_s": 20.0, "grid_forward_samples": 80,
            "wall_ratio": 20.0, "forward_ratio": 10.0}
    classification = {"grid": grid.to_dict(), **compare(_selection(ts, taps, score), grid)}
    text = report_markdown({"dataset": "toy", "n_select": 2, "n_train": 10, "n_test": 10, "timesteps": "0:400:100",
                            "taps": "abc", "cost": cost, "classification": classification})
    assert "| s | max (default) |" in text and "| (0, `b`) | 70.00 | 15.00 |" in text
    assert "**20.0x less wall time** and **10.0x fewer forward samples**" in text


def test_paired_bootstrap_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    n = 800
    ref = rng.random(n) < 0.8
    flip = rng.random((3, n))
    others = np.stack([ref ^ (flip[0] < 0.1), rng.random(n) < 0.6, ref.copy()])
    ci = paired_bootstrap_ci(ref, others, resamples=4000)
    for row, (lo, hi) in zip(others, ci, strict=True):
        d = 100.0 * (ref.astype(float) - row.astype(float))  # paired differences, in points
        half = 1.96 * d.std(ddof=1) / np.sqrt(n)
        assert lo == pytest.approx(d.mean() - half, abs=0.35) and hi == pytest.approx(d.mean() + half, abs=0.35)
    assert tuple(ci[2]) == (0.0, 0.0)  # identical predictions: no uncertainty about a zero gap


def test_compare_attaches_intervals_when_per_sample_results_are_kept():
    ts, taps = [0, 100], ["a", "b"]
    rng = np.random.default_rng(0)
    correct = rng.random((2, 2, 300)) < np.array([0.9, 0.7, 0.6, 0.5])[:, None].reshape(2, 2, 1)
    floor = rng.random(300) < 0.75
    grid = ProbeGrid(ts, taps, correct.mean(-1), "accuracy", float(floor.mean()), 10, 1.0, correct=correct,
                     floor_correct=floor)
    score = np.array([[0.0, 1.0], [2.0, 3.0]])  # max picks (100, b); min picks (0, a) = the best cell
    rep = compare(_selection(ts, taps, score), grid)["tap_sets"]["all"]
    best = rep["best"]
    assert (best["t"], best["tap"]) == (0, "a")
    want = paired_bootstrap_ci(correct[0, 0], np.stack([correct[1, 1], floor]))
    assert rep["scorers"]["s:max"]["joint"]["gap_ci95"] == pytest.approx(list(want[0]))
    assert rep["scorers"]["s:min"]["joint"]["gap_ci95"] == [0.0, 0.0]
    assert best["vs_floor"]["ci95"] == pytest.approx(list(want[1]))
    assert best["vs_floor"]["margin"] == pytest.approx(100 * (correct[0, 0].mean() - floor.mean()))
    p = correct[0, 0].mean()
    assert best["se"] == pytest.approx(100 * np.sqrt(p * (1 - p) / 300))
    assert "gap_ci95" not in rep["trivial"]["random"]["joint"]
    assert "gap_ci95" in rep["trivial"]["t100"]["joint"]


def test_probe_grids_on_a_tiny_dit():
    model = tiny_dit(sample=8)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 2
    u8 = (torch.rand(24, 8, 8, generator=gen) * 60).to(torch.uint8)
    u8[labels == 1, 2:6, 2:6] = 220  # class 1 has a bright square
    x = (u8.float() / 127.5 - 1)[:, None]
    fits: list[tuple[int, int]] = []
    grid = probe_grid(model, (x[:16], labels[:16]), (x[16:], labels[16:]), [0, 500], "block_out", 2,
                      chunk_size=16, progress=False, on_fit=lambda done, total: fits.append((done, total)))
    assert fits == [(i, 5) for i in range(1, 6)]  # 2 t x 2 taps, then the raw-pixel floor
    assert grid.metric.shape == (2, 2) and grid.forward_samples == 48
    assert grid.floor == 1.0 and grid.metric[0].max() >= 0.75
    assert grid.correct.shape == (2, 2, 8) and np.array_equal(grid.correct.mean(-1), grid.metric)
    target = dense_target(u8, labels)
    dense = dense_probe_grid(model, (x[:16], target[:16]), (x[16:], target[16:]), [0, 500], "block_out:1", 3,
                             chunk_size=48, progress=False)
    assert dense.metric.shape == (2, 1) and 0 < dense.metric.max() <= 1 and 0 < dense.floor <= 1


def test_tap_sets_split_every_kind():
    from aselect_kernels.taps import resolve_taps
    from aselect_kernels.validation.compare import tap_sets

    from tiny_models import PlainDiT, tiny_dit

    for model in (tiny_dit(), PlainDiT()):
        names = [s.name for s in resolve_taps(model, "all")]
        sets = tap_sets(names)
        assert sets["all"] == names
        for kind in ("query", "attn_out", "mlp_out", "mlp_hidden", "block_out"):
            assert sets[kind] == [s.name for s in resolve_taps(model, kind)], (type(model).__name__, kind)


def test_candidates_add_2d_ratios_and_effective_rank():
    from aselect_kernels.reference import StatsConfig
    from aselect_kernels.select import select_timestep
    from aselect_kernels.validation.run import _with_candidates

    model = tiny_dit(sample=8)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    base = select_timestep(model, x, [0, 500], "block_out", backend="torch", progress=False)
    res = _with_candidates(base, model, x, [0, 500], "block_out", 0, False)
    assert res.scorers == base.scorers + ["hfr_2d", "hfr_2d_centered", "erank"]
    np.testing.assert_array_equal(res.mean[..., : len(base.scorers)], base.mean)
    two_d = select_timestep(model, x, [0, 500], "block_out", scorer="hfr", extra_scorers=["hfr_centered"],
                            config=StatsConfig(hfr_dims=2), backend="torch", progress=False)
    for name, col in (("hfr_2d", "hfr"), ("hfr_2d_centered", "hfr_centered")):
        np.testing.assert_allclose(res.mean[..., res.scorers.index(name)], two_d.mean[..., two_d.scorers.index(col)],
                                   rtol=1e-6)
    erank = res.mean[..., res.scorers.index("erank")]
    assert np.all((erank >= 1) & (erank <= 16)) and res.directions["erank"] == "max"
