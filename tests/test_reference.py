"""The reference statistics against an independent numpy/scipy oracle (fp64)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from aselect_kernels.frequency import (
    CutoffWarning,
    band_counts,
    high_frequency_mask,
    low_frequency_basis,
    normalized_frequency,
)
from aselect_kernels.reference import STAT_NAMES, StatsConfig, effective_rank, reference_stats
from aselect_kernels.stats import compute_stats


def numpy_stats(x: np.ndarray, cutoff: float, grid: tuple[int, int] | None) -> np.ndarray:
    """Each statistic written directly from its textbook definition with numpy's FFT."""
    n, length, c = x.shape
    out = np.zeros((n, len(STAT_NAMES)))
    for i in range(n):
        s = x[i]
        logp = log_softmax(s, axis=1)
        ent = -(np.exp(logp) * logp).sum(1).mean()

        def ratio(sig: np.ndarray) -> float:
            if grid is None:
                power = np.abs(np.fft.fft(sig, axis=0)) ** 2
                f = np.array([min(k, length - k) / (length / 2) for k in range(length)])
            else:
                h, w = grid
                power = (np.abs(np.fft.fft2(sig.reshape(h, w, c), axes=(0, 1))) ** 2).reshape(length, c)
                f = np.array([np.hypot(min(a, h - a) / (h / 2), min(b, w - b) / (w / 2))
                              for a in range(h) for b in range(w)])
            return power[f > cutoff].sum() / power.sum()

        out[i] = [s.mean(), (s**2).mean(), s.var(axis=0, ddof=1).mean(), ent, ratio(s), ratio(s - s.mean(0))]
    return out


@pytest.mark.parametrize("shape,grid,dims,cutoff", [
    ((1, 49, 200), None, 1, 0.15),
    ((3, 64, 17), None, 1, 0.3),
    ((2, 48, 9), (6, 8), 2, 0.4),
    ((2, 35, 11), (5, 7), 2, 0.5),
    ((4, 196, 24), (14, 14), 2, 0.15),
    ((2, 42, 5), (7, 6), 2, 0.25),  # odd h, even w: the half spectrum's Nyquist column counts once
    ((3, 5, 4), None, 1, 0.5),  # odd L with no Nyquist bin
    ((2, 40, 7), None, 1, 0.25),  # 1-D, k = 5 lies exactly on the cutoff (5 / 20)
    ((2, 64, 6), (8, 8), 2, 0.5),  # 2-D, (0, 2), (2, 0) and their mirrors lie exactly on the cutoff
])
def test_reference_matches_numpy(shape, grid, dims, cutoff):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2, size=(1, 1, shape[2]))
    cfg = StatsConfig(cutoff=cutoff, hfr_dims=dims, grid=grid)
    ours = reference_stats(torch.from_numpy(x), cfg, torch.float64).numpy()
    np.testing.assert_allclose(ours, numpy_stats(x, cutoff, grid if dims == 2 else None), rtol=1e-10, atol=1e-12)


ON_CUTOFF = [((2, 40, 7), None, 0.25), ((3, 64, 6), (8, 8), 0.5), ((2, 48, 5), (6, 8), 0.5)]


@pytest.mark.parametrize("shape,grid,cutoff", ON_CUTOFF)
def test_frequency_on_the_cutoff_is_low(shape, grid, cutoff):
    """A frequency whose radius equals the cutoff counts as low (``r > cutoff`` is high), on every path.

    The numpy oracle decides it: a ``>=`` in the mask or the basis moves that frequency's energy to the other
    side, which changes the ratio by far more than the tolerance (the signal carries energy at it).
    """
    rng = np.random.default_rng(11)
    r = normalized_frequency(shape[1], grid).numpy()
    assert (r == cutoff).sum() >= 2  # the case keeps its meaning
    x = rng.standard_normal(shape)
    cfg = StatsConfig(cutoff=cutoff, hfr_dims=1 if grid is None else 2, grid=grid)
    expected = numpy_stats(x, cutoff, grid)
    hfr = [STAT_NAMES.index("hfr"), STAT_NAMES.index("hfr_centered")]
    backends = ["torch", "matmul"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
    for backend in backends:
        got = compute_stats(torch.from_numpy(x).float(), cfg, backend=backend).double().numpy()
        np.testing.assert_allclose(got[:, hfr], expected[:, hfr], rtol=1e-4, atol=1e-5, err_msg=backend)
    assert (high_frequency_mask(shape[1], grid, cutoff).reshape(-1).numpy() == (r > cutoff)).all()


def test_reference_low_precision_inputs_and_float32_default():
    x = torch.randn(3, 50, 30, generator=torch.Generator().manual_seed(1))
    ref64 = reference_stats(x.double(), StatsConfig(), torch.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        got = reference_stats(xd, StatsConfig())
        assert got.dtype == torch.float32
        exact = reference_stats(xd.double(), StatsConfig(), torch.float64)
        torch.testing.assert_close(got.double(), exact, rtol=2e-5, atol=2e-5)
    assert not torch.equal(ref64, reference_stats(x.to(torch.bfloat16).double(), StatsConfig(), torch.float64))


def test_noncontiguous_input_same_as_contiguous():
    base = torch.randn(2, 40, 70, dtype=torch.float64)
    view = base.transpose(1, 2).contiguous().transpose(1, 2)[:, ::2, 3:60]
    assert not view.is_contiguous()
    torch.testing.assert_close(reference_stats(view, compute_dtype=torch.float64),
                               reference_stats(view.contiguous(), compute_dtype=torch.float64))


def test_basis_energy_equals_fft_low_band():
    rng = np.random.default_rng(3)
    for length, grid, cutoff in [(49, None, 0.15), (256, None, 0.15), (196, (14, 14), 0.15), (48, (6, 8), 0.6),
                                 (16, None, 1.0)]:
        x = rng.standard_normal((length, 5))
        basis = low_frequency_basis(length, grid, cutoff, dtype=torch.float64).numpy()
        if grid is None:
            power = np.abs(np.fft.fft(x, axis=0)) ** 2
        else:
            power = (np.abs(np.fft.fft2(x.reshape(*grid, 5), axes=(0, 1))) ** 2).reshape(length, 5)
        r = normalized_frequency(length, grid).numpy()
        low = (r <= cutoff) & (r > 0)
        np.testing.assert_allclose(((basis @ x) ** 2).sum(), power[low].sum(), rtol=1e-10)
        assert basis.shape[0] == low.sum()  # one real row per complex frequency


def test_frequency_conventions():
    # 1-D: k and L-k share a frequency; Nyquist is 1.0
    r = normalized_frequency(8, None).numpy()
    np.testing.assert_allclose(r, [0, 0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25])
    # 2-D radial: (1, 1) on an 8x8 grid
    assert normalized_frequency(64, (8, 8))[9].item() == pytest.approx(np.hypot(0.25, 0.25))
    assert high_frequency_mask(64, (8, 8), 0.3).shape == (8, 8)
    assert band_counts(196, (14, 14), 0.15) == (4, 191)


def test_degenerate_cutoff_warns():
    # on a 7x7 grid every non-DC 2-D frequency has radius >= 2/7 > 0.15
    assert band_counts(49, (7, 7), 0.15) == (0, 48)
    with pytest.warns(CutoffWarning, match="7x7 grid leaves 0 low"):
        reference_stats(torch.randn(1, 49, 4), StatsConfig(hfr_dims=2))


@pytest.mark.parametrize("bad,err", [
    (torch.randn(4, 5), "rank 3"),
    (torch.randint(0, 3, (2, 4, 5)), "dtype"),
    (torch.randn(2, 1, 5), "at least 2 tokens"),
])
def test_bad_features(bad, err):
    with pytest.raises((ValueError, TypeError), match=err):
        reference_stats(bad)


def test_bad_grid_and_config():
    with pytest.raises(ValueError, match="h\\*w must equal"):
        reference_stats(torch.randn(1, 48, 4), StatsConfig(hfr_dims=2, grid=(5, 8)))
    with pytest.raises(ValueError, match="not a square"):
        reference_stats(torch.randn(1, 48, 4), StatsConfig(hfr_dims=2))
    with pytest.raises(ValueError, match="hfr_dims"):
        StatsConfig(hfr_dims=3)
    with pytest.raises(ValueError, match="cutoff"):
        StatsConfig(cutoff=0)


def test_nan_and_zero_energy_give_nan_not_a_score():
    x = torch.randn(3, 16, 8, dtype=torch.float64)
    x[1, 3, 2] = float("nan")
    x[2] = 0.0
    s = reference_stats(x, compute_dtype=torch.float64)
    assert torch.isfinite(s[0]).all()
    assert torch.isnan(s[1]).all()
    assert torch.isnan(s[2, STAT_NAMES.index("hfr")])


def test_effective_rank_matches_numpy():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 30, 12)) @ np.diag(np.linspace(0.1, 3, 12))
    ours = effective_rank(torch.from_numpy(x), torch.float64).numpy()
    for i in range(3):
        s = np.linalg.svd(x[i] - x[i].mean(0), compute_uv=False)
        p = s / s.sum()
        assert ours[i] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    rank_one = torch.from_numpy(np.outer(rng.standard_normal(30), rng.standard_normal(12))[None])
    assert effective_rank(rank_one, torch.float64).item() == pytest.approx(1.0, abs=1e-6)
