"""``matmul_stats``, the fused kernel's algorithm in PyTorch ops (the CPU path of ``backend="auto"``).

Every check compares against the fp64 reference evaluated on the same input values; the tolerance is the
kernel's fp32 one (``stats_checks.tolerance``): the twin computes in fp32 with an fp32 basis whatever the input.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from stats_checks import assert_stats_close, ref64, tolerance

from aselect_kernels import stats
from aselect_kernels.frequency import CutoffWarning, band_counts
from aselect_kernels.ops import matmul_stats as twin
from aselect_kernels.reference import StatsConfig, reference_stats

matmul_stats = twin.matmul_stats


def randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + torch.rand(shape[0], 1, shape[2], generator=g) * 2  # channels of different spread
    return (torch.randn(shape, generator=g) * scale + offset).to(dtype)


# (id, N, L, C, config): N = 1, L and C not powers of two, 1-D and 2-D, square and not, the embedded tap shape.
SHAPES = [
    ("n1_l49_c200_1d", 1, 49, 200, StatsConfig()),
    ("l100_c17_1d", 3, 100, 17, StatsConfig()),
    ("grid6x8_c40", 2, 48, 40, StatsConfig(cutoff=0.4, hfr_dims=2, grid=(6, 8))),
    ("grid5x7_c24", 2, 35, 24, StatsConfig(cutoff=0.6, hfr_dims=2, grid=(5, 7))),
    ("emb14x14_c96_1d", 4, 196, 96, StatsConfig()),
    ("emb14x14_c384_2d", 2, 196, 384, StatsConfig(cutoff=0.3, hfr_dims=2)),
]
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n", "length", "channels", "config"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_matches_reference(n: int, length: int, channels: int, config: StatsConfig, dtype: torch.dtype) -> None:
    assert min(band_counts(length, config.resolve_grid(length), config.cutoff)) >= 4
    x = randn((n, length, channels), dtype, seed=length * 1000 + channels)
    out = matmul_stats(x, config)
    assert out.dtype == torch.float32 and out.device == x.device
    assert_stats_close(out, ref64(x, config), x, tolerance(torch.float32, length, channels))


def test_blocks_do_not_change_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 1, 2 and all samples, and sub-batches, give every sample the same result (and the reference's)."""
    config = StatsConfig(cutoff=0.5, hfr_dims=2)
    x = randn((5, 49, 40), torch.float32, seed=9)
    whole = matmul_stats(x, config)
    monkeypatch.setattr(twin, "BLOCK_BYTES", 2 * 4 * 49 * 40)  # 2 samples per block: blocks 2, 2, 1
    blocked = matmul_stats(x, config)
    chunked = torch.cat([matmul_stats(x[:1], config), matmul_stats(x[1:4], config), matmul_stats(x[4:], config)])
    rtol = tolerance(torch.float32, 49, 40)
    for out in (whole, blocked, chunked):
        assert_stats_close(out, ref64(x, config), x, rtol)
    for out in (blocked, chunked):  # the same float32 arithmetic per sample, up to summation order
        assert_stats_close(out, whole.double(), x, 16 * 2.0**-24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_views(dtype: torch.dtype) -> None:
    config = StatsConfig(cutoff=0.5, hfr_dims=2, grid=(6, 8))
    transposed = randn((2, 40, 48), dtype, seed=11).transpose(1, 2)  # [2, 48, 40]
    sliced = randn((3, 96, 45), dtype, seed=12)[::2, ::2, 3:43]  # [2, 48, 40], every stride odd
    for view in (transposed, sliced):
        assert not view.is_contiguous()
        out = matmul_stats(view, config)
        assert_stats_close(out, ref64(view, config), view, tolerance(dtype, 48, 40))


@pytest.mark.parametrize("offset", [1e3, -3e4])
def test_large_mean_offset(offset: float) -> None:
    """A mean far above the spread: the shifted moments and the exact leak correction keep token_var and both
    ratios accurate (odd L, so the rounded basis rows do not sum to 0)."""
    config = StatsConfig(cutoff=0.3)
    x = randn((2, 49, 48), torch.float32, seed=5, offset=offset)
    ref = ref64(x, config)
    assert ref[:, 4].max() < 1e-3  # DC dominates: hfr is small
    assert_stats_close(matmul_stats(x, config), ref, x, tolerance(torch.float32, 49, 48))


def test_low_frequency_wave_with_offset() -> None:
    """A low-frequency wave shared by every channel on a large mean: E_low is most of the centred energy."""
    config = StatsConfig(cutoff=0.3)
    tokens = torch.arange(49, dtype=torch.float64)
    wave = 8 * torch.cos(2 * math.pi * 2 * tokens / 49)
    noise = torch.randn(2, 49, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = (1000 + wave[None, :, None] + 4 * noise).float()
    ref = ref64(x, config)
    assert ref[:, 5].max() < 0.7  # the wave is low-frequency energy
    assert_stats_close(matmul_stats(x, config), ref, x, tolerance(torch.float32, 49, 48))


def test_no_low_frequency_zero_and_constant() -> None:
    config = StatsConfig(cutoff=0.15)
    x = randn((2, 6, 24), torch.float32, seed=3)
    with pytest.warns(CutoffWarning):
        out = matmul_stats(x, config)
    with pytest.warns(CutoffWarning):
        ref = ref64(x, config)
    assert_stats_close(out, ref, x, tolerance(torch.float32, 6, 24))
    assert torch.equal(out[:, 5], torch.ones(2))

    zeros = torch.zeros(2, 64, 8)
    out = matmul_stats(zeros)
    assert_stats_close(out, ref64(zeros, StatsConfig()), zeros, 1e-6)
    assert out[:, 4:].isnan().all()
    const = torch.tensor([0.5, -2.0, 3.25, 0.0, 1.0]).expand(2, 64, 5)  # a stride-0 view
    out = matmul_stats(const)
    assert_stats_close(out, ref64(const, StatsConfig()), const, 1e-6)
    assert torch.equal(out[:, 2], torch.zeros(2)) and out[:, 5].isnan().all()


def test_nan_stays_in_its_sample() -> None:
    x = randn((3, 49, 16), torch.float32, seed=4)
    x[1, 7, 3] = float("nan")
    out = matmul_stats(x)
    assert out[1].isnan().all() and not out[[0, 2]].isnan().any()
    assert_stats_close(out[[0, 2]], ref64(x[[0, 2]], StatsConfig()), x[[0, 2]], tolerance(torch.float32, 49, 16))


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="rank 3"):
        matmul_stats(torch.zeros(8, 4))
    with pytest.raises(TypeError, match="not supported"):
        matmul_stats(torch.zeros(1, 8, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="grid"):
        matmul_stats(torch.zeros(1, 12, 4), StatsConfig(hfr_dims=2, grid=(3, 5)))
    with pytest.raises(ValueError, match="2 tokens"):
        matmul_stats(torch.zeros(1, 1, 4))


def test_auto_backend_on_cpu_is_the_twin() -> None:
    config = StatsConfig(cutoff=0.5, hfr_dims=2)
    x = randn((2, 49, 24), torch.bfloat16, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silent on the CPU
        auto = stats.compute_stats(x, config)
    assert torch.equal(auto, matmul_stats(x, config))
    assert torch.equal(stats.compute_stats(x, config, backend="matmul"), auto)
    assert torch.equal(stats.compute_stats(x, config, backend="torch"), reference_stats(x, config))
