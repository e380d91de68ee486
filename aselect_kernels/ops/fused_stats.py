r"""One fused Triton kernel for every per-sample statistic of :data:`~aselect_kernels.reference.STAT_NAMES`.

The definition of record is :func:`aselect_kernels.reference.reference_stats`; this module computes the same
six numbers for a tapped tensor ``X [N, L, C]`` while reading ``X`` from memory once (per low-frequency block,
see *Step 3*).  The plan, step by step:

**Step 0 - the grid.**  Program ``(n, cb)`` owns sample ``n`` and the ``BLOCK_C`` channels of block ``cb``,
and walks the ``L`` tokens in ``[BLOCK_L, BLOCK_C]`` tiles (any strides: views are read in place, no copy).
Tokens are never split across programs: the low-frequency projection (*Step 3*) has to be squared after it
is summed over *all* tokens, so an L-split would need a ``[splits, K, C]`` buffer as large as ``X`` itself.

**Step 1 - moments with a shift.**  Per channel, with the shift ``k_c = x[n, 0, c]``::

    a_c = sum_l (x_lc - k_c)        b_c = sum_l (x_lc - k_c)^2        (fp32)
    mu_c = k_c + a_c / L            M2_c = b_c - a_c^2 / L            sum_l x_lc^2 = M2_c + L mu_c^2

Shifting by a sample of the channel keeps ``M2_c`` accurate when the mean dwarfs the spread (no catastrophic
``E[x^2] - E[x]^2``).  ``mean``, ``mean_sq`` and ``token_var = (1/C) sum_c M2_c / (L-1)`` follow.

**Step 2 - channel entropy.**  Per token row, ``H = logsumexp_c x - sum_c p_c x_c``.  Each program reduces
its channel block to an online log-sum-exp state ``(m, s, t)``: ``m = max x``, ``s = sum e^{x-m}``,
``t = sum e^{x-m} (x-m)``, so that ``H = log s - t / s``.  Two states merge exactly (``m' = max(m1, m2)``,
``s' = sum_i e^{m_i-m'} s_i``, ``t' = sum_i e^{m_i-m'} (t_i + (m_i-m') s_i)``), so any C works: the states of
the channel blocks are written out and merged by the combine kernel.

**Step 3 - high-frequency ratios without an FFT.**  By Parseval the total DFT energy of channel ``c`` is
``L sum_l x_lc^2`` (``L M2_c`` once centred) and its DC energy ``(L mu_c)^2``.  The low non-DC energy is
``sum_rows (B x_c)^2`` with the real basis ``B [K, L]`` of :func:`~aselect_kernels.frequency.low_frequency_basis`,
computed on tensor cores as ``tl.dot(B_tile [BLOCK_K, BLOCK_L], x_tile [BLOCK_L, BLOCK_C])`` into an fp32
``[BLOCK_K, BLOCK_C]`` accumulator (the basis is zero-padded to a multiple of ``BLOCK_K >= 16`` rows and cached
on the device).  When ``K > BLOCK_K`` the extra row blocks re-read the sample's tiles (from L2 on a GPU).
Then ``E_high = L sum_c M2_c - E_low`` (computed directly, which stays accurate when DC dominates) and::

    hfr = E_high / (L sum_c sum_l x_lc^2)        hfr_centered = E_high / (L sum_c M2_c)      (NaN on 0 / 0)

*Precision of the projection.*  ``B 1 = 0`` exactly, but not once ``B`` is rounded to ``B_r``: the projection
of a large channel mean would leak into ``E_low``.  We therefore subtract the exact leak,
``B_r (x - mu) = B_r x - rowsum(B_r) mu`` (``rowsum`` precomputed in fp64), so only ``B_r - B`` times the
*centred* signal remains.  The dot operands are chosen so ``B_r`` is close to ``B``:

* fp32 inputs: operands ``B`` (fp32) and ``x - k_c`` in fp32 with ``input_precision="ieee"`` (true fp32
  products; TF32 would round both operands to 10 mantissa bits, ``"tf32x3"`` would be faster and nearly as
  accurate but is NVIDIA-only).
* fp16/bf16 inputs: ``x`` is exact in its own dtype, so it is fed raw, and ``B`` is split into ``B_hi + B_lo``,
  both in the input dtype (16 mantissa bits for bf16, 22 for fp16): two half-precision tensor-core dots with
  fp32 accumulation.
* Under the Triton interpreter (``TRITON_INTERPRET=1``) half-precision ``tl.dot`` is wrong, so the same
  operands are upcast to fp32 first (``UPCAST_DOT``); the arithmetic is otherwise the GPU's.

**Step 4 - combine.**  Each program writes four partial sums (``sum x``, ``sum M2``, ``sum L mu^2``,
``E_low``) and its per-row entropy states.  A second small kernel, one program per sample, adds the partials
and merges the states in channel-block order: deterministic (no float atomics), and since block sizes depend
only on ``(L, C, K)``, never on ``N``, a sample's result does not depend on the batch it is scored in.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from functools import lru_cache

import torch
import triton
import triton.language as tl

from ..frequency import low_frequency_basis, warn_if_degenerate
from ..reference import STAT_NAMES, StatsConfig, check_features

#: The kernels were defined for the Triton interpreter (``TRITON_INTERPRET=1`` when this module was imported).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Input dtypes the kernel reads (fp64 goes to the reference).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_NUM_PARTIALS = 4  # sum x, sum M2, sum L mu^2, E_low
#: Warps of the main kernel on a GPU: the block sweep's best configuration on both swept shapes used 4 (8 won only
#: with the largest tiles, all 1.8x or more slower than the best).
NUM_WARPS = 4
_DEFAULT_CONFIG = StatsConfig()


@triton.jit
def _load_tile(x_base, l0, offs_l0, offs_c, c_ok, L, stride_xl, stride_xc):
    """Tile ``[BLOCK_L, BLOCK_C]`` of one sample starting at token ``l0`` (zeros outside), with its masks."""
    offs_l = l0 + offs_l0
    l_ok = offs_l < L
    mask = l_ok[:, None] & c_ok[None, :]
    xt = tl.load(x_base + offs_l[:, None] * stride_xl + offs_c[None, :] * stride_xc, mask=mask, other=0.0)
    return xt, offs_l, l_ok, mask


@triton.jit
def _project(proj, basis_hi_ptr, basis_lo_ptr, rows, offs_l, l_ok, operand, L,
             SPLIT_BASIS: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``proj += B[rows, tile] @ operand`` (fp32 accumulation), see *Precision of the projection*."""
    offs = rows[:, None] * L + offs_l[None, :]
    b_hi = tl.load(basis_hi_ptr + offs, mask=l_ok[None, :], other=0.0)
    if SPLIT_BASIS:
        b_lo = tl.load(basis_lo_ptr + offs, mask=l_ok[None, :], other=0.0)
        if UPCAST_DOT:
            op32 = operand.to(tl.float32)
            proj = tl.dot(b_hi.to(tl.float32), op32, acc=proj, input_precision="ieee")
            proj = tl.dot(b_lo.to(tl.float32), op32, acc=proj, input_precision="ieee")
        else:
            proj = tl.dot(b_hi, operand, acc=proj)
            proj = tl.dot(b_lo, operand, acc=proj)
    else:
        proj = tl.dot(b_hi, operand, acc=proj, input_precision="ieee")
    return proj


@triton.jit
def _low_energy(proj, rowsum_ptr, rows, centre):
    """Per-channel ``sum_rows (B_r (x - mu))^2`` from ``proj = B_r (x - shift)`` and ``centre = mu - shift``."""
    rs = tl.load(rowsum_ptr + rows)
    r = proj - rs[:, None] * centre[None, :]
    return tl.sum(r * r, axis=0)


@triton.jit
def _sample_stats_kernel(
    x_ptr, basis_hi_ptr, basis_lo_ptr, rowsum_ptr, part_ptr, ent_ptr,
    L, C, NUM_KB, stride_xn, stride_xl, stride_xc,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_LOW: tl.constexpr, SPLIT_BASIS: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """Program ``(n, cb)``: partial sums of sample ``n`` over channel block ``cb`` (module docstring, steps 1-3)."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    slot = (pid_n * tl.num_programs(1) + pid_c).to(tl.int64)  # this program's row in the partial buffers
    x_base = x_ptr + pid_n.to(tl.int64) * stride_xn
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    offs_l0 = tl.arange(0, BLOCK_L)
    offs_k = tl.arange(0, BLOCK_K)
    ent_base = ent_ptr + slot * 3 * L

    # Step 1: the shift k_c is the channel's first token.
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

        # Step 2: the (m, s, t) state of each token row over this channel block.
        m = tl.max(tl.where(mask, xf, float("-inf")), axis=1)
        z = tl.where(mask, xf - tl.where(l_ok, m, 0.0)[:, None], 0.0)
        e = tl.where(mask, tl.exp(z), 0.0)
        tl.store(ent_base + offs_l, m, mask=l_ok)
        tl.store(ent_base + L + offs_l, tl.sum(e, axis=1), mask=l_ok)
        tl.store(ent_base + 2 * L + offs_l, tl.sum(e * z, axis=1), mask=l_ok)

        # Step 3: first block of basis rows, from the tile already in registers.
        if HAS_LOW:
            if SPLIT_BASIS:
                proj = _project(proj, basis_hi_ptr, basis_lo_ptr, offs_k, offs_l, l_ok, xt, L,
                                SPLIT_BASIS, UPCAST_DOT)
            else:
                proj = _project(proj, basis_hi_ptr, basis_lo_ptr, offs_k, offs_l, l_ok, d, L,
                                SPLIT_BASIS, UPCAST_DOT)

    mu_off = a / L  # mu_c - k_c
    m2 = tl.where(c_ok, b - a * mu_off, 0.0)
    mu = shift + mu_off
    e_low = tl.zeros([BLOCK_C], tl.float32)
    if HAS_LOW:
        # The projection operand was x (split basis) or x - k (fp32): remove the matching mean leak.
        if SPLIT_BASIS:
            centre = mu
        else:
            centre = mu_off
        e_low += _low_energy(proj, rowsum_ptr, offs_k, centre)
        for kb in range(1, NUM_KB):  # further basis row blocks re-read the tiles
            rows = kb * BLOCK_K + offs_k
            proj = tl.zeros([BLOCK_K, BLOCK_C], tl.float32)
            for l0 in range(0, L, BLOCK_L):
                xt, offs_l, l_ok, mask = _load_tile(x_base, l0, offs_l0, offs_c, c_ok, L, stride_xl, stride_xc)
                if SPLIT_BASIS:
                    proj = _project(proj, basis_hi_ptr, basis_lo_ptr, rows, offs_l, l_ok, xt, L,
                                    SPLIT_BASIS, UPCAST_DOT)
                else:
                    d = tl.where(mask, xt.to(tl.float32) - shift[None, :], 0.0)
                    proj = _project(proj, basis_hi_ptr, basis_lo_ptr, rows, offs_l, l_ok, d, L,
                                    SPLIT_BASIS, UPCAST_DOT)
            e_low += _low_energy(proj, rowsum_ptr, rows, centre)

    part = part_ptr + slot * 4
    tl.store(part + 0, tl.sum(L * shift + a, axis=0))  # sum x
    tl.store(part + 1, tl.sum(m2, axis=0))  # sum M2
    tl.store(part + 2, tl.sum(L * mu * mu, axis=0))  # sum L mu^2 (zero on padded channels: mu = 0)
    tl.store(part + 3, tl.sum(e_low, axis=0))  # low non-DC energy


@triton.jit
def _combine_kernel(part_ptr, ent_ptr, out_ptr, L, C, NUM_CB, stride_on, stride_os, BLOCK_L: tl.constexpr):
    """Program ``n``: add the channel-block partials in order, merge the entropy states, write the 6 stats."""
    n = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, 4)
    acc = tl.zeros([4], tl.float32)
    for cb in range(NUM_CB):
        acc += tl.load(part_ptr + (n * NUM_CB + cb) * 4 + idx)
    sum_x = tl.sum(tl.where(idx == 0, acc, 0.0), axis=0)
    sum_m2 = tl.sum(tl.where(idx == 1, acc, 0.0), axis=0)
    sum_lmu2 = tl.sum(tl.where(idx == 2, acc, 0.0), axis=0)
    e_low = tl.sum(tl.where(idx == 3, acc, 0.0), axis=0)

    h_acc = tl.zeros([BLOCK_L], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_ok = offs_l < L
        base = ent_ptr + n * NUM_CB * 3 * L + offs_l
        m = tl.load(base, mask=l_ok, other=0.0)
        s = tl.load(base + L, mask=l_ok, other=1.0)
        t = tl.load(base + 2 * L, mask=l_ok, other=0.0)
        for cb in range(1, NUM_CB):
            nxt = base + cb * 3 * L
            m2 = tl.load(nxt, mask=l_ok, other=0.0)
            s2 = tl.load(nxt + L, mask=l_ok, other=1.0)
            t2 = tl.load(nxt + 2 * L, mask=l_ok, other=0.0)
            mm = tl.maximum(m, m2)
            alpha = tl.exp(m - mm)
            beta = tl.exp(m2 - mm)
            t = alpha * (t + (m - mm) * s) + beta * (t2 + (m2 - mm) * s2)
            s = alpha * s + beta * s2
            m = mm
        h_acc += tl.where(l_ok, tl.log(s) - t / s, 0.0)

    lf = L * 1.0
    lc = lf * C
    e_high = tl.maximum(lf * sum_m2 - e_low, 0.0)
    e_total = lf * (sum_m2 + sum_lmu2)
    e_centred = lf * sum_m2
    hfr = tl.where(e_total > 0, e_high / tl.where(e_total > 0, e_total, 1.0), float("nan"))
    hfr_c = tl.where(e_centred > 0, e_high / tl.where(e_centred > 0, e_centred, 1.0), float("nan"))
    out = out_ptr + n * stride_on
    tl.store(out, sum_x / lc)
    tl.store(out + stride_os, (sum_m2 + sum_lmu2) / lc)
    tl.store(out + 2 * stride_os, sum_m2 / ((lf - 1.0) * C))
    tl.store(out + 3 * stride_os, tl.sum(h_acc, axis=0) / lf)
    tl.store(out + 4 * stride_os, hfr)
    tl.store(out + 5 * stride_os, hfr_c)


def _clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def block_sizes(length: int, channels: int, k: int) -> tuple[int, int, int]:
    """``(BLOCK_L, BLOCK_C, BLOCK_K)`` for a shape: a function of ``(L, C, K)`` only, never of ``N``.

    Under the interpreter, large tiles and few programs (its cost is per operation, not per element).  On a GPU,
    the best of the block sweep ``bench/block_sweep.py`` on an H100 (``bench/results/``; 4 warps, see
    :data:`NUM_WARPS`): 64-token tiles, 128 channels per program for wide taps (DiT-XL/2's 1152: 139 us against
    387 us for the former 32 x 128 with 8 warps) and 32 for narrow ones (the embedded model's 96: 123 us against
    287 us).  No autotune, whose pick could vary from run to run.
    """
    if INTERPRET:
        return _clamp_pow2(length, 16, 64), _clamp_pow2(channels, 16, 256), _clamp_pow2(k, 16, 64)
    return _clamp_pow2(length, 16, 64), 128 if channels >= 512 else 32, _clamp_pow2(k, 16, 64)


@lru_cache(maxsize=32)
def _basis(
    length: int, grid: tuple[int, int] | None, cutoff: float, block_k: int, split_dtype: torch.dtype | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(B_hi, B_lo, rowsum(B_hi + B_lo) fp32, K) on ``device``, rows zero-padded to a multiple of ``block_k``."""
    b64 = low_frequency_basis(length, grid, cutoff, dtype=torch.float64)
    k = b64.shape[0]
    padded = torch.zeros(max(1, math.ceil(k / block_k)) * block_k, length, dtype=torch.float64)
    padded[:k] = b64
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


def fused_stats(
    x: torch.Tensor, config: StatsConfig = _DEFAULT_CONFIG, *, block_l: int | None = None,
    block_c: int | None = None, block_k: int | None = None, num_warps: int | None = None,
) -> torch.Tensor:
    """All statistics of :data:`STAT_NAMES` for each sample of ``x`` ``[N, L, C]`` -> ``[N, 6]`` float32.

    ``x`` is fp32, fp16 or bf16, on a CUDA device (or on the CPU under ``TRITON_INTERPRET=1``), with any
    strides.  ``block_*`` override the block sizes (tests and benchmarks; powers of two, at least 16), ``num_warps``
    the warps of the main kernel on a GPU.
    """
    check_features(x)
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"the fused kernel reads fp32, fp16 or bf16, got {x.dtype}; use the reference for fp64")
    if x.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("a CPU tensor needs the Triton interpreter: set TRITON_INTERPRET=1 before importing")
    n, length, channels = x.shape
    grid = config.resolve_grid(length)
    warn_if_degenerate(length, grid, config.cutoff)

    k_low = low_frequency_basis(length, grid, config.cutoff, dtype=torch.float64).shape[0]
    bl, bc, bk = block_sizes(length, channels, k_low)
    bl, bc, bk = block_l or bl, block_c or bc, block_k or bk
    for name, value in (("block_l", bl), ("block_c", bc), ("block_k", bk)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {value}")
    split_dtype = None if x.dtype == torch.float32 else x.dtype
    basis_hi, basis_lo, rowsum, k_low = _basis(length, grid, float(config.cutoff), bk, split_dtype, x.device)
    num_kb = math.ceil(k_low / bk)
    num_cb = triton.cdiv(channels, bc)

    part = torch.empty(n, num_cb, _NUM_PARTIALS, dtype=torch.float32, device=x.device)
    ent = torch.empty(n, num_cb, 3, length, dtype=torch.float32, device=x.device)
    out = torch.empty(n, len(STAT_NAMES), dtype=torch.float32, device=x.device)
    gpu = {} if INTERPRET else {"num_warps": num_warps or NUM_WARPS}
    with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
        _sample_stats_kernel[(n, num_cb)](
            x, basis_hi, basis_lo, rowsum, part, ent,
            length, channels, num_kb, x.stride(0), x.stride(1), x.stride(2),
            BLOCK_L=bl, BLOCK_C=bc, BLOCK_K=bk,
            HAS_LOW=k_low > 0, SPLIT_BASIS=split_dtype is not None, UPCAST_DOT=INTERPRET, **gpu,
        )
        _combine_kernel[(n,)](
            part, ent, out, length, channels, num_cb, out.stride(0), out.stride(1),
            BLOCK_L=_clamp_pow2(length, 16, 512 if INTERPRET else 256),
        )
    return out

