"""Helpers shared by the benchmark scripts of ``bench/``: environment, timing, error measures and the DiT models.

``bench_stats.py`` (the benchmark driver), ``bench_forward.py`` (its forward sections), ``gpu_checks.py``,
``block_sweep.py``, ``launch_overhead.py`` and ``python/profile_scored_forward.py`` import from here; nothing here
imports them.  Importing this module puts the repository root and ``bench/`` on ``sys.path`` (the package runs
from a checkout without ``pip install``) and never imports diffusers: :func:`build_dit` does, only when it builds
a diffusers model.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, Path(__file__).resolve().parent):  # run from a checkout without ``pip install``
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from aselect_kernels.reference import STAT_NAMES  # noqa: E402
from aselect_kernels.taps import TapSpec, resolve_taps  # noqa: E402

#: Model sizes: DiT-XL/2 (256 px latents), a small one for the CUDA checks, and the 2-block model of ``--smoke``.
DIT_SIZES: dict[str, dict[str, int]] = {
    "xl": {"layers": 28, "heads": 16, "head_dim": 72, "in_channels": 4, "out_channels": 8, "sample_size": 32,
           "patch": 2, "classes": 1000},
    "check": {"layers": 2, "heads": 4, "head_dim": 32, "in_channels": 4, "out_channels": 8, "sample_size": 16,
              "patch": 2, "classes": 10},
    "tiny": {"layers": 2, "heads": 2, "head_dim": 8, "in_channels": 4, "out_channels": 8, "sample_size": 16,
             "patch": 2, "classes": 10},
}


# ----------------------------------------------------------------------------------------------- environment


def sync(device: torch.device) -> None:
    """Wait for the device (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nvtx_range(name: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """An NVTX push/pop range on CUDA (``torch.cuda.nvtx``), a no-op elsewhere."""
    if enabled and torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


def slugify(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def l2_bytes(device: torch.device) -> int:
    """L2 cache size of a CUDA device (64 MiB if unknown; 1 MiB on the CPU, where it only sizes the rotation)."""
    if device.type != "cuda":
        return 1 << 20
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20)


def env_info(device: torch.device, smoke: bool) -> dict[str, Any]:
    """Device, versions and settings of this run."""
    info: dict[str, Any] = {
        "smoke": smoke, "python": platform.python_version(), "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "device_type": device.type,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                    l2_bytes=l2_bytes(device), memory_bytes=p.total_memory)
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                text=True, timeout=20).stdout.strip()
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()}, smoke)" if smoke else "cpu"
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                            timeout=10).stdout.strip() or None
    return info


# ---------------------------------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[int], object], n_inputs: int, device: torch.device, warmup: int, reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls ``fn(i % n_inputs)`` after ``warmup`` calls (CUDA events on a GPU).

    The events bracket each Python call, so a call whose launch is slower than its kernels is timed as launched.
    """
    for i in range(warmup):
        fn(i % n_inputs)
    sync(device)
    if device.type == "cuda":
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for i, (start, end) in enumerate(ev):
            start.record()
            fn((warmup + i) % n_inputs)
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in ev]
    out = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn((warmup + i) % n_inputs)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def graph_call_ms(fn: Callable[[int], object], n_inputs: int, device: torch.device, replays: int) -> float:
    """Device milliseconds per call: ``fn(0) .. fn(n_inputs - 1)`` captured in one CUDA graph, median of replays."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for i in range(min(n_inputs, 3)):
            fn(i)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_inputs):
            fn(i)
    graph.replay()
    times = time_calls(lambda _: graph.replay(), 1, device, warmup=1, reps=replays)
    return statistics.median(times) / n_inputs


def adaptive_reps(fn: Callable[[int], object], n_inputs: int, device: torch.device, budget_ms: float,
                  lo: int, hi: int) -> int:
    """Repetitions that fit ``budget_ms`` after one probe call (between ``lo`` and ``hi``)."""
    probe = time_calls(fn, n_inputs, device, warmup=1, reps=1)[0]
    return max(lo, min(hi, int(budget_ms / max(probe, 1e-3))))


def summary(times: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of a list of milliseconds."""
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "n": len(times)}


def rotation_count(nbytes: int, device: torch.device, smoke: bool) -> int:
    """Buffers to rotate among: together at least 3x the L2, at most 512 and 6 GiB."""
    if smoke:
        return 2
    want = math.ceil(3 * l2_bytes(device) / nbytes)
    return max(2, min(want, 512, (6 << 30) // nbytes))


def kernel_backends() -> list[str]:
    """The statistics backends to benchmark: ``triton`` and, when it can run here, ``cuda`` (the reason it cannot is
    printed once)."""
    from aselect_kernels import stats

    backends = ["triton"]
    if "cuda" in stats.BACKENDS:
        from aselect_kernels.ops.cuda_stats import unavailable_reason

        reason = unavailable_reason()
        if reason is None:
            backends.append("cuda")
        else:
            print(f"backend 'cuda' skipped: {reason}", file=sys.stderr, flush=True)
    return backends


def max_errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float | bool]:
    """Per-statistic max |out - ref| / max(|ref|, 1) and whether the NaN patterns agree."""
    out, ref = out.double().cpu(), ref.double().cpu()
    nan_ok = bool(torch.equal(out.isnan(), ref.isnan()))
    err = ((out - ref).abs() / ref.abs().clamp(min=1.0)).nan_to_num(0.0)
    res: dict[str, float | bool] = {name: float(err[:, i].max()) for i, name in enumerate(STAT_NAMES)}
    res["nan_pattern_equal"] = nan_ok
    return res


def worst_error(errors: dict[str, float | bool]) -> float:
    """The largest per-statistic error of :func:`max_errors`."""
    return max(float(v) for k, v in errors.items() if k != "nan_pattern_equal")


# -------------------------------------------------------------------------------------------------- models


def PlainDiT(layers: int, heads: int, head_dim: int, in_channels: int, out_channels: int,  # noqa: N802
             sample_size: int, patch: int, classes: int) -> nn.Module:
    """The facebookresearch-style DiT of ``python/plain_dit_example.py`` at these sizes (``forward(x, t, y)``,
    taps ``blocks.i.attn`` / ``blocks.i.mlp``); it predicts ``in_channels`` (``out_channels`` is not used).

    At :data:`DIT_SIZES` ``["xl"]`` it has DiT-XL/2's shape where the taps see it: 28 blocks of width 1152 with 16
    heads on 256 tokens, a 4608-wide MLP; its last layer predicts 4 channels, not 8, and its position embedding is
    learned, not fixed.  It needs only torch: the forward benchmarks run on it when diffusers is missing."""
    sys.path.insert(0, str(REPO / "python"))
    from plain_dit_example import DiT

    return DiT(size=sample_size, patch=patch, channels=in_channels, dim=heads * head_dim, depth=layers, heads=heads,
               num_classes=classes)


@dataclass
class DitBundle:
    """A DiT-sized model with its call, inputs and the 56 (or 2 x layers) attention/MLP tap specs."""

    model: nn.Module
    kind: str  # "diffusers DiTTransformer2DModel" or "plain DiT (bench/common.py PlainDiT)"
    taps: list[TapSpec]
    sizes: dict[str, int]

    def inputs(self, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random latents, timesteps and class labels (never zeros)."""
        g = torch.Generator(device=device).manual_seed(seed)
        s = self.sizes
        x = torch.randn(batch, s["in_channels"], s["sample_size"], s["sample_size"], device=device, generator=g)
        t = torch.randint(0, 1000, (batch,), device=device, generator=g)
        y = torch.randint(0, s["classes"], (batch,), device=device, generator=g)
        return x.to(dtype), t, y

    def taps_for(self, preset: str) -> list[TapSpec]:
        """The tap specs of a preset of :mod:`aselect_kernels.taps` (``attn_mlp``: 2 per block, ``all``: 5)."""
        return resolve_taps(self.model, preset)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> object:
        if self.kind.startswith("diffusers"):
            return self.model(hidden_states=x, timestep=t, class_labels=y, return_dict=False)
        return self.model(x, t, y)


def diffusers_available() -> bool:
    """Whether diffusers imports."""
    try:
        import diffusers  # noqa: F401
    except Exception:
        return False
    return True


def use_diffusers(prefer: str) -> bool:
    """Whether :func:`build_dit` builds the diffusers model for ``prefer``; ``"auto"`` without diffusers says loudly,
    once per process, that the plain DiT stands in, and ``"diffusers"`` without it raises ImportError."""
    if prefer == "plain":
        return False
    if diffusers_available():
        return True
    if prefer == "diffusers":
        raise ImportError("model 'diffusers' asked for, but diffusers does not import: install it, or run with "
                          "--model plain (or auto)")
    if not _WARNED:
        _WARNED.append(True)
        print("!!! diffusers does not import: the DiT benchmarks use the plain DiT of bench/common.py (PlainDiT) "
              "instead of diffusers' DiTTransformer2DModel", file=sys.stderr, flush=True)
    return False


_WARNED: list[bool] = []


def build_dit(size: str, device: torch.device, dtype: torch.dtype, prefer: str = "auto", seed: int = 0) -> DitBundle:
    """DiT-XL/2 (``size="xl"``) or the smoke model (``"tiny"``), random weights, eval mode, on ``device``.

    ``prefer`` is ``"auto"`` (diffusers when importable), ``"diffusers"`` or ``"plain"``.  Taps: the
    ``attn_mlp`` preset (attention and MLP outputs of every block; :meth:`DitBundle.taps_for` gives others).
    """
    s = DIT_SIZES[size]
    diffusers_model = use_diffusers(prefer)
    torch.manual_seed(seed)
    with torch.device(device):
        if diffusers_model:
            from diffusers import DiTTransformer2DModel

            model = DiTTransformer2DModel(
                num_attention_heads=s["heads"], attention_head_dim=s["head_dim"], in_channels=s["in_channels"],
                out_channels=s["out_channels"], num_layers=s["layers"], sample_size=s["sample_size"],
                patch_size=s["patch"], num_embeds_ada_norm=s["classes"],
            )
            kind = "diffusers DiTTransformer2DModel"
        else:
            model = PlainDiT(s["layers"], s["heads"], s["head_dim"], s["in_channels"], s["out_channels"],
                             s["sample_size"], s["patch"], s["classes"])
            kind = "plain DiT (bench/common.py PlainDiT)"
        taps = resolve_taps(model, "attn_mlp")
    model = nn.Module.to(model, device=device, dtype=dtype).eval()  # (diffusers' .to() warns on any cast)
    return DitBundle(model, kind, taps, s)


