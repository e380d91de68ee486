"""The CPU path of the PyTorch twin: one single-threaded task per block of samples on a pool of workers.

The oracle is the fp64 reference (statistics) and :func:`~aselect_kernels.reference.channel_means` in float64
(means), on the same input values.  Beyond accuracy: the result does not depend on the number of workers, bit for
bit (a block runs start to end on one thread); the caller's torch thread count, grad and inference modes survive
the call; and the earlier op-by-op path (``BLOCK_TASKS = False``) still agrees.
"""

from __future__ import annotations

import math

import pytest
import torch
from stats_checks import assert_stats_close, ref64, tolerance

from aselect_kernels import stats
from aselect_kernels.ops import matmul_stats as twin
from aselect_kernels.reference import StatsConfig, channel_means

U32 = 2.0**-24


def randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int, offset: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + torch.rand(shape[0], 1, shape[2], generator=g) * 2
    return (torch.randn(shape, generator=g) * scale + offset).to(dtype)


def views() -> dict[str, tuple[torch.Tensor, StatsConfig]]:
    """Awkward inputs: N = 1, L and C not powers of two, a transposed and a strided-sliced view, low precision."""
    return {
        "n1_l49_c200": (randn((1, 49, 200), torch.float32, 1), StatsConfig()),
        "n7_l100_c17": (randn((7, 100, 17), torch.float32, 2), StatsConfig(cutoff=0.3)),
        "transposed_bf16": (randn((5, 37, 48), torch.bfloat16, 3).transpose(1, 2),
                            StatsConfig(cutoff=0.5, hfr_dims=2, grid=(6, 8))),
        "sliced_fp16": (randn((9, 98, 45), torch.float16, 4)[::2, ::2, 3:40], StatsConfig(cutoff=0.4)),
        "offset_fp64": (randn((6, 63, 30), torch.float64, 5, offset=2e3), StatsConfig(cutoff=0.3)),
    }


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two samples of the largest case per block: every case runs as several blocks, one smaller than the rest."""
    monkeypatch.setattr(twin, "BLOCK_BYTES", 2 * 4 * 100 * 17)


def with_threads(n: int, fn):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


def assert_means_close(means: torch.Tensor, x: torch.Tensor) -> None:
    """``|means - mu| <= 2 u |mu| + 8 u sqrt(L) max_l |x_lc - x_0c|`` per channel, ``mu`` in float64."""
    x64 = x.double()
    ref = channel_means(x64, torch.float64)
    tol = 2 * U32 * ref.abs() + 8 * U32 * math.sqrt(x.shape[1]) * (x64 - x64[:, :1]).abs().amax(dim=1)
    assert means.dtype == torch.float32 and means.shape == ref.shape
    assert ((means.double() - ref).abs() <= tol).all()


@pytest.mark.parametrize("case", list(views()))
def test_blocks_match_the_reference_for_any_worker_count(small_blocks: None, case: str) -> None:
    x, config = views()[case]
    ref = ref64(x, config)
    rtol = tolerance(torch.float32, x.shape[1], x.shape[2])
    one = with_threads(1, lambda: twin.matmul_stats(x, config, with_means=True))
    for workers in (2, 3):
        many = with_threads(workers, lambda: twin.matmul_stats(x, config, with_means=True))
        assert torch.equal(many[0], one[0]) and torch.equal(many[1], one[1]), f"{workers} workers changed a bit"
    assert_stats_close(one[0], ref, x, rtol)
    assert_means_close(one[1], x)
    means = with_threads(3, lambda: twin.matmul_means(x))
    assert torch.equal(means, one[1])  # the means alone: the same formula, the same bits
    assert torch.equal(stats.compute_means(x), means)


@pytest.mark.parametrize("case", list(views()))
def test_op_by_op_path_agrees(small_blocks: None, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    x, config = views()[case]
    tasks = twin.matmul_stats(x, config, with_means=True)
    monkeypatch.setattr(twin, "BLOCK_TASKS", False)
    ops = twin.matmul_stats(x, config, with_means=True)
    assert_stats_close(ops[0], ref64(x, config), x, tolerance(torch.float32, x.shape[1], x.shape[2]))
    assert_stats_close(ops[0], tasks[0].double(), x, 16 * U32)
    assert_means_close(ops[1], x)
    assert_means_close(twin.matmul_means(x), x)


def test_deterministic_and_batch_invariant(small_blocks: None) -> None:
    """Repeated calls are bitwise equal; any split into sub-batches gives each sample its whole-batch result up to
    summation order, and the same as the reference."""
    x, config = randn((11, 100, 17), torch.float32, 6), StatsConfig(cutoff=0.3)
    whole = with_threads(2, lambda: twin.matmul_stats(x, config))
    assert torch.equal(with_threads(2, lambda: twin.matmul_stats(x, config)), whole)
    parts = torch.cat([twin.matmul_stats(x[a:b], config) for a, b in ((0, 1), (1, 4), (4, 5), (5, 11))])
    assert_stats_close(parts, whole.double(), x, 16 * U32)
    assert_stats_close(parts, ref64(x, config), x, tolerance(torch.float32, 100, 17))
    means = torch.cat([twin.matmul_means(x[a:b]) for a, b in ((0, 3), (3, 11))])
    assert_means_close(means, x)


def test_caller_state_survives(small_blocks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's thread count comes back, also when a block fails; inference mode and grad mode hold."""
    x = randn((7, 100, 17), torch.float32, 7)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        twin.matmul_stats(x)
        assert torch.get_num_threads() == 2
        with torch.inference_mode():
            out = twin.matmul_stats(x)
        assert torch.equal(out, twin.matmul_stats(x))
        leaf = x.clone().requires_grad_(True)
        assert not twin.matmul_stats(leaf).requires_grad and not twin.matmul_means(leaf).requires_grad

        def broken(*args: object) -> None:
            raise RuntimeError("block failed")

        monkeypatch.setattr(twin, "_block_stats", broken)
        with pytest.raises(RuntimeError, match="block failed"):
            twin.matmul_stats(x)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_compute_means_backends() -> None:
    x = randn((3, 49, 24), torch.bfloat16, 8)
    assert torch.equal(stats.compute_means(x, "matmul"), twin.matmul_means(x))
    assert torch.equal(stats.compute_means(x, "torch"), channel_means(x))
    assert_means_close(stats.compute_means(x, "auto"), x)
    with pytest.raises(ValueError, match="backend must be one of"):
        stats.compute_means(x, "fast")
