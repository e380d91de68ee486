"""The previous fused statistics kernel (before the redesign in ``bench/NOTES.md``), for side-by-side timing.

Bench-only: the package does not use it.  One program per ``(sample, channel block)`` walks the sample's tokens
in ``[BLOCK_L, BLOCK_C]`` tiles, loads the basis tiles it needs for every token tile, writes its partials and its
per-tile entropy states, and a second launch merges them (:func:`~aselect_kernels.ops.stats_merge.combine_kernel`,
the same merge).  Its GPU blocks were 64 x 128 (32 channels below C = 512), 4 warps.  Helpers it shares with the
new kernel (tile loads, the mean-leak correction, the basis) are imported, so only its main loop lives here.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from aselect_kernels.ops.fused_stats import _basis, low_rows
from aselect_kernels.ops.stats_kernel import _load_basis, _load_tile, _low_energy, _project
from aselect_kernels.ops.stats_merge import combine_kernel
from aselect_kernels.ops.tiling import pow2
from aselect_kernels.reference import STAT_NAMES, StatsConfig


@triton.jit
def legacy_kernel(
    x_ptr, basis_hi_ptr, basis_lo_ptr, rowsum_ptr, part_ptr, ent_ptr,
    L, C, NUM_KB, stride_xn, stride_xl, stride_xc, stride_b,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_LOW: tl.constexpr, SPLIT_BASIS: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Program ``(n, cb)``: partial sums of sample ``n`` over channel block ``cb``."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    slot = (pid_n * tl.num_programs(1) + pid_c).to(tl.int64)
    x_base = x_ptr + pid_n.to(tl.int64) * stride_xn
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    offs_l0 = tl.arange(0, BLOCK_L)
    ent_base = ent_ptr + slot * 3 * L
    offs_k = tl.arange(0, BLOCK_K)
    shift = tl.load(x_base + offs_c * stride_xc, mask=c_ok, other=0.0).to(tl.float32)
    a = tl.zeros([BLOCK_C], tl.float32)
    b = tl.zeros([BLOCK_C], tl.float32)
    proj = tl.zeros([BLOCK_K, BLOCK_C], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        xt, offs_l, l_ok, mask = _load_tile(x_base, l0, offs_l0, offs_c, c_ok, L, stride_xl, stride_xc)
        xf = xt.to(tl.float32)
        d = tl.where(mask, xf - shift[None, :], 0.0)
        a += tl.sum(d, axis=0)
        b += tl.sum(d * d, axis=0)
        m = tl.max(tl.where(mask, xf, float("-inf")), axis=1)
        z = tl.where(mask, xf - tl.where(l_ok, m, 0.0)[:, None], 0.0)
        e = tl.where(mask, tl.exp(z), 0.0)
        tl.store(ent_base + offs_l, m, mask=l_ok)
        tl.store(ent_base + L + offs_l, tl.sum(e, axis=1), mask=l_ok)
        tl.store(ent_base + 2 * L + offs_l, tl.sum(e * z, axis=1), mask=l_ok)
        if HAS_LOW:  # the first block of basis rows, loaded for every tile
            proj = _project(proj, _load_basis(basis_hi_ptr, offs_k, offs_l, l_ok, stride_b),
                            _load_basis(basis_lo_ptr, offs_k, offs_l, l_ok, stride_b), xt, d, SPLIT_BASIS, UPCAST_DOT,
                            "ieee")
    mu_off = a / L
    e_low = tl.zeros([BLOCK_C], tl.float32)
    if HAS_LOW:
        centre = shift + mu_off if SPLIT_BASIS else mu_off
        e_low += _low_energy(proj, rowsum_ptr, offs_k, centre)
        for kb in range(1, NUM_KB):  # further basis row blocks re-read the tiles
            rows = kb * BLOCK_K + offs_k
            proj = tl.zeros([BLOCK_K, BLOCK_C], tl.float32)
            for l0 in range(0, L, BLOCK_L):
                xt, offs_l, l_ok, mask = _load_tile(x_base, l0, offs_l0, offs_c, c_ok, L, stride_xl, stride_xc)
                d = tl.where(mask, xt.to(tl.float32) - shift[None, :], 0.0)
                proj = _project(proj, _load_basis(basis_hi_ptr, rows, offs_l, l_ok, stride_b),
                                _load_basis(basis_lo_ptr, rows, offs_l, l_ok, stride_b), xt, d, SPLIT_BASIS, UPCAST_DOT,
                                "ieee")
            e_low += _low_energy(proj, rowsum_ptr, rows, centre)
    mu_off = a / L
    mu = shift + mu_off
    part = part_ptr + slot * 4
    tl.store(part + 0, tl.sum(L * shift + a, axis=0))
    tl.store(part + 1, tl.sum(tl.where(c_ok, b - a * mu_off, 0.0), axis=0))
    tl.store(part + 2, tl.sum(L * mu * mu, axis=0))
    tl.store(part + 3, tl.sum(e_low, axis=0))


def legacy_plan(x: torch.Tensor, config: StatsConfig = StatsConfig(), *,
                interpret: bool = False) -> tuple[tuple, tuple, dict, tuple, dict, torch.Tensor]:
    """The two launches of the previous kernel with its GPU blocks: ``(grid, args, meta)`` of the main kernel,
    ``(args, meta)`` of the combine kernel (grid ``(N,)``) and the output buffer."""
    n, length, channels = x.shape
    grid = config.resolve_grid(length)
    k_low = low_rows(length, config)
    bl, bc, bk = pow2(length, 16, 64), 128 if channels >= 512 else 32, pow2(k_low, 16, 64)
    split_dtype = None if x.dtype == torch.float32 else x.dtype
    basis_hi, basis_lo, rowsum, k_low = _basis(length, grid, float(config.cutoff), bk, split_dtype, x.device)
    num_cb = triton.cdiv(channels, bc)
    part = torch.empty(n, num_cb, 4, dtype=torch.float32, device=x.device)
    ent = torch.empty(n, num_cb, 3, length, dtype=torch.float32, device=x.device)
    out = torch.empty(n, len(STAT_NAMES), dtype=torch.float32, device=x.device)
    meta = dict(BLOCK_L=bl, BLOCK_C=bc, BLOCK_K=bk, HAS_LOW=k_low > 0, SPLIT_BASIS=split_dtype is not None,
                UPCAST_DOT=interpret, **({} if interpret else {"num_warps": 4}))
    args = (x, basis_hi, basis_lo, rowsum, part, ent, length, channels, math.ceil(k_low / bk),
            x.stride(0), x.stride(1), x.stride(2), basis_hi.stride(0))
    combine = (part, ent, out, length, channels, num_cb, out.stride(0), out.stride(1))
    return (n, num_cb), args, meta, combine, {"BLOCK_L": pow2(length, 16, 256)}, out


def legacy_stats(x: torch.Tensor, config: StatsConfig = StatsConfig(), *, interpret: bool = False) -> torch.Tensor:
    """Statistics ``[N, 6]`` of ``x`` with the previous kernel (``interpret``: CPU tensors under
    ``TRITON_INTERPRET=1``)."""
    grid, args, meta, combine, combine_meta, out = legacy_plan(x, config, interpret=interpret)
    with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
        legacy_kernel[grid](*args, **meta)
        combine_kernel[(x.shape[0],)](*combine, **combine_meta)
    return out
