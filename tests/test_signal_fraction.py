"""The across-image scorer sf (signal fraction): its reference against numpy, and selection against hand-noised
features of two noise draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aselect_kernels.noise import Noiser
from aselect_kernels.reference import channel_means, signal_fraction
from aselect_kernels.scorers import DEFAULT_SCORER, Moments, Scorer, get_scorer
from aselect_kernels.select import select_timestep

from tiny_models import tiny_dit

TS = [0, 300, 999]


def _sf_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Var(a - b) / (Var a + Var b) per channel (ddof 1), averaged over channels that vary."""
    va, vb = a.var(0, ddof=1), b.var(0, ddof=1)
    live = va + vb > 0
    return float(np.mean(1.0 - (a - b).var(0, ddof=1)[live] / (va + vb)[live]))


@pytest.mark.parametrize(("n", "c"), [(2, 1), (7, 37), (64, 130)])
def test_reference_matches_numpy(n, c):
    rng = np.random.default_rng(n * 100 + c)
    img = rng.standard_normal((n, c)) * rng.uniform(0.1, 3.0, c)
    a = img + 0.4 * rng.standard_normal((n, c)) + 5.0
    b = img + 0.4 * rng.standard_normal((n, c)) + 5.0
    got = float(signal_fraction(torch.from_numpy(a), torch.from_numpy(b)))
    assert got == pytest.approx(_sf_numpy(a, b), rel=1e-12, abs=1e-12)


def test_reference_limits_dead_channels_and_bad_rows():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 6))
    assert float(signal_fraction(torch.from_numpy(a), torch.from_numpy(a.copy()))) == pytest.approx(1.0, abs=1e-14)
    b = rng.standard_normal((50, 6))  # independent of a: sf near 0
    assert abs(float(signal_fraction(torch.from_numpy(a), torch.from_numpy(b)))) < 0.2
    a[:, 2] = 7.0  # a channel constant in both draws is left out, not counted as 0
    b2 = a.copy()
    assert float(signal_fraction(torch.from_numpy(a), torch.from_numpy(b2))) == pytest.approx(1.0, abs=1e-14)
    bad = a.copy()
    bad[3, 0] = np.nan  # a non-finite row is dropped from both draws
    want = _sf_numpy(np.delete(a, 3, 0), np.delete(b, 3, 0))
    assert float(signal_fraction(torch.from_numpy(bad), torch.from_numpy(b))) == pytest.approx(want, rel=1e-12)
    assert np.isnan(float(signal_fraction(torch.from_numpy(a[:1]), torch.from_numpy(b[:1]))))
    assert np.isnan(float(signal_fraction(torch.zeros(5, 3), torch.zeros(5, 3))))
    with pytest.raises(ValueError, match="one shape"):
        signal_fraction(torch.zeros(5, 3), torch.zeros(5, 4))


def test_channel_means_of_a_noncontiguous_tensor():
    x = torch.randn(5, 6, 31, dtype=torch.float64).transpose(1, 2)[:, 3:, :]  # [5, 28, 6], strided
    np.testing.assert_allclose(channel_means(x, torch.float64).numpy(), x.numpy().mean(1), rtol=1e-13)


def _hand_means(model, images, ts, path, seed):
    """Oracle: noise each (image, t) by hand with the scheduler and the seeded noise, tap the module, token mean."""
    noiser = Noiser("ddpm")
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    box = {}
    handle = model.get_submodule(path).register_forward_hook(lambda m, a, o: box.__setitem__("x", o))
    rows = []
    try:
        for b in range(images.shape[0]):
            for t in ts:
                tt = torch.tensor([t])
                with torch.no_grad():
                    model(hidden_states=noiser.scheduler.add_noise(images[b:b + 1], noise[b:b + 1], tt), timestep=tt,
                          class_labels=torch.tensor([10]))
                rows.append(box["x"][0].double().mean(0).numpy())
    finally:
        handle.remove()
    return np.stack(rows).reshape(images.shape[0], len(ts), -1)


@pytest.mark.parametrize("backend", ["torch", "matmul"])
def test_selection_sf_equals_hand_noised_draws(backend):
    model = tiny_dit()
    images = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    path = "transformer_blocks.1.ff.net.0"
    res = select_timestep(model, images, TS, taps=[path, "transformer_blocks.0.attn1.to_q"], backend=backend,
                          seed=4, chunk_size=4, progress=False)
    assert DEFAULT_SCORER == "sf" and res.primary == "sf" and res.meta["pair_seed"] == 5
    assert set(res.scorers) == {"sf", "token_var", "hfr", "hfr_centered", "chan_entropy"}
    a, b = _hand_means(model, images, TS, path, 4), _hand_means(model, images, TS, path, 5)
    s, p = res.scorers.index("sf"), res.taps.index(path)
    for ti in range(len(TS)):
        assert res.mean[ti, p, s] == pytest.approx(_sf_numpy(a[:, ti], b[:, ti]), rel=1e-5, abs=1e-6)
    assert (res.count[:, :, s] == 5).all() and (res.std[:, :, s] < 1e-6).all()  # one value per cell: no spread
    assert res.best_t_per_tap()[path] == TS[int(np.argmax(res.mean[:, p, s]))]
    ti, q = np.unravel_index(int(np.argmax(res.mean[:, :, s])), res.mean.shape[:2])
    assert res.best() == (TS[ti], res.taps[q])


def test_stat_primary_runs_one_draw_unless_sf_is_asked_for():
    model = tiny_dit()
    images = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(6))
    one = select_timestep(model, images, TS, taps="query:0", scorer="token_var", backend="torch", progress=False)
    assert "sf" not in one.scorers and one.meta["samples"] == 9 and one.meta["pair_scorers"] == []
    both = select_timestep(model, images, TS, taps="query:0", scorer="token_var", extra_scorers=["sf"],
                           backend="torch", progress=False)
    assert both.meta["samples"] == 18 and both.meta["pair_scorers"] == ["sf"]
    np.testing.assert_array_equal(both.mean[..., 0], one.mean[..., 0])  # the first draw is the same run


def test_scorer_kinds_are_exclusive_and_population_moments():
    with pytest.raises(ValueError, match="exactly one"):
        Scorer("x", "max", stat="token_var", pair_fn=signal_fraction)
    assert get_scorer("sf").pair_fn is signal_fraction
    m = Moments.from_population(np.array([[0.5, np.nan]]), np.array([[4, 4]]), np.array([[1, 1]]))
    assert m.mean[0, 0] == 0.5 and np.isnan(m.mean[0, 1]) and m.count.tolist() == [[4, 0]]
    assert m.flagged.tolist() == [[1, 5]] and m.std[0, 0] == 0.0
