"""Side-by-side benchmark of the fused A-SelecT statistics on one card, in one run.

``python bench/bench_stats.py [--smoke] [--out DIR] [--sections copy,kernel,forward]``

Sections (each figure is a median; inputs are random, never zeros):

* ``copy``: device-to-device copy bandwidth ((read + write bytes) / time) on a buffer far larger than the L2, and a
  read-only reduction bandwidth, as the ceilings;
* ``kernel``: :func:`aselect_kernels.ops.fused_stats.fused_stats` on ``[N, 256, 1152]`` bf16 (DiT-XL/2) for N in
  (1, 8, 128) and on the embedded model's ``[N, 196, EMB_C]`` (fp32/bf16), 1-D and 2-D hfr, rotating among distinct
  input buffers whose total exceeds the L2.  Effective GB/s counts ``x`` read once.  Kernel times are taken two
  ways: CUDA events around each Python call (``launch``, what a caller sees, launch overhead included) and CUDA-graph
  replay (``graph``, device time); GB/s and % of copy use the graph time when the capture worked.  The same
  statistics by the eager reference, by ``torch.compile(reference_stats)`` and by a graph-break-free rewrite of the
  reference compiled with ``fullgraph=True`` (headline case) give the speed-ups (launch time against launch time);
* ``forward``: the DiT-XL/2-sized forward (diffusers ``DiTTransformer2DModel``, random bf16 weights, batch 128;
  a self-contained plain DiT of the same sizes when diffusers is missing) unscored, with eager reference hooks and
  with fused taps on all 56 attention-out / MLP-out outputs: median time, overhead, peak memory.

Then the targets, met or missed and by how much.  ``--smoke`` runs every code path on the CPU with tiny shapes
(``TRITON_INTERPRET=1``) and writes nothing unless ``--out`` is given.  JSON goes to ``<out>/<device-slug>.json``,
rewritten after each section so that a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without ``pip install``
    sys.path.insert(0, str(REPO))

from aselect_kernels.model import EMBEDDED_CONFIG  # noqa: E402
from aselect_kernels.reference import STAT_NAMES, StatsConfig, reference_stats  # noqa: E402
from aselect_kernels.taps import TapSet, TapSpec, resolve_taps  # noqa: E402

#: Channels of the embedded model's taps (its hidden width).
EMB_C = EMBEDDED_CONFIG["num_attention_heads"] * EMBEDDED_CONFIG["attention_head_dim"]

#: Targets: name -> (comparison, threshold, unit).
TARGETS: dict[str, tuple[str, float, str]] = {
    "fused_pct_of_copy": (">=", 80.0, "%"),
    "speedup_vs_compile": (">=", 30.0, "x"),
    "speedup_vs_eager": (">=", 40.0, "x"),
    "forward_overhead_pct": ("<=", 2.0, "%"),
    "extra_peak_memory_pct": ("<=", 1.0, "%"),
}

#: DiT-XL/2 (256 px latents) and the 2-block model of ``--smoke``.
DIT_SIZES: dict[str, dict[str, int]] = {
    "xl": {"layers": 28, "heads": 16, "head_dim": 72, "in_channels": 4, "out_channels": 8, "sample_size": 32,
           "patch": 2, "classes": 1000},
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


# ----------------------------------------------------------------------------------------------------- copy


def bench_copy(device: torch.device, smoke: bool) -> dict[str, Any]:
    """Copy and read-only bandwidth on one large random buffer (several times the L2)."""
    nbytes = (8 << 20) if smoke else max(1 << 30, 16 * l2_bytes(device))
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    reps = 3 if smoke else 30
    copy = summary(time_calls(lambda _: dst.copy_(src), 1, device, warmup=3 if not smoke else 1, reps=reps))
    half = src.view(torch.bfloat16)  # same bytes, read once by a bf16 -> fp32 sum
    read = summary(time_calls(lambda _: half.sum(dtype=torch.float32), 1, device, warmup=2, reps=reps))
    out = {
        "bytes": nbytes, "copy": copy, "read": read,
        "copy_gbps": 2 * nbytes / copy["median_ms"] / 1e6,
        "read_gbps": nbytes / read["median_ms"] / 1e6,
    }
    return out


# --------------------------------------------------------------------------------------------------- kernel


@dataclass
class Case:
    """One input shape for the statistics: ``[n, length, channels]`` of ``dtype`` under ``config``."""

    name: str
    n: int
    length: int
    channels: int
    dtype: torch.dtype
    config: StatsConfig = field(default_factory=StatsConfig)
    compile_priority: int | None = None  # compile torch.compile(reference) in this order; None = not at all
    headline: bool = False

    @property
    def nbytes(self) -> int:
        return self.n * self.length * self.channels * torch.empty((), dtype=self.dtype).element_size()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [self.n, self.length, self.channels], "dtype": str(self.dtype),
                "config": asdict(self.config), "bytes_read": self.nbytes, "headline": self.headline}


XL_2D = StatsConfig(hfr_dims=2, grid=(16, 16))
EMB_2D = StatsConfig(hfr_dims=2, grid=(14, 14))


def gpu_cases() -> list[Case]:
    """DiT-XL/2 ``[N, 256, 1152]`` bf16 and the embedded model's ``[N, 196, EMB_C]``, 1-D and 2-D hfr."""
    bf16, fp32 = torch.bfloat16, torch.float32
    return [
        Case("xl_n1_bf16_1d", 1, 256, 1152, bf16, compile_priority=5),
        Case("xl_n8_bf16_1d", 8, 256, 1152, bf16, compile_priority=4),
        Case("xl_n128_bf16_1d", 128, 256, 1152, bf16, compile_priority=0, headline=True),
        Case("xl_n128_bf16_2d", 128, 256, 1152, bf16, XL_2D, compile_priority=2),
        Case("emb_n64_fp32_2d", 64, 196, EMB_C, fp32, EMB_2D),
        Case("emb_n1024_fp32_1d", 1024, 196, EMB_C, fp32, compile_priority=3),
        Case("emb_n1024_bf16_1d", 1024, 196, EMB_C, bf16),
        Case("emb_n1024_fp32_2d", 1024, 196, EMB_C, fp32, EMB_2D, compile_priority=1),
        Case("emb_n1024_bf16_2d", 1024, 196, EMB_C, bf16, EMB_2D, compile_priority=6),
    ]


def smoke_cases() -> list[Case]:
    """Tiny shapes for the CPU interpreter; cutoffs leave at least 4 frequencies on each side."""
    return [
        Case("tiny_n2_bf16_1d", 2, 64, 48, torch.bfloat16, compile_priority=0, headline=True),
        Case("tiny_n2_fp32_2d", 2, 64, 40, torch.float32, StatsConfig(cutoff=0.5, hfr_dims=2, grid=(8, 8))),
    ]


def make_inputs(case: Case, device: torch.device, n_buffers: int, seed: int) -> list[torch.Tensor]:
    """``n_buffers`` distinct random inputs (a small per-sample mean, so hfr and hfr_centered differ)."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (case.n, case.length, case.channels)
    out = []
    for _ in range(n_buffers):
        x = torch.randn(shape, device=device, generator=g)
        x += 0.25 * torch.randn((case.n, 1, 1), device=device, generator=g)
        out.append(x.to(case.dtype))
    return out


def rotation_count(nbytes: int, device: torch.device, smoke: bool) -> int:
    """Buffers to rotate among: together at least 3x the L2, at most 512 and 6 GiB."""
    if smoke:
        return 2
    want = math.ceil(3 * l2_bytes(device) / nbytes)
    return max(2, min(want, 512, (6 << 30) // nbytes))


def _hfr_nobreak(x: torch.Tensor, high: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    if grid is None:
        spec = torch.fft.fft(x, dim=1)
    else:
        spec = torch.fft.fft2(x.reshape(x.shape[0], grid[0], grid[1], x.shape[2]), dim=(1, 2)).flatten(1, 2)
    power = torch.view_as_real(spec).square().sum(-1)  # [N, L, C] |X|^2 without complex abs
    e_total = power.sum(dim=(1, 2))
    e_high = (power * high[None, :, None]).sum(dim=(1, 2))
    return torch.where(e_total > 0, e_high / e_total, torch.full_like(e_total, float("nan")))


def reference_nobreak(x: torch.Tensor, high: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """The reference statistics rewritten without graph breaks (mask as a product, no Python checks).

    ``high`` is the float ``[L]`` high-frequency mask.  A stronger ``torch.compile`` baseline than
    ``reference_stats``, which breaks the graph on ``int(tensor)`` and boolean-mask indexing.
    """
    xf = x.float()
    logp = torch.log_softmax(xf, dim=2)
    return torch.stack([
        xf.mean(dim=(1, 2)), xf.square().mean(dim=(1, 2)), xf.var(dim=1).mean(dim=1),
        -(logp.exp() * logp).sum(dim=2).mean(dim=1),
        _hfr_nobreak(xf, high, grid), _hfr_nobreak(xf - xf.mean(dim=1, keepdim=True), high, grid),
    ], dim=1)


def _partial_reference(x: torch.Tensor) -> torch.Tensor:
    """The four non-FFT statistics (what inductor compiles when the FFT part fails)."""
    xf = x.float()
    logp = torch.log_softmax(xf, dim=2)
    return torch.stack([xf.mean(dim=(1, 2)), xf.square().mean(dim=(1, 2)), xf.var(dim=1).mean(dim=1),
                        -(logp.exp() * logp).sum(dim=2).mean(dim=1)], dim=1)


def _set_recompile_limit(limit: int) -> None:
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, limit)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


def compile_reference(case: Case, x: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """``torch.compile(reference_stats)`` for this case, first call included; partial fallback on failure."""
    info: dict[str, Any] = {}
    fn = torch.compile(reference_stats, dynamic=False)
    t0 = time.perf_counter()
    try:
        fn(x, case.config)
        sync(x.device)
        info.update(status="ok", compile_s=time.perf_counter() - t0)
        return (lambda y: fn(y, case.config)), info
    except Exception as exc:  # inductor cannot lower a complex FFT on some builds: compile what compiles
        info.update(status="failed", reason=_short(exc))
    from aselect_kernels.reference import _hfr_pair

    part = torch.compile(_partial_reference, dynamic=False)
    grid = case.config.resolve_grid(case.length)

    def partial(y: torch.Tensor) -> torch.Tensor:
        hfr, hfr_centered = _hfr_pair(y.float(), grid, case.config.cutoff)
        return torch.cat([part(y), hfr[:, None], hfr_centered[:, None]], dim=1)

    t0 = time.perf_counter()
    partial(x)
    sync(x.device)
    info.update(status="partial: non-FFT statistics compiled, hfr eager", compile_s=time.perf_counter() - t0)
    return partial, info


def explain_reference(case: Case, x: torch.Tensor) -> dict[str, Any]:
    """Graph and break counts of ``reference_stats`` under dynamo, with the first break reasons."""
    import torch._dynamo

    try:
        ex = torch._dynamo.explain(reference_stats)(x, case.config)
    except Exception as exc:
        return {"error": _short(exc)}
    reasons = [str(getattr(r, "reason", r)).strip().splitlines()[0][:200] for r in ex.break_reasons]
    return {"graph_count": ex.graph_count, "graph_break_count": ex.graph_break_count,
            "break_reasons": sorted(set(reasons))[:5]}


def max_errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float | bool]:
    """Per-statistic max |out - ref| / max(|ref|, 1) and whether the NaN patterns agree."""
    out, ref = out.double().cpu(), ref.double().cpu()
    nan_ok = bool(torch.equal(out.isnan(), ref.isnan()))
    err = ((out - ref).abs() / ref.abs().clamp(min=1.0)).nan_to_num(0.0)
    res: dict[str, float | bool] = {name: float(err[:, i].max()) for i, name in enumerate(STAT_NAMES)}
    res["nan_pattern_equal"] = nan_ok
    return res


def bench_kernel_case(case: Case, device: torch.device, smoke: bool, copy_gbps: float | None,
                      compile_enabled: bool) -> dict[str, Any]:
    """Time the fused kernel, the eager reference and the compiled reference on one case."""
    from aselect_kernels.ops.fused_stats import fused_stats

    n_buf = rotation_count(case.nbytes, device, smoke)
    xs = make_inputs(case, device, n_buf, seed=zlib.crc32(case.name.encode()))
    res: dict[str, Any] = case.describe()
    res["n_buffers"] = n_buf
    res["rotation_bytes"] = n_buf * case.nbytes
    cfg = case.config
    cuda = device.type == "cuda"
    budget = 40.0 if smoke else 300.0
    lo, hi = (2, 3) if smoke else (10, 300)

    def kernel(i: int) -> torch.Tensor:
        return fused_stats(xs[i], cfg)

    res["sanity_vs_reference_fp32"] = max_errors(kernel(0), reference_stats(xs[0], cfg))
    reps = adaptive_reps(kernel, n_buf, device, budget, lo, hi)
    res["kernel_launch"] = summary(time_calls(kernel, n_buf, device, warmup=3, reps=reps))
    if cuda:
        try:
            res["kernel_graph_ms"] = graph_call_ms(kernel, n_buf, device, replays=max(5, min(50, reps // n_buf + 5)))
        except Exception as exc:
            res["kernel_graph_ms"] = None
            res["kernel_graph_error"] = _short(exc)
    dev_ms = res.get("kernel_graph_ms") or res["kernel_launch"]["median_ms"]
    res["kernel_device_ms"] = dev_ms
    res["kernel_gbps"] = case.nbytes / dev_ms / 1e6
    res["kernel_gbps_launch"] = case.nbytes / res["kernel_launch"]["median_ms"] / 1e6
    if copy_gbps:
        res["kernel_pct_of_copy"] = 100.0 * res["kernel_gbps"] / copy_gbps
        res["kernel_pct_of_copy_launch"] = 100.0 * res["kernel_gbps_launch"] / copy_gbps

    def eager(i: int) -> torch.Tensor:
        return reference_stats(xs[i], cfg)

    reps = adaptive_reps(eager, n_buf, device, budget, lo, 50)
    res["eager"] = summary(time_calls(eager, n_buf, device, warmup=2, reps=reps))
    k_ms = res["kernel_launch"]["median_ms"]
    res["speedup_vs_eager"] = res["eager"]["median_ms"] / k_ms

    if compile_enabled:
        compiled, info = compile_reference(case, xs[0])
        res["compile"] = info
        res["compile_sanity"] = max_errors(compiled(xs[0]), reference_stats(xs[0], cfg))
        reps = adaptive_reps(lambda i: compiled(xs[i]), n_buf, device, budget, lo, 100)
        res["compiled"] = summary(time_calls(lambda i: compiled(xs[i]), n_buf, device, warmup=2, reps=reps))
        res["speedup_vs_compile"] = res["compiled"]["median_ms"] / k_ms
        if case.headline:
            res["compile"]["explain"] = explain_reference(case, xs[0])
            res["compile_nobreak"] = bench_nobreak(case, xs, device, budget, lo, k_ms)
    else:
        res["compile"] = {"status": "skipped (compile budget or not selected)"}
    return res


def bench_nobreak(case: Case, xs: list[torch.Tensor], device: torch.device, budget: float, lo: int,
                  kernel_ms: float) -> dict[str, Any]:
    """``torch.compile(reference_nobreak, fullgraph=True)``: the strongest compiled baseline, on the headline."""
    from aselect_kernels.frequency import high_frequency_mask

    grid = case.config.resolve_grid(case.length)
    high = high_frequency_mask(case.length, grid, case.config.cutoff).to(device=device, dtype=torch.float32)
    fn = torch.compile(reference_nobreak, fullgraph=True, dynamic=False)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        y = fn(xs[0], high, grid)
        sync(device)
    except Exception as exc:
        return {"status": "failed", "reason": _short(exc)}
    out.update(status="ok", compile_s=time.perf_counter() - t0,
               sanity=max_errors(y, reference_stats(xs[0], case.config)))
    reps = adaptive_reps(lambda i: fn(xs[i], high, grid), len(xs), device, budget, lo, 100)
    out["timing"] = summary(time_calls(lambda i: fn(xs[i], high, grid), len(xs), device, warmup=2, reps=reps))
    out["speedup"] = out["timing"]["median_ms"] / kernel_ms
    return out


# -------------------------------------------------------------------------------------------------- models


def PlainDiT(layers: int, heads: int, head_dim: int, in_channels: int, out_channels: int,  # noqa: N802
             sample_size: int, patch: int, classes: int) -> nn.Module:
    """The facebookresearch-style DiT of ``python/plain_dit_example.py`` at these sizes (``forward(x, t, y)``,
    taps ``blocks.i.attn`` / ``blocks.i.mlp``); it predicts ``in_channels`` (``out_channels`` is not used)."""
    sys.path.insert(0, str(REPO / "python"))
    from plain_dit_example import DiT

    return DiT(size=sample_size, patch=patch, channels=in_channels, dim=heads * head_dim, depth=layers, heads=heads,
               num_classes=classes)


@dataclass
class DitBundle:
    """A DiT-sized model with its call, inputs and the 56 (or 2 x layers) attention/MLP tap specs."""

    model: nn.Module
    kind: str  # "diffusers DiTTransformer2DModel" or "plain DiT (bench_stats.PlainDiT)"
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

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> object:
        if self.kind.startswith("diffusers"):
            return self.model(hidden_states=x, timestep=t, class_labels=y, return_dict=False)
        return self.model(x, t, y)


def diffusers_available() -> bool:
    """Whether diffusers imports (the device image has it only when its wheels are carried)."""
    try:
        import diffusers  # noqa: F401
    except Exception:
        return False
    return True


def build_dit(size: str, device: torch.device, dtype: torch.dtype, prefer: str = "auto", seed: int = 0) -> DitBundle:
    """DiT-XL/2 (``size="xl"``) or the smoke model (``"tiny"``), random weights, eval mode, on ``device``.

    ``prefer`` is ``"auto"`` (diffusers when importable), ``"diffusers"`` or ``"plain"``.  Taps: the
    ``attn_mlp`` preset for diffusers; explicit ``blocks.i.attn`` / ``blocks.i.mlp`` paths for the plain DiT.
    """
    s = DIT_SIZES[size]
    use_diffusers = prefer == "diffusers" or (prefer == "auto" and diffusers_available())
    torch.manual_seed(seed)
    with torch.device(device):
        if use_diffusers:
            from diffusers import DiTTransformer2DModel

            model = DiTTransformer2DModel(
                num_attention_heads=s["heads"], attention_head_dim=s["head_dim"], in_channels=s["in_channels"],
                out_channels=s["out_channels"], num_layers=s["layers"], sample_size=s["sample_size"],
                patch_size=s["patch"], num_embeds_ada_norm=s["classes"],
            )
            kind, taps = "diffusers DiTTransformer2DModel", resolve_taps(model, "attn_mlp")
        else:
            model = PlainDiT(s["layers"], s["heads"], s["head_dim"], s["in_channels"], s["out_channels"],
                             s["sample_size"], s["patch"], s["classes"])
            paths = [f"blocks.{i}.{part}" for i in range(s["layers"]) for part in ("attn", "mlp")]
            kind, taps = "plain DiT (bench_stats.PlainDiT)", resolve_taps(model, paths)
    model = nn.Module.to(model, device=device, dtype=dtype).eval()  # (diffusers' .to() warns on any cast)
    return DitBundle(model, kind, taps, s)


# ------------------------------------------------------------------------------------------------- forward


@contextlib.contextmanager
def scoring(bundle: DitBundle, variant: str, batch: int, backend: str) -> Iterator[TapSet | None]:
    """Hooks of one forward variant: ``unscored`` (none), ``eager_reference`` or ``fused``."""
    if variant == "unscored":
        yield None
        return
    tapset = (TapSet(bundle.model, bundle.taps, batch, backend="torch") if variant == "eager_reference"
              else TapSet(bundle.model, bundle.taps, batch, backend=backend))
    with tapset:
        tapset.rows = torch.arange(batch, device=next(bundle.model.parameters()).device)
        yield tapset


def bench_forward(device: torch.device, smoke: bool, prefer: str) -> dict[str, Any]:
    """Unscored vs eager-reference hooks vs fused taps on the DiT forward: times, overheads, peak memory."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size, batch = ("tiny", 4) if smoke else ("xl", 128)
    backend = "triton" if smoke else "auto"  # smoke: the kernel under the interpreter; GPU: the dispatcher
    t0 = time.perf_counter()
    bundle = build_dit(size, device, dtype, prefer)
    build_s = time.perf_counter() - t0
    x, t, y = bundle.inputs(batch, device, dtype)
    res: dict[str, Any] = {
        "model": bundle.kind, "size": size, "sizes": bundle.sizes, "batch": batch, "dtype": str(dtype),
        "tokens": (bundle.sizes["sample_size"] // bundle.sizes["patch"]) ** 2,
        "hidden": bundle.sizes["heads"] * bundle.sizes["head_dim"], "n_taps": len(bundle.taps),
        "taps": [s.name for s in bundle.taps], "fused_backend": backend, "build_s": build_s,
        "params": sum(p.numel() for p in bundle.model.parameters()),
    }
    variants = ("unscored", "eager_reference", "fused")
    warmup, rounds = (1, 2) if smoke else (2, 7)
    times: dict[str, list[float]] = {v: [] for v in variants}
    stats: dict[str, dict[str, torch.Tensor]] = {}

    def run(v: str) -> None:
        with nvtx_range(f"aselect.chunk0.{v}", device.type == "cuda"):
            bundle(x, t, y)

    with torch.no_grad():
        for v in variants:  # warm-up (kernel JIT, cuBLAS/cuFFT plans) and the statistics kept for a check
            with scoring(bundle, v, batch, backend) as ts:
                for _ in range(warmup):
                    run(v)
                sync(device)
                if ts is not None:
                    stats[v] = ts.collect()
        for _ in range(rounds):  # interleaved rounds, so drift hits every variant alike
            for v in variants:
                with scoring(bundle, v, batch, backend):
                    times[v] += time_calls(lambda _, v=v: run(v), 1, device, warmup=0, reps=1)
        peaks: dict[str, int | None] = {}
        for v in variants:
            with scoring(bundle, v, batch, backend):
                run(v)
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                    run(v)
                    sync(device)
                    peaks[v] = torch.cuda.max_memory_allocated(device)
                    res.setdefault("allocated_before_bytes", {})[v] = base
                else:
                    peaks[v] = None
    base_ms = statistics.median(times["unscored"])
    for v in variants:
        entry: dict[str, Any] = summary(times[v])
        entry["times_ms"] = times[v]
        entry["peak_bytes"] = peaks[v]
        entry["overhead_pct"] = 100.0 * (entry["median_ms"] - base_ms) / base_ms
        if peaks[v] is not None and peaks["unscored"]:
            entry["extra_peak_pct"] = 100.0 * (peaks[v] - peaks["unscored"]) / peaks["unscored"]
        res[v] = entry
    ref, fus = stats["eager_reference"], stats["fused"]
    res["fused_vs_reference_taps"] = {
        "max_rel_err": max(max(v for k, v in max_errors(fus[n], ref[n]).items() if k != "nan_pattern_equal")
                           for n in ref),
        "nan_patterns_equal": all(bool(max_errors(fus[n], ref[n])["nan_pattern_equal"]) for n in ref),
    }
    return res


# -------------------------------------------------------------------------------------------------- targets


def evaluate_targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's value (headline kernel case; the fused forward), threshold, met/missed and margin."""
    head = next((c for c in report.get("kernel", {}).get("cases", []) if c.get("headline")), {})
    fwd = report.get("forward", {})
    values = {
        "fused_pct_of_copy": head.get("kernel_pct_of_copy"),
        "speedup_vs_compile": head.get("speedup_vs_compile"),
        "speedup_vs_eager": head.get("speedup_vs_eager"),
        "forward_overhead_pct": fwd.get("fused", {}).get("overhead_pct"),
        "extra_peak_memory_pct": fwd.get("fused", {}).get("extra_peak_pct"),
    }
    out = {}
    for name, (op, thr, unit) in TARGETS.items():
        v = values[name]
        entry: dict[str, Any] = {"target": f"{op} {thr:g}{unit}", "value": v, "unit": unit}
        if v is None:
            entry.update(met=None, margin=None, note="not measured")
        else:
            met = v >= thr if op == ">=" else v <= thr
            entry.update(met=met, margin=(v - thr) if op == ">=" else (thr - v))  # > 0: met by that much
            if unit == "x" or name == "fused_pct_of_copy":
                entry["ratio_to_target"] = v / thr
        out[name] = entry
    return out


# ---------------------------------------------------------------------------------------------------- report


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_tables(report: dict[str, Any]) -> None:
    """The human-readable summary (printed last: the device tool returns the end of the output)."""
    env = report["env"]
    print(f"\n== {env.get('device')} | torch {env['torch']} | triton {env.get('triton')} | "
          f"diffusers {env.get('diffusers')}{' | SMOKE (not performance)' if env['smoke'] else ''}")
    cp = report.get("copy")
    if cp:
        print(f"copy {cp['copy_gbps']:.0f} GB/s (read+write, {cp['bytes'] / 2**20:.0f} MiB); "
              f"read-only reduction {cp['read_gbps']:.0f} GB/s")
    cases = report.get("kernel", {}).get("cases", [])
    if cases:
        print(f"{'case':22} {'shape':>18} {'dtype':>9} {'launch us':>10} {'graph us':>9} {'GB/s':>7} "
              f"{'%copy':>6} {'eager us':>10} {'compile us':>11} {'x eager':>8} {'x comp':>7}")
        for c in cases:
            if "eager" not in c:
                print(f"{c['name']:22} ERROR: {str(c.get('error', 'incomplete')).strip().splitlines()[-1][:90]}")
                continue
            g = c.get("kernel_graph_ms")
            print(f"{c['name']:22} {'x'.join(map(str, c['shape'])):>18} {c['dtype'].replace('torch.', ''):>9} "
                  f"{c['kernel_launch']['median_ms'] * 1e3:10.1f} {_fmt(g * 1e3 if g else None):>9} "
                  f"{c['kernel_gbps']:7.0f} {_fmt(c.get('kernel_pct_of_copy')):>6} "
                  f"{c['eager']['median_ms'] * 1e3:10.1f} "
                  f"{_fmt(c['compiled']['median_ms'] * 1e3 if 'compiled' in c else None):>11} "
                  f"{c['speedup_vs_eager']:8.1f} {_fmt(c.get('speedup_vs_compile')):>7}")
            nb = c.get("compile_nobreak", {})
            if "timing" in nb:
                print(f"{'':22} graph-break-free reference, fullgraph compile: {nb['timing']['median_ms'] * 1e3:.1f} us"
                      f" (kernel {nb['speedup']:.1f}x faster)")
    for key in ("forward", "forward_plain"):
        fwd = report.get(key)
        if not fwd or "unscored" not in fwd:
            continue
        print(f"{key}: {fwd['model']}, {fwd['size']}, batch {fwd['batch']}, {fwd['n_taps']} taps, {fwd['dtype']}, "
              f"fused vs reference taps max rel err {fwd['fused_vs_reference_taps']['max_rel_err']:.1e}")
        for v in ("unscored", "eager_reference", "fused"):
            e = fwd[v]
            pk = e.get("peak_bytes")
            print(f"  {v:16} {e['median_ms']:9.2f} ms  overhead {e['overhead_pct']:7.2f}%  "
                  f"peak {_fmt(pk / 2**30 if pk else None, '.3f')} GiB  extra {_fmt(e.get('extra_peak_pct'), '.2f')}%")
    for name, t in report.get("targets", {}).items():
        state = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"target {name:24} {t['target']:>8}  value {_fmt(t['value'], '.2f'):>9}  {state:6} "
              f"margin {_fmt(t['margin'], '+.2f')}")
    for name, err in report.get("errors", {}).items():
        print(f"ERROR in {name}: {err.splitlines()[-1]}")


def save(report: dict[str, Any], path: Path | None) -> None:
    """Write the JSON report (after every section)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for <device-slug>.json (default bench/results; --smoke: none)")
    parser.add_argument("--sections", default="copy,kernel,forward", help="comma list of copy,kernel,forward")
    parser.add_argument("--model", choices=("auto", "diffusers", "plain"), default="auto")
    parser.add_argument("--compile-budget-s", type=float, default=90.0,
                        help="stop compiling new kernel cases once torch.compile has used this much wall time")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile baselines")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernel module
        torch.set_num_threads(min(2, torch.get_num_threads()))
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke for the CPU check")
    device = torch.device("cpu") if args.smoke else torch.device("cuda", torch.cuda.current_device())
    out_dir = args.out if args.out is not None else (None if args.smoke else REPO / "bench" / "results")
    env = env_info(device, args.smoke)
    slug = "smoke-cpu" if args.smoke else slugify(env["device"])
    path = out_dir / f"{slug}.json" if out_dir is not None else None
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    report: dict[str, Any] = {"env": env, "targets_spec": TARGETS, "errors": {}}
    _set_recompile_limit(64)
    t_start = time.perf_counter()

    def section(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            report[name] = fn()
        except Exception:
            report["errors"][name] = traceback.format_exc()
            print(report["errors"][name], file=sys.stderr, flush=True)
        report.setdefault("section_s", {})[name] = time.perf_counter() - t0
        report["targets"] = evaluate_targets(report)
        save(report, path)

    if "copy" in sections:
        section("copy", lambda: bench_copy(device, args.smoke))
    if "kernel" in sections:
        copy_gbps = report.get("copy", {}).get("copy_gbps") if not args.smoke else None

        def kernels() -> dict[str, Any]:
            cases = smoke_cases() if args.smoke else gpu_cases()
            order = sorted((c for c in cases if c.compile_priority is not None), key=lambda c: c.compile_priority)
            chosen = {order[0].name} if args.smoke else {c.name for c in order}
            out: dict[str, Any] = {"cases": []}
            report["kernel"] = out
            spent = 0.0
            for c in cases:
                want = not args.no_compile and c.name in chosen and (spent < args.compile_budget_s or c.headline)
                print(f"[bench]   {c.name} (compile: {want})", flush=True)
                try:
                    r = bench_kernel_case(c, device, args.smoke, copy_gbps, want)
                except Exception:
                    r = {**c.describe(), "error": traceback.format_exc()}
                    print(r["error"], file=sys.stderr, flush=True)
                spent += r.get("compile", {}).get("compile_s", 0.0) + r.get("compile_nobreak", {}).get("compile_s", 0)
                out["cases"].append(r)
                save(report, path)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            out["compile_wall_s"] = spent
            return out

        section("kernel", kernels)
    if "forward" in sections:
        section("forward", lambda: bench_forward(device, args.smoke, args.model))
        if args.smoke and args.model == "auto" and diffusers_available():  # smoke: the fallback model's path too
            section("forward_plain", lambda: bench_forward(device, args.smoke, "plain"))
    report["total_s"] = time.perf_counter() - t_start
    report["targets"] = evaluate_targets(report)
    save(report, path)
    print_tables(report)
    if path is not None:
        print(f"[bench] wrote {path}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
