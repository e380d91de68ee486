"""Property-based checks: the fused kernel (in the Triton interpreter on CPU tensors) and ``matmul_stats`` against
the fp64 reference over random shapes, dtypes, strides, storage offsets, scales, mean offsets, 1-D and 2-D grids
and cutoffs.

Bounded and reproducible: ``derandomize=True`` (the examples follow from the test's source), no deadline, about
200 examples in all (60 through the interpreted kernel, which costs a fraction of a second per call).  The
tolerances are those of ``stats_checks``: relative to each statistic, plus the absolute error of the ratios.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stats_checks import assert_stats_close, ref64, tolerance

from aselect_kernels.frequency import CutoffWarning
from aselect_kernels.ops.matmul_stats import matmul_stats
from aselect_kernels.reference import StatsConfig
from aselect_kernels.stats import compute_stats, triton_available

LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


@st.composite
def cases(draw: st.DrawFn, dtypes: tuple[torch.dtype, ...], max_tokens: int, max_channels: int
          ) -> tuple[torch.Tensor, StatsConfig]:
    """A tapped tensor ``[N, L, C]`` (possibly a strided view with a storage offset) and a statistics config."""
    n = draw(st.integers(1, 3))
    channels = draw(st.integers(1, max_channels))
    if draw(st.booleans()):  # 2-D: an h x w grid, square (inferred) or given
        h, w = draw(st.integers(2, 8)), draw(st.integers(2, 8))
        length = h * w
        grid = None if h == w and draw(st.booleans()) else (h, w)
        config = StatsConfig(cutoff=draw(st.floats(0.05, 1.3)), hfr_dims=2, grid=grid)
    else:
        length = draw(st.integers(2, max_tokens))
        config = StatsConfig(cutoff=draw(st.floats(0.05, 1.0)))
    dtype = draw(st.sampled_from(dtypes))
    scale = 10.0 ** draw(st.integers(-3, 3))
    offset = scale * draw(st.sampled_from([0.0, 1.0, -30.0, 1000.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    g = torch.Generator().manual_seed(seed)
    spread = 0.5 + torch.rand(n, 1, channels, generator=g, dtype=torch.float64)  # channels of different spread
    if layout == "transposed":  # channel stride 1 -> token stride 1: drawn as [N, C, L], read as [N, L, C]
        values = torch.randn(n, channels, length, generator=g, dtype=torch.float64).transpose(1, 2)
    else:
        values = torch.randn(n, length, channels, generator=g, dtype=torch.float64)
    values = (values * spread * scale + offset).to(dtype)  # .to keeps the transposed strides
    if layout == "sliced":  # token stride 2, channel offset 2, sample offset 1: a view with a storage offset
        base = torch.zeros(n + 1, 2 * length, channels + 3, dtype=dtype)
        base[1:, ::2, 2:2 + channels] = values
        values = base[1:, ::2, 2:2 + channels]
    x = values
    return x, config


def _check(out: torch.Tensor, x: torch.Tensor, config: StatsConfig, rtol: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CutoffWarning)  # small grids: the ratio is degenerate, still defined
        ref = ref64(x, config)
    assert_stats_close(out, ref, x, rtol)
    hfr = out[:, 4:][~out[:, 4:].isnan()]
    assert (hfr >= 0).all() and (hfr <= 1).all()  # clamped, on every path


@settings(max_examples=140, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases(LOW_PRECISION + (torch.float64,), max_tokens=120, max_channels=64))
def test_matmul_stats_matches_reference(case: tuple[torch.Tensor, StatsConfig]) -> None:
    x, config = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CutoffWarning)
        out = matmul_stats(x, config)
    # the twin computes in fp32 with an fp32 basis whatever the input dtype
    _check(out, x, config, tolerance(torch.float32, x.shape[1], x.shape[2]))


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases(LOW_PRECISION, max_tokens=64, max_channels=40))
def test_kernel_matches_reference(case: tuple[torch.Tensor, StatsConfig]) -> None:
    from aselect_kernels.ops import fused_stats as fused_module

    if not fused_module.INTERPRET and not torch.cuda.is_available():
        pytest.skip("the kernel needs a CUDA device or TRITON_INTERPRET=1")
    x, config = case
    if not fused_module.INTERPRET:
        x = x.cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CutoffWarning)
        out = compute_stats(x, config, backend="triton")
    _check(out, x, config, tolerance(x.dtype, x.shape[1], x.shape[2]))
