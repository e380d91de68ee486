"""Shared checks of a statistics implementation against the fp64 reference (kernel, PyTorch twin)."""

from __future__ import annotations

import math

import torch

from aselect_kernels.reference import STAT_NAMES, StatsConfig, reference_stats

#: fp32 unit roundoff: every sum in the kernel accumulates in fp32.
U32 = 2.0**-24
#: Relative error of the rounded low-frequency basis per input dtype: fp32 rounds B to 24 bits; fp16/bf16 split
#: it into hi + lo halves of the input dtype (about 22 and 16 bits).  E_low is quadratic in B, hence the factor 4.
BASIS_ERR = {torch.float32: 4 * 2.0**-24, torch.float16: 4 * 2.0**-21, torch.bfloat16: 4 * 2.0**-16}


def tolerance(dtype: torch.dtype, length: int, channels: int) -> float:
    """Relative tolerance: the basis error plus fp32 accumulation error over the L*C terms of a sample.

    Blocked (tile-then-sum) reductions grow like sqrt(n) u in practice; 8 sqrt(n) u leaves a margin of about 10
    over the errors observed, and stays far below what a wrong formula gives (1e-3 or more).
    """
    return BASIS_ERR[dtype] + 8 * U32 * math.sqrt(length * channels)


def ref64(x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    return reference_stats(x.cpu().double(), config, torch.float64)


def assert_stats_close(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, rtol: float) -> None:
    """``|out - ref| <= rtol * scale`` per entry, NaN where the reference is NaN.

    The scale is ``|ref|``, except for ``mean`` (which can be ~0 while its terms are not: scaled by the RMS of the
    sample), ``chan_entropy`` (an absolute quantity in nats: at least 1) and the two ratios, whose error is
    absolute as well as relative: ``E_high = E_centred - E_low`` is a difference of sums, each within ``rtol`` of
    its value, so ``hfr_centered`` may be off by ``2 rtol`` and ``hfr`` by ``2 rtol E_centred / E_total`` however
    small the ratio (docs/STATISTICS.md, "Accuracy").
    """
    assert out.dtype == torch.float32 and out.shape == ref.shape == (x.shape[0], len(STAT_NAMES))
    out, x = out.double().cpu(), x.cpu()
    assert torch.equal(out.isnan(), ref.isnan()), f"NaN pattern differs:\n{out}\n{ref}"
    scale = ref.abs().clone()
    scale[:, 0] = torch.maximum(scale[:, 0], x.double().square().mean(dim=(1, 2)).sqrt())
    scale[:, 3] = scale[:, 3].clamp(min=1.0)
    length = x.shape[1]
    centred_share = ((length - 1) / length * ref[:, 2] / ref[:, 1]).nan_to_num(0.0)  # E_centred / E_total
    scale[:, 4] += 2 * centred_share
    scale[:, 5] += 2
    err = (out - ref).abs()
    bad = (err > rtol * scale + 1e-12) & ~ref.isnan()
    assert not bad.any(), (
        f"stats {[STAT_NAMES[j] for j in bad.nonzero()[:, 1].unique().tolist()]} off (rtol {rtol:.2e}):\n"
        f"kernel {out}\nreference {ref}\nrelative error {err / scale}"
    )
