"""A first-use check of the CUDA C++ kernel against the reference, before ``backend="auto"`` trusts it.

The backend table sends some shapes to the CUDA kernel on the strength of predictions from its machine code.  A
kernel whose fragment layouts or tile maps are wrong on some GPU would give plausible-looking but wrong scores, so
``auto`` checks each kernel instance once per process before its first use: the same ``(device, dtype, L, C,
config)``, on a seeded two-sample input (a random mean per channel, so the shifted moments matter; a smooth part
along the tokens, so the low band holds energy), against :func:`~aselect_kernels.reference.reference_stats` in
float64 on the same device.  A disagreement above :func:`canary_rtol` (four times the kernel tests' tolerance: the
operands' rounding plus fp32 accumulation over the ``L * C`` terms; a wrong fragment or tile map errs by far more)
or an error sends that instance to the Triton kernel, with one warning that names it.  The input is contiguous,
as taps are; a strided tensor runs the same instance's other load path unchecked.

The check runs eagerly and synchronises once, so it is skipped during CUDA-graph capture (the Triton kernel runs
until an eager call has checked the instance; warm-up calls, which capture needs anyway, do that).
"""

from __future__ import annotations

import math
import warnings

import torch

from ..frequency import CutoffWarning
from ..reference import StatsConfig, reference_stats

#: Relative error of the kernel's low-frequency operands per input dtype (fp32 goes through 3xTF32 halves).
OPERAND_ERR = {torch.float32: 4 * 2.0**-21, torch.float16: 4 * 2.0**-21, torch.bfloat16: 4 * 2.0**-16}
#: Samples in the check's input.
CANARY_SAMPLES = 2

Key = tuple[str, str, int, int, float, int, tuple[int, int] | None]
_verdicts: dict[Key, str | None] = {}


def canary_rtol(dtype: torch.dtype, length: int, channels: int) -> float:
    """The largest accepted relative error (on the scales of :func:`disagreement`) for an instance."""
    return 4 * (OPERAND_ERR[dtype] + 8 * 2.0**-24 * math.sqrt(length * channels))


def canary_input(length: int, channels: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The seeded check input ``[2, L, C]`` in ``dtype``: noise, a smooth wave along the tokens and channel means
    of several times the noise (built on the CPU, so it is the same on every device)."""
    gen = torch.Generator().manual_seed(20261204)
    tokens = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.rand(CANARY_SAMPLES, 1, channels, generator=gen, dtype=torch.float64) * 3 + 1
    wave = torch.sin(2 * math.pi * freq * tokens / max(length, 1))
    means = torch.randn(CANARY_SAMPLES, 1, channels, generator=gen, dtype=torch.float64) * 4
    noise = torch.randn(CANARY_SAMPLES, length, channels, generator=gen, dtype=torch.float64)
    return (noise + 2 * wave + means).to(dtype).to(device)


def disagreement(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> float:
    """Largest per-entry error of ``out`` against ``ref`` (both ``[N, 6]``), each on its own scale: ``|ref|``;
    the sample's RMS for the mean (which may be near 0); at least 1 for the entropy (nats) and the two ratios."""
    out, ref = out.double(), ref.double()
    scale = ref.abs().clone()
    scale[:, 0] = torch.maximum(scale[:, 0], x.double().square().mean(dim=(1, 2)).sqrt())
    scale[:, 3:] = scale[:, 3:].clamp(min=1.0)
    if not torch.equal(out.isnan(), ref.isnan()):
        return math.inf
    err = ((out - ref).abs() / scale).nan_to_num(0.0)
    return float(err.max())


def instance(x: torch.Tensor, config: StatsConfig) -> Key:
    """The kernel instance that scores ``x``: its device, dtype, ``L``, ``C`` and statistics config."""
    return (str(x.device), str(x.dtype), x.shape[1], x.shape[2], float(config.cutoff), config.hfr_dims,
            config.grid)


def check(x: torch.Tensor, config: StatsConfig) -> str | None:
    """``None`` when the CUDA kernel agrees with the reference on ``x``'s kernel instance, else why not (with
    one warning); computed once per process and instance."""
    return _verdict(instance(x, config), x, config)


def _verdict(key: Key, x: torch.Tensor, config: StatsConfig) -> str | None:
    if key not in _verdicts:
        _verdicts[key] = _run(x.shape[1], x.shape[2], x.dtype, x.device, config)
        if _verdicts[key] is not None:
            warnings.warn(f"{_verdicts[key]}: using the Triton kernel instead", RuntimeWarning, stacklevel=5)
    return _verdicts[key]


def _run(length: int, channels: int, dtype: torch.dtype, device: torch.device, config: StatsConfig) -> str | None:
    from .cuda_stats import cuda_stats

    probe = canary_input(length, channels, dtype, device)
    try:
        with warnings.catch_warnings():  # the caller's own call warns about a degenerate cutoff, once
            warnings.simplefilter("ignore", CutoffWarning)
            out = cuda_stats(probe, config)
            ref = reference_stats(probe.double(), config, torch.float64)
        err = disagreement(out, ref, probe)
    except Exception as exc:  # any failure of the untrusted kernel sends the shape to Triton
        return f"the CUDA statistics kernel failed its first-use check on {_name(length, channels, dtype)}: {exc}"
    rtol = canary_rtol(dtype, length, channels)
    if err > rtol:
        return (f"the CUDA statistics kernel disagrees with the reference statistics on "
                f"{_name(length, channels, dtype)} (relative error {err:.3g} > {rtol:.3g})")
    return None


def _name(length: int, channels: int, dtype: torch.dtype) -> str:
    return f"[N, {length}, {channels}] {str(dtype).replace('torch.', '')}"


def trusted(x: torch.Tensor, config: StatsConfig, capturing: bool | None = None) -> bool:
    """Whether ``auto`` may run the CUDA kernel on ``x``: checked (now, if need be) and in agreement.  While a
    CUDA graph is being captured (``capturing``; by default asked of the current stream) an unchecked instance is
    not trusted, and not checked: the check synchronises.  A checked instance costs one dictionary lookup."""
    key = instance(x, config)
    if key not in _verdicts:
        if capturing is None:
            capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if capturing:
            return False
    return _verdict(key, x, config) is None


def verdicts() -> dict[Key, str | None]:
    """Every instance checked so far and its verdict (``None``: agrees), for reports."""
    return dict(_verdicts)
