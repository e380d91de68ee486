"""``torch.ops.aselect.sample_stats``: the statistics as a PyTorch custom op, so ``torch.compile`` keeps one graph.

CPU tensors run :func:`~aselect_kernels.ops.matmul_stats.matmul_stats` (float32); CUDA tensors run the GPU kernel
that :mod:`~aselect_kernels.ops.backend_table` names for the shape (:func:`gpu_stats`: the fused Triton kernel, or
the CUDA C++ kernel of ``csrc/``).  The grid travels as two ints, ``(0, 0)`` meaning ``None`` (square grid
inferred in 2-D).  Importing this module registers the op; it needs no Triton until a CUDA tensor is scored.
"""

from __future__ import annotations

import warnings

import torch

from ..reference import STAT_NAMES, StatsConfig
from . import backend_table
from .matmul_stats import matmul_stats

_warned: set[str] = set()


def config_from_args(cutoff: float, hfr_dims: int, grid_h: int, grid_w: int) -> StatsConfig:
    """The :class:`StatsConfig` encoded by the op's scalar arguments."""
    grid = None if grid_h == 0 and grid_w == 0 else (grid_h, grid_w)
    return StatsConfig(cutoff=cutoff, hfr_dims=hfr_dims, grid=grid)


def config_to_args(config: StatsConfig) -> tuple[float, int, int, int]:
    """``(cutoff, hfr_dims, grid_h, grid_w)`` for the op, the inverse of :func:`config_from_args`."""
    grid_h, grid_w = config.grid if config.grid is not None else (0, 0)
    return float(config.cutoff), int(config.hfr_dims), int(grid_h), int(grid_w)


def gpu_kernel(x: torch.Tensor, config: StatsConfig) -> str:
    """The GPU kernel that scores the CUDA tensor ``x``: ``"cuda"`` where the backend table names it, it can run
    here and it passed its first-use check (:mod:`.cuda_canary`), else ``"triton"`` (with a one-time warning when
    the table named the CUDA kernel)."""
    if backend_table.choose_for(x, config.hfr_dims) == "cuda":
        from . import cuda_canary
        from .cuda_stats import unavailable_reason

        reason = unavailable_reason()
        if reason is None:
            return "cuda" if cuda_canary.trusted(x, config) else "triton"
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(f"{reason}: using the Triton kernel instead", RuntimeWarning, stacklevel=3)
    return "triton"


def gpu_stats(x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    """Statistics of a CUDA tensor by the kernel the backend table names for its shape; the Triton kernel (with a
    one-time warning) when the table names the CUDA kernel and it cannot run here."""
    if gpu_kernel(x, config) == "cuda":
        from .cuda_stats import cuda_stats

        return cuda_stats(x, config)
    from .fused_stats import fused_stats

    return fused_stats(x, config)


@torch.library.custom_op("aselect::sample_stats", mutates_args=(), device_types="cpu")
def sample_stats(x: torch.Tensor, cutoff: float, hfr_dims: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Per-sample statistics ``[N, 6]`` float32 of a tapped tensor ``x`` ``[N, L, C]`` (the PyTorch twin on CPU)."""
    return matmul_stats(x, config_from_args(cutoff, hfr_dims, grid_h, grid_w))


@sample_stats.register_kernel("cuda")
def _sample_stats_cuda(x: torch.Tensor, cutoff: float, hfr_dims: int, grid_h: int, grid_w: int) -> torch.Tensor:
    return gpu_stats(x, config_from_args(cutoff, hfr_dims, grid_h, grid_w))


@sample_stats.register_fake
def _sample_stats_fake(x: torch.Tensor, cutoff: float, hfr_dims: int, grid_h: int, grid_w: int) -> torch.Tensor:
    torch._check(x.dim() == 3, lambda: f"tapped feature must have rank 3 [N, L, C], got {x.dim()}")
    return x.new_empty((x.shape[0], len(STAT_NAMES)), dtype=torch.float32)
