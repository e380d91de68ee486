r"""The fused statistics kernel: every per-sample statistic of :data:`~aselect_kernels.reference.STAT_NAMES` in
one read of a tapped tensor ``X [N, L, C]``.

The definition of record is :func:`aselect_kernels.reference.reference_stats` (its PyTorch twin,
:mod:`~aselect_kernels.ops.matmul_stats`, runs the same algorithm on CPU tensors).  This module is the launcher; the
kernel sits in two files, each explained step by step:

* :mod:`~aselect_kernels.ops.stats_kernel` - the main kernel.  A persistent grid of programs walks the work items
  ``(sample n, channel group g)``.  Per channel block it takes the shifted moments (``mean``, ``mean_sq``,
  ``token_var``), the per-row log-sum-exp state of the channel entropy, and the low-frequency energy as a
  projection ``B x`` on tensor cores (``hfr``, ``hfr_centered``: no FFT, Parseval gives the totals);
* :mod:`~aselect_kernels.ops.stats_merge` - the exact, ordered merge of a sample's partials into its six numbers,
  done by the sample's last work item (one launch; an atomic ticket decides who is last) or by a combine kernel.

**Memory traffic.**  ``X`` is read once, also when the per-channel means are asked for (``with_means``: each
channel block stores the ``mu_c`` it already holds).  Where every token of a channel block fits one tile
(``L <= 256``) and the basis is small (16 rows: 2-D ratios on DiT grids), the basis tile is loaded once per program
and kept on chip, further basis-row blocks reuse the tile in registers, and the row entropy states stay in
registers across a group of channel blocks, so each work item writes ``3 L + 4`` floats.  Otherwise the kernel
walks token tiles, software-pipelined (``tl.range(num_stages=...)``), re-reads the basis tile per token tile (from
L2) and writes its entropy states per channel block.  ``bench/NOTES.md`` has the traffic model, the compile facts
and the predictions.

**Tiling.**  Block sizes, warps, stages and the grid come from :func:`~aselect_kernels.ops.tiling.tiling`, a
deterministic table keyed on ``(L, C, K, dtype, target)``, never on ``N``: a sample's result does not depend on the
batch it is scored in, and no autotuning varies it from run to run.  The GPU rows are available on any machine
(``target=(9, 0)``), so the CPU tests run the tilings that ship.

**Precision.**  bf16/fp16 inputs are exact in their dtype and meet the basis split into two halves of that dtype
(``B = B_hi + B_lo``, two tensor-core dots); fp32 inputs meet an fp32 basis with ``tf32x3`` on NVIDIA GPUs
(``ieee`` elsewhere and under the interpreter).  The rounded basis rows do not sum to exactly 0, so the mean's
exact leak ``rowsum(B_r) (mu - shift)`` is subtracted (``rowsum`` in fp64).  Every sum accumulates in fp32.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton

from ..frequency import low_frequency_basis, warn_if_degenerate
from ..reference import STAT_NAMES, StatsConfig, check_features
from .stats_kernel import fused_sample_stats_kernel
from .stats_merge import combine_kernel
from .tiling import Tiling, pow2, tiling

#: The kernels were defined for the Triton interpreter (``TRITON_INTERPRET=1`` when this module was imported).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Input dtypes the kernel reads (fp64 goes to the reference).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_NUM_PARTIALS = 4  # sum x, sum M2, sum L mu^2, E_low
_DEFAULT_CONFIG = StatsConfig()


def low_rows(length: int, config: StatsConfig) -> int:
    """``K``, the number of low-frequency basis rows for ``length`` tokens under ``config``."""
    return band_rows(length, config.resolve_grid(length), float(config.cutoff))


@lru_cache(maxsize=256)
def band_rows(length: int, grid: tuple[int, int] | None, cutoff: float) -> int:
    """``K`` for a resolved grid (cached)."""
    return low_frequency_basis(length, grid, cutoff, dtype=torch.float64).shape[0]


def device_target(device: torch.device) -> str | tuple[int, int]:
    """The tiling target of ``device``: ``"interpreter"`` under ``TRITON_INTERPRET=1``, else its capability."""
    if INTERPRET or device.type != "cuda":
        return "interpreter"
    return torch.cuda.get_device_capability(device)


def kernel_tiling(length: int, channels: int, config: StatsConfig, dtype: torch.dtype,
                  target: str | tuple[int, int]) -> Tiling:
    """The table's :class:`~aselect_kernels.ops.tiling.Tiling` of a shape on ``target`` (any machine)."""
    return tiling(length, channels, low_rows(length, config), dtype, target)


@lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@lru_cache(maxsize=32)
def _basis(
    length: int, grid: tuple[int, int] | None, cutoff: float, block_k: int, split_dtype: torch.dtype | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(B_hi, B_lo, rowsum(B_hi + B_lo) fp32, K) on ``device``, rows zero-padded to a multiple of ``block_k`` and
    each row to a multiple of 16 tokens (rows 16-element aligned: vector loads)."""
    b64 = low_frequency_basis(length, grid, cutoff, dtype=torch.float64)
    k = b64.shape[0]
    padded = torch.zeros(max(1, math.ceil(k / block_k)) * block_k, triton.cdiv(length, 16) * 16, dtype=torch.float64)
    padded[:k, :length] = b64
    if split_dtype is None:
        hi = padded.to(torch.float32)
        lo = hi
        rounded = hi.double()
    else:
        hi = padded.to(split_dtype)
        lo = (padded - hi.double()).to(split_dtype)
        rounded = hi.double() + lo.double()
    rowsum = rounded.sum(dim=1).to(torch.float32)
    return hi.to(device), lo.to(device), rowsum.to(device), k


def num_groups(length: int, channels: int, tile: Tiling) -> int:
    """Work items per sample: channel groups of ``group_c`` blocks (one block unless one tile holds every token)."""
    group = tile.group_c if tile.one_tile(length) else 1
    return triton.cdiv(triton.cdiv(channels, tile.block_c), group)


def buffer_bytes(n: int, length: int, channels: int, tile: Tiling, with_means: bool = False) -> list[int]:
    """Bytes of the buffers :func:`fused_stats` allocates, in its order: partials, entropy states, tickets (when
    the kernel merges), output, and the channel means (``with_means``)."""
    groups = num_groups(length, channels, tile)
    sizes = [n * groups * _NUM_PARTIALS * 4, n * groups * 3 * length * 4]
    if tile.merge_in_kernel:
        sizes.append(n * 4)
    sizes.append(n * len(STAT_NAMES) * 4)
    return sizes + [n * channels * 4] if with_means else sizes


def wide_index(x: torch.Tensor, tile: Tiling) -> bool:
    """Whether offsets inside one tile of ``x`` can reach 2^31 elements, so that the kernel must compute them in
    64 bits.  Tile and channel-block starts are always 64-bit pointers; this asks only about the span of a tile
    (``block_l`` tokens by ``block_c`` channels, and a channel block's shift row)."""
    span = (tile.block_l - 1) * abs(x.stride(1)) + (tile.block_c - 1) * abs(x.stride(2))
    return span >= 2**31


@dataclass(frozen=True)
class LaunchPlan:
    """Everything one call launches: the main kernel's grid, arguments and meta-parameters, and the combine
    kernel's when the merge is not done in the main kernel.  ``out`` is the ``[N, 6]`` result buffer, ``means``
    the ``[N, C]`` channel means buffer (``None`` unless asked for)."""

    grid: tuple[int]
    args: tuple
    meta: dict
    out: torch.Tensor
    combine: tuple[tuple[int], tuple, dict] | None
    means: torch.Tensor | None = None


def launch_plan(
    x: torch.Tensor, config: StatsConfig = _DEFAULT_CONFIG, *, tile: Tiling | None = None,
    num_programs: int | None = None, target: str | tuple[int, int] | None = None, with_means: bool = False,
    **overrides: int | str | bool | None,
) -> LaunchPlan:
    """The launches of :func:`fused_stats` for ``x`` (its buffers allocated), compiled for ``target`` (by default
    ``x``'s device).  Checks the input and the tiling; see :func:`fused_stats` for the arguments."""
    check_features(x)
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"the fused kernel reads fp32, fp16 or bf16, got {x.dtype}; use the reference for fp64")
    n, length, channels = x.shape
    grid = config.resolve_grid(length)
    warn_if_degenerate(length, grid, config.cutoff, stacklevel=4)
    target = device_target(x.device) if target is None else target
    if tile is None:
        tile = kernel_tiling(length, channels, config, x.dtype, target)
    tile = tile.with_overrides(**overrides)
    if num_programs is not None and num_programs < 1:
        raise ValueError(f"num_programs must be >= 1, got {num_programs}")

    split_dtype = None if x.dtype == torch.float32 else x.dtype
    basis_hi, basis_lo, rowsum, k_low = _basis(length, grid, float(config.cutoff), tile.block_k, split_dtype,
                                                x.device)
    one_tile = tile.one_tile(length)
    groups = num_groups(length, channels, tile)
    programs = n * groups
    if x.is_cuda and tile.programs_per_sm > 0:
        programs = min(programs, tile.programs_per_sm * _sm_count(x.device.index or 0))
    if num_programs is not None:
        programs = min(programs, num_programs)
    on_gpu = target != "interpreter"
    fp32_dot = tile.fp32_dot if on_gpu and torch.version.hip is None else "ieee"

    part = torch.empty(n, groups, _NUM_PARTIALS, dtype=torch.float32, device=x.device)
    ent = torch.empty(n, groups, 3, length, dtype=torch.float32, device=x.device)
    tickets = torch.zeros(n if tile.merge_in_kernel else 1, dtype=torch.int32, device=x.device)
    out = torch.empty(n, len(STAT_NAMES), dtype=torch.float32, device=x.device)
    # without means the kernel never touches its means pointer: ``out`` stands in, nothing is allocated
    means = torch.empty(n, channels, dtype=torch.float32, device=x.device) if with_means else None
    means_arg = out if means is None else means
    merge_block_l = tile.block_l if one_tile else pow2(length, 16, 256)
    meta = dict(
        BLOCK_L=tile.block_l, BLOCK_C=tile.block_c, BLOCK_K=tile.block_k, GROUP_C=tile.group_c if one_tile else 1,
        ONE_TILE=one_tile, HAS_LOW=k_low > 0, SPLIT_BASIS=split_dtype is not None, UPCAST_DOT=not on_gpu,
        FP32_DOT=fp32_dot, NUM_STAGES=tile.num_stages, HOIST_BASIS=tile.hoist_basis,
        MERGE_IN_KERNEL=tile.merge_in_kernel, MERGE_BLOCK_L=merge_block_l, WRITE_MEANS=with_means,
        WIDE_INDEX=wide_index(x, tile), EVEN_L=length % tile.block_l == 0, EVEN_C=channels % tile.block_c == 0,
    )
    if on_gpu:
        meta["num_warps"] = tile.num_warps
    args = (x, basis_hi, basis_lo, rowsum, part, ent, tickets, out, means_arg,
            n, length, channels, triton.cdiv(channels, tile.block_c), groups, math.ceil(k_low / tile.block_k),
            x.stride(0), x.stride(1), x.stride(2), basis_hi.stride(0), out.stride(0), out.stride(1),
            means_arg.stride(0))
    combine = None
    if not tile.merge_in_kernel:
        combine = ((n,), (part, ent, out, length, channels, groups, out.stride(0), out.stride(1)),
                   {"BLOCK_L": merge_block_l})
    return LaunchPlan((programs,), args, meta, out, combine, means)


def fused_stats(
    x: torch.Tensor, config: StatsConfig = _DEFAULT_CONFIG, *, tile: Tiling | None = None,
    num_programs: int | None = None, with_means: bool = False, **overrides: int | str | bool | None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """All statistics of :data:`STAT_NAMES` for each sample of ``x`` ``[N, L, C]`` -> ``[N, 6]`` float32.

    ``x`` is fp32, fp16 or bf16, on a CUDA device (or on the CPU under ``TRITON_INTERPRET=1``), with any strides.
    ``with_means=True`` returns ``(stats, means)``, ``means`` the ``[N, C]`` float32 token mean of every channel
    (:func:`~aselect_kernels.reference.channel_means`) from the same read of ``x``; the statistics are the same
    bits either way.  Tests and benchmarks may replace the table's tiling (``tile``, e.g. a GPU row run under the
    interpreter), or some of its fields (``overrides``: ``block_l=...``, ``num_warps=...``, see :class:`Tiling`),
    and cap the persistent grid at ``num_programs``.  None of these changes what is computed, only the summation
    order.
    """
    if isinstance(x, torch.Tensor) and x.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("a CPU tensor needs the Triton interpreter: set TRITON_INTERPRET=1 before importing")
    plan = launch_plan(x, config, tile=tile, num_programs=num_programs, with_means=with_means, **overrides)
    with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
        fused_sample_stats_kernel[plan.grid](*plan.args, **plan.meta)
        if plan.combine is not None:
            grid, args, meta = plan.combine
            combine_kernel[grid](*args, **meta)
    return (plan.out, plan.means) if with_means else plan.out
