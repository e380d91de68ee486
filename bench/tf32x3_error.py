"""How much of the accuracy budget ``tf32x3`` dots use on fp32 inputs (CPU emulation, no GPU needed).

``python bench/tf32x3_error.py``: for shapes of the GPU checks, the kernel's fp32 projection ``B (x - k)`` is
emulated with the rounding of a ``tf32x3`` dot (each operand split into a TF32 high part and a TF32 low part; the
products ``hi hi + hi lo + lo hi`` exact, accumulated in fp64 so that only the operand rounding is measured), the
mean leak removed as in the kernel, and the relative error of ``E_high`` (hence ``hfr_centered``) against fp64 is
printed beside the test tolerance ``4 u + 8 u sqrt(L C)`` (``u = 2^-24``).  The fp32 accumulation of the kernel is
what the tolerance's second term covers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aselect_kernels.frequency import low_frequency_basis  # noqa: E402
from aselect_kernels.reference import StatsConfig  # noqa: E402

U32 = 2.0**-24
CASES = [("n1_l49_c200_1d", 1, 49, 200, StatsConfig(), 0.0),
         ("grid6x8_c40_2d", 2, 48, 40, StatsConfig(cutoff=0.4, hfr_dims=2, grid=(6, 8)), 0.0),
         ("grid5x7_c24_2d", 2, 35, 24, StatsConfig(cutoff=0.6, hfr_dims=2, grid=(5, 7)), 0.0),
         ("l64_c1_1d", 2, 64, 1, StatsConfig(), 0.0),
         ("dc_dominated_mean", 3, 64, 96, StatsConfig(), 30.0),
         ("offset_1e3_l49_c48", 2, 49, 48, StatsConfig(cutoff=0.3), 1e3),
         ("emb_l196_c96_1d", 4, 196, 96, StatsConfig(), 0.0),
         ("xl_l256_c1152_1d", 2, 256, 1152, StatsConfig(), 0.0)]


def tf32(a: torch.Tensor) -> torch.Tensor:
    """``a`` (fp32) rounded to TF32's 10 explicit mantissa bits (to nearest)."""
    bits = a.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def tf32x3_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with the operand rounding of a ``tf32x3`` dot (fp64 result)."""
    a_hi, b_hi = tf32(a), tf32(b)
    a_lo, b_lo = tf32(a - a_hi), tf32(b - b_hi)
    return (a_hi.double() @ b_hi.double() + a_hi.double() @ b_lo.double() + a_lo.double() @ b_hi.double())


def main() -> int:
    g = torch.Generator().manual_seed(0)
    print(f"{'case':22} {'rel err E_high':>15} {'tolerance':>10} {'share':>8}")
    for name, n, length, channels, config, offset in CASES:
        x = torch.randn(n, length, channels, generator=g) * 1.5 + offset
        basis = low_frequency_basis(length, config.resolve_grid(length), config.cutoff, dtype=torch.float64)
        xd = x.double()
        shift = xd[:, :1, :]
        mu = xd.mean(dim=1, keepdim=True)
        exact = (basis @ (xd - mu)).square().sum(dim=(1, 2))
        b32 = basis.float()
        proj = torch.stack([tf32x3_matmul(b32, (x[i] - x[i, :1]).float()) for i in range(n)])
        proj = proj - b32.double().sum(dim=1)[None, :, None] * (mu - shift)  # the kernel's leak correction
        e_high = length * (xd - mu).square().sum(dim=(1, 2)) - exact
        err = float(((proj.square().sum(dim=(1, 2)) - exact).abs() / e_high).max())
        tol = 4 * U32 + 8 * U32 * math.sqrt(length * channels)
        print(f"{name:22} {err:15.2e} {tol:10.2e} {err / tol:8.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
