"""The tiling table of the fused statistics kernel: one deterministic source of truth for its block sizes.

:func:`tiling` maps ``(L, C, K, dtype, target)`` to a :class:`Tiling`.  It is a pure function of its arguments:
never of the batch size N (a sample's statistics must not depend on the batch it is scored in, and the tiling
fixes the summation order), never of a timing taken at run time (no autotune, whose pick could vary between runs).
``target`` is ``"interpreter"`` (``TRITON_INTERPRET=1``: large tiles and few programs, because the interpreter
pays per operation, not per element) or a GPU's compute capability ``(major, minor)``.  Any target can be asked
for on any machine, so the CPU test suite runs the exact tilings that ship for GPUs.

The GPU rows are predictions from the kernel's traffic and register budget (``bench/NOTES.md``), to be confirmed
by ``bench/block_sweep.py`` on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton

#: Largest power-of-two token count that one program holds as a single tile (all tokens of a channel block).
MAX_ONE_TILE_L = 256
#: Largest block of basis rows kept in one accumulator; more rows re-read the sample's tiles once per block.
MAX_BLOCK_K = 64
#: On Hopper, half-precision inputs with 65 to 128 basis rows take one 128-row block over narrower channel blocks.
HOPPER_MAX_BLOCK_K = 128


@dataclass(frozen=True)
class Tiling:
    """How the kernel cuts its work.

    Attributes:
        block_l: tokens per tile (a power of two >= 16); ``block_l >= L`` means one tile holds every token.
        block_c: channels per tile (a power of two >= 16).
        block_k: low-frequency basis rows per projection accumulator (a power of two >= 16).
        group_c: channel blocks per work item, walked by one program (only with one tile, else 1).
        num_warps: warps per program (ignored by the interpreter).
        num_stages: software-pipelining depth of the program's inner loop (``tl.range``).
        programs_per_sm: persistent grid of ``programs_per_sm x SMs`` programs; 0 = one program per work item.
        fp32_dot: ``tl.dot`` precision of the projection of fp32 inputs (``"ieee"`` or ``"tf32x3"``).
        merge_in_kernel: the last program of a sample merges the partials (one launch); else a combine kernel.
        hoist_basis: with one tile, load the first block of basis rows once per program (else once per block).
    """

    block_l: int
    block_c: int
    block_k: int
    group_c: int = 1
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int = 0
    fp32_dot: str = "ieee"
    merge_in_kernel: bool = True
    hoist_basis: bool = True

    def one_tile(self, length: int) -> bool:
        """True when one tile holds all ``length`` tokens (the row entropy states then stay in registers)."""
        return self.block_l >= length

    def with_overrides(self, **overrides: object) -> Tiling:
        """A copy with the given fields replaced (``None`` values ignored), checked."""
        tiling = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        tiling.check()
        return tiling

    def check(self) -> None:
        """Raise a ``ValueError`` naming the first invalid field."""
        for name in ("block_l", "block_c", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        for name in ("group_c", "num_warps", "num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.programs_per_sm < 0:
            raise ValueError(f"programs_per_sm must be >= 0, got {self.programs_per_sm}")
        if self.fp32_dot not in ("ieee", "tf32x3"):
            raise ValueError(f"fp32_dot must be 'ieee' or 'tf32x3', got {self.fp32_dot!r}")


def pow2(n: int, lo: int, hi: int) -> int:
    """The next power of two of ``n``, clamped to ``[lo, hi]``."""
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def fit_block_c(channels: int, preferred: int) -> int:
    """``preferred`` channels per block, halved (down to 32) while padding would waste more than 1/8 of them."""
    block = preferred
    while block > 32 and triton.cdiv(channels, block) * block * 7 > channels * 8:
        block //= 2
    return block


def _interpreter(length: int, channels: int, k: int) -> Tiling:
    one = pow2(length, 16, MAX_ONE_TILE_L)
    block_c = pow2(channels, 16, 256)
    return Tiling(block_l=one if length <= MAX_ONE_TILE_L else 64, block_c=block_c, block_k=pow2(k, 16, MAX_BLOCK_K),
                  group_c=triton.cdiv(channels, block_c) if length <= MAX_ONE_TILE_L else 1, num_stages=1)


def _gpu(length: int, channels: int, k: int, dtype: torch.dtype, capability: tuple[int, int]) -> Tiling:
    block_k = pow2(k, 16, MAX_BLOCK_K)
    fp32_dot = "tf32x3" if capability >= (8, 0) else "ieee"
    if length <= MAX_ONE_TILE_L and block_k == 16:
        # A small basis (2-D ratios on DiT grids: K = 4): every token of a 32-channel block in one tile, the
        # basis tile [16, L] loaded once per program and kept in registers, the row entropy states merged in
        # registers over a group of about 384 channels (DiT-XL/2's 1152: three work items per sample).
        # ptxas (sm_90): 191 registers, no spills at L = 256, C = 1152 (bench/compile_report.py).
        block_c = 32
        group_c = max(1, min(triton.cdiv(channels, block_c), 384 // block_c))
        return Tiling(block_l=pow2(length, 16, MAX_ONE_TILE_L), block_c=block_c, block_k=block_k, group_c=group_c,
                      num_warps=8, num_stages=2, programs_per_sm=2, fp32_dot=fp32_dot)
    # Larger bases, or long token axes: token tiles, software-pipelined, one channel block per work item.  The
    # basis tile is re-read per token tile (from L2), as many bytes as the X tile at 64 x 128 in half precision.
    # One tile of all 256 tokens with a 64-row basis in registers spills (ptxas: 255 registers + spills).
    # Channel blocks are narrowed where padding would waste more than 1/8 of them (the embedded model's 96).
    if dtype == torch.float32:
        return Tiling(block_l=32, block_c=fit_block_c(channels, 64), block_k=block_k, num_warps=4, num_stages=3,
                      fp32_dot=fp32_dot)
    # wgmma (Hopper, 64 basis rows) holds a 64 x 128 accumulator without spilling; mma.sync (fewer rows, or
    # before Hopper) spills at 128 channels (ptxas: 20 B at L = 1024 K = 32 on sm_90, 312 B at L = 256 on sm_80).
    wide = block_k == MAX_BLOCK_K and capability >= (9, 0)
    if capability >= (9, 0) and MAX_BLOCK_K < k <= HOPPER_MAX_BLOCK_K:
        # 65 to 128 basis rows (Flux 2-D at 64 x 64: K = 68): one 128-row block over 64 channels, so that X is
        # read once, not once per 64-row block (sm_90: 248 registers, no spills; bench/sass_report.py).
        return Tiling(block_l=64, block_c=fit_block_c(channels, 64), block_k=HOPPER_MAX_BLOCK_K, num_warps=4,
                      num_stages=2, fp32_dot=fp32_dot)
    # Three stages with wgmma: the loop keeps the next tile's copies in flight while it computes (two stages wait
    # at the loop top for the copies issued at its bottom: `DEPBAR.LE SB0, 0x0` in the SASS).  With mma.sync
    # (SD3's 32 rows) a third stage raises the registers from 168 to 255, so two programs per SM instead of three.
    return Tiling(block_l=64, block_c=fit_block_c(channels, 128 if wide else 64), block_k=block_k, num_warps=4,
                  num_stages=3 if wide else 2, fp32_dot=fp32_dot)


def tiling(length: int, channels: int, k: int, dtype: torch.dtype,
           target: str | tuple[int, int] = "interpreter") -> Tiling:
    """The :class:`Tiling` for ``L`` tokens, ``C`` channels, ``K`` basis rows and input ``dtype`` on ``target``
    (``"interpreter"`` or a compute capability ``(major, minor)``)."""
    if target == "interpreter":
        return _interpreter(length, channels, k)
    if not (isinstance(target, tuple) and len(target) == 2):
        raise ValueError(f"target must be 'interpreter' or a compute capability (major, minor), got {target!r}")
    return _gpu(length, channels, k, dtype, (int(target[0]), int(target[1])))
