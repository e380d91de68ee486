"""Side-by-side benchmark of the fused A-SelecT statistics on one card, in one run.

``python bench/bench_stats.py [--smoke] [--out DIR] [--sections ...] [--budget-s S]``

Sections, in the order they run (each figure is a median; inputs are random, never zeros, and rotate among
buffers that together exceed the L2):

* ``analysis``: the bytes and flops of the low-frequency projection: K (basis rows) of every kernel case, and the
  token count L at which the 1-D projection turns compute-bound against the ceilings measured below;
* ``ceilings``: device-to-device copy ((read + write bytes) / time) and read-only (a bf16 -> fp32 sum) bandwidth
  on a buffer far larger than the L2, and dense matmul throughput (bf16, tf32);
* ``checks``: the scored forward's contract on CUDA (:mod:`bench_forward`): overlapped taps equal plain taps
  bitwise, no host synchronisation inside a scored chunk, one scored chunk captured in a CUDA graph whose replay
  equals eager, an in-place change after a tap caught under overlap;
* ``kernel``: every statistics backend available (``triton``; ``cuda`` when the package has it) on the shapes of
  :func:`gpu_cases` (DiT-XL/2 ``[N, 256, 1152]`` for N = 1, 8, 128, 1024, 1-D and 2-D 16x16; ``[32, 1024, 1536]``
  2-D 32x32; ``[4, 4096, 3072]`` 2-D 64x64; the embedded model's ``[1024, 196, 96]`` and ``[1024, 196, 384]``).
  Device time is the median of CUDA-graph replays (launch time, CUDA events around each Python call, is kept
  too); GB/s count ``x`` read once, as a percentage of the read and of the copy ceilings.  The headline case also
  times the eager reference and ``torch.compile(reference_stats)``;
* ``forward_b128_56``, ``launch``, ``forward_b8_56``, ``forward_b128_140``: the DiT-XL/2-sized forward
  (:mod:`bench_forward`) and the host cost of launching one scored tap at N = 8 for each backend.

Then the targets, met or missed (:data:`TARGETS`).  ``--smoke`` runs every code path on the CPU with tiny shapes
(``TRITON_INTERPRET=1``).  JSON goes to ``<out>/<device-slug>.json`` (smoke: ``smoke-cpu.json``), rewritten after
each section so that a run cut short keeps what it measured; ``--budget-s`` skips the sections that no longer fit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (puts the repository root on sys.path)
    REPO,
    adaptive_reps,
    env_info,
    graph_call_ms,
    kernel_backends,
    l2_bytes,
    max_errors,
    rotation_count,
    slugify,
    summary,
    sync,
    time_calls,
)

from aselect_kernels.embedded.model import EMBEDDED_CONFIG  # noqa: E402
from aselect_kernels.frequency import band_counts  # noqa: E402
from aselect_kernels.reference import StatsConfig, reference_stats  # noqa: E402
from aselect_kernels.taps import TapSpec  # noqa: E402

#: Channels of the embedded model's taps (its hidden width) and of its MLP's hidden activations.
EMB_C = EMBEDDED_CONFIG["num_attention_heads"] * EMBEDDED_CONFIG["attention_head_dim"]
EMB_HIDDEN = 4 * EMB_C

#: Targets: name -> (comparison, threshold, unit, what is measured).
TARGETS: dict[str, tuple[str, float, str, str]] = {
    "kernel_pct_of_read_headline": (">=", 80.0, "%", "fused stats [128, 256, 1152] bf16 1-D, best backend, % of "
                                                     "the read ceiling"),
    "kernel_min_pct_of_read_16mb": (">=", 60.0, "%", "lowest % of the read ceiling over the cases of >= 16 MB "
                                                     "(best backend per case)"),
    "forward_b128_56_overhead_pct": ("<=", 2.0, "%", "DiT-XL/2 bf16 batch 128, 56 attn+MLP taps, time over "
                                                     "unscored (best eager scored variant)"),
    "forward_b128_140_overhead_pct": ("<=", 5.0, "%", "same, all 140 taps of preset 'all'"),
    "forward_b8_56_overhead_pct": ("<=", 5.0, "%", "same, batch 8, 56 taps"),
    "extra_peak_memory_pct": ("<=", 1.0, "%", "extra peak memory of that variant, batch 128, 56 taps"),
    "stretch_forward_b128_56_overhead_pct": ("<=", 0.5, "%", "stretch: batch 128, 56 taps"),
}
#: Cases of at least this many bytes must reach 60 % of the read ceiling.
BIG_CASE_BYTES = 16 * 10**6

# -------------------------------------------------------------------------------------------------- ceilings


def bench_ceilings(device: torch.device, smoke: bool) -> dict[str, Any]:
    """Copy and read-only bandwidth on one large random buffer (several times the L2), and matmul throughput."""
    nbytes = (8 << 20) if smoke else max(1 << 30, 16 * l2_bytes(device))
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    reps = 3 if smoke else 30
    copy = summary(time_calls(lambda _: dst.copy_(src), 1, device, warmup=1 if smoke else 3, reps=reps))
    half = src.view(torch.bfloat16)  # same bytes, read once by a bf16 -> fp32 sum
    read = summary(time_calls(lambda _: half.sum(dtype=torch.float32), 1, device, warmup=2, reps=reps))
    out: dict[str, Any] = {
        "bytes": nbytes, "copy": copy, "read": read,
        "copy_gbps": 2 * nbytes / copy["median_ms"] / 1e6,
        "read_gbps": nbytes / read["median_ms"] / 1e6,
        "matmul_tflops": {},
    }
    n = 256 if smoke else 8192
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)):
        g = torch.Generator(device=device).manual_seed(1)
        a = torch.randn(n, n, device=device, generator=g).to(dtype)
        b = torch.randn(n, n, device=device, generator=g).to(dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = statistics.median(time_calls(lambda _, a=a, b=b: a @ b, 1, device, warmup=2,
                                              reps=3 if smoke else 10))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        out["matmul_tflops"][name] = 2 * n**3 / ms / 1e9
    return out


# -------------------------------------------------------------------------------------------------- analysis


def projection_intensity(length: int, grid: tuple[int, int] | None, cutoff: float, itemsize: int,
                         dots: int) -> dict[str, Any]:
    """K (low non-DC basis rows) and the projection's flops per byte of ``x``: ``2 K dots / itemsize``.

    The low-frequency energy is ``||B x||^2`` with ``B`` ``[K, L]``: each element of ``x`` meets each basis row
    once per dot (``dots`` = 2 when the basis is split into hi + lo halves of a 16-bit input dtype, else 1).
    """
    k = band_counts(length, grid, cutoff)[0]
    return {"L": length, "grid": list(grid) if grid else None, "K": k, "dots": dots,
            "flops_per_element": 2 * k * dots, "flops_per_byte": 2 * k * dots / itemsize}


def compute_bound_point(ridge: float, cutoff: float, itemsize: int, dots: int, max_length: int = 16384
                        ) -> int | None:
    """Smallest 1-D token count L whose projection intensity reaches ``ridge`` flops/byte (None up to max_length)."""
    lo, hi = 2, max_length
    if projection_intensity(hi, None, cutoff, itemsize, dots)["flops_per_byte"] < ridge:
        return None
    while lo < hi:  # K grows with L (the low band is a fixed fraction of it): bisect
        mid = (lo + hi) // 2
        if projection_intensity(mid, None, cutoff, itemsize, dots)["flops_per_byte"] >= ridge:
            hi = mid
        else:
            lo = mid + 1
    return lo


def analysis(cases: Sequence[Case], ceilings: dict[str, Any] | None) -> dict[str, Any]:
    """K and intensity of every case, the ridge points of the measured ceilings, and the 1-D compute-bound L."""
    out: dict[str, Any] = {"cases": {}, "note": (
        "flops/byte of the low-frequency projection alone (the moments and the entropy add a few flops per "
        "element); ridge = measured matmul flops / measured read bandwidth; above it the projection is "
        "compute-bound")}
    for c in cases:
        item = torch.empty((), dtype=c.dtype).element_size()
        out["cases"][c.name] = projection_intensity(c.length, c.config.resolve_grid(c.length), c.config.cutoff,
                                                    item, 2 if item == 2 else 1)
    if ceilings and ceilings.get("read_gbps"):
        read = ceilings["read_gbps"] * 1e9
        out["ridge_flops_per_byte"] = {k: v * 1e12 / read for k, v in ceilings["matmul_tflops"].items()}
        cutoff = StatsConfig().cutoff
        out["compute_bound_1d"] = {
            f"{name}_dots{dots}": {"ridge": ridge, "dots": dots,
                                   "first_L": compute_bound_point(ridge, cutoff, 2, dots)}
            for name, ridge in out["ridge_flops_per_byte"].items() for dots in (1, 2)
        }
        for c in cases:
            entry = out["cases"][c.name]
            entry["compute_bound_vs_bf16_mma"] = entry["flops_per_byte"] >= out["ridge_flops_per_byte"]["bf16"]
    return out


# ---------------------------------------------------------------------------------------------------- kernel


@dataclass
class Case:
    """One input shape for the statistics: ``[n, length, channels]`` of ``dtype`` under ``config``."""

    name: str
    n: int
    length: int
    channels: int
    dtype: torch.dtype
    config: StatsConfig = field(default_factory=StatsConfig)
    headline: bool = False

    @property
    def nbytes(self) -> int:
        return self.n * self.length * self.channels * torch.empty((), dtype=self.dtype).element_size()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [self.n, self.length, self.channels], "dtype": str(self.dtype),
                "config": asdict(self.config), "bytes_read": self.nbytes, "headline": self.headline}


def _grid(side: int) -> StatsConfig:
    return StatsConfig(hfr_dims=2, grid=(side, side))


def gpu_cases() -> list[Case]:
    """The kernel cases, headline first."""
    bf16, fp32 = torch.bfloat16, torch.float32
    xl = [Case(f"xl_n{n}_bf16_{d}d", n, 256, 1152, bf16, _grid(16) if d == 2 else StatsConfig())
          for d in (1, 2) for n in (1, 8, 128, 1024)]
    head = next(c for c in xl if c.name == "xl_n128_bf16_1d")
    head.headline = True
    return [head] + [c for c in xl if c is not head] + [
        Case("sd3_n32_bf16_2d", 32, 1024, 1536, bf16, _grid(32)),  # SD3 / PixArt at 512 px
        Case("flux_n4_bf16_2d", 4, 4096, 3072, bf16, _grid(64)),  # Flux at 1024 px
        Case("emb_n1024_fp32_1d", 1024, 196, EMB_C, fp32),
        Case("emb_n1024_fp32_2d", 1024, 196, EMB_C, fp32, _grid(14)),
        Case("emb_hidden_n1024_fp32_1d", 1024, 196, EMB_HIDDEN, fp32),
        Case("emb_hidden_n1024_bf16_1d", 1024, 196, EMB_HIDDEN, bf16),
    ]


def smoke_cases() -> list[Case]:
    """Tiny shapes for the CPU interpreter; cutoffs leave at least 4 frequencies on each side."""
    return [
        Case("tiny_n2_bf16_1d", 2, 64, 48, torch.bfloat16, headline=True),
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


def time_backend(fn: Callable[[int], torch.Tensor], case: Case, n_buf: int, device: torch.device, smoke: bool,
                 ceilings: dict[str, Any] | None) -> dict[str, Any]:
    """Launch and graph-replay time of ``fn`` over the rotated inputs, GB/s and % of the ceilings."""
    budget, lo, hi = (40.0, 2, 3) if smoke else (150.0, 10, 200)
    res: dict[str, Any] = {}
    reps = adaptive_reps(fn, n_buf, device, budget, lo, hi)
    res["launch"] = summary(time_calls(fn, n_buf, device, warmup=3, reps=reps))
    if device.type == "cuda":
        try:
            res["graph_ms"] = graph_call_ms(fn, n_buf, device, replays=max(5, min(30, reps // n_buf + 5)))
        except Exception as exc:
            res["graph_ms"], res["graph_error"] = None, _short(exc)
    res["device_ms"] = res.get("graph_ms") or res["launch"]["median_ms"]
    res["gbps"] = case.nbytes / res["device_ms"] / 1e6
    for ceiling in ("read", "copy"):
        if ceilings and ceilings.get(f"{ceiling}_gbps"):
            res[f"pct_of_{ceiling}"] = 100.0 * res["gbps"] / ceilings[f"{ceiling}_gbps"]
    return res


def bench_kernel_case(case: Case, device: torch.device, smoke: bool, ceilings: dict[str, Any] | None,
                      backends: Sequence[str], compile_enabled: bool) -> dict[str, Any]:
    """Every backend on one case (checked against the reference first); eager and compiled reference on the
    headline."""
    from aselect_kernels.stats import compute_stats

    n_buf = rotation_count(case.nbytes, device, smoke)
    xs = make_inputs(case, device, n_buf, seed=zlib.crc32(case.name.encode()))
    res: dict[str, Any] = {**case.describe(), "n_buffers": n_buf, "rotation_bytes": n_buf * case.nbytes,
                           "backends": {}}
    cfg = case.config
    ref = reference_stats(xs[0], cfg)
    for backend in backends:
        def kernel(i: int, backend: str = backend) -> torch.Tensor:
            return compute_stats(xs[i], cfg, backend)

        try:
            entry = {"sanity_vs_reference": max_errors(kernel(0), ref)}
            entry.update(time_backend(kernel, case, n_buf, device, smoke, ceilings))
        except Exception:
            entry = {"error": traceback.format_exc()}
            print(entry["error"], file=sys.stderr, flush=True)
        res["backends"][backend] = entry
    timed = {b: e for b, e in res["backends"].items() if "device_ms" in e}
    if timed:
        res["best_backend"] = min(timed, key=lambda b: timed[b]["device_ms"])
    if case.headline:
        budget, lo = (40.0, 2) if smoke else (150.0, 10)
        def eager(i: int) -> torch.Tensor:
            return reference_stats(xs[i], cfg)

        res["eager"] = summary(time_calls(eager, n_buf, device, warmup=2,
                                          reps=adaptive_reps(eager, n_buf, device, budget, lo, 30)))
        if compile_enabled:
            compiled, info = compile_reference(case, xs[0])
            res["compile"] = info
            res["compile_sanity"] = max_errors(compiled(xs[0]), ref)
            res["compiled"] = summary(time_calls(lambda i: compiled(xs[i]), n_buf, device, warmup=2,
                                                 reps=adaptive_reps(lambda i: compiled(xs[i]), n_buf, device,
                                                                    budget, lo, 50)))
        for e in timed.values():
            e["speedup_vs_eager"] = res["eager"]["median_ms"] / e["launch"]["median_ms"]
            if "compiled" in res:
                e["speedup_vs_compile"] = res["compiled"]["median_ms"] / e["launch"]["median_ms"]
    return res


# ---------------------------------------------------------------------------------------------------- launch


def bench_launch(device: torch.device, smoke: bool, backends: Sequence[str]) -> dict[str, Any]:
    """Host microseconds to launch one scored tap at N = 8, ``[8, 256, 1152]`` bf16 (smoke: a tiny shape).

    Per backend: ``compute_stats`` itself, and the whole tap hook (:class:`~aselect_kernels.taps.TapSet` on an
    ``nn.Identity``: selection, statistics and the row write), plain and overlapped; for ``triton`` also
    ``torch.ops.aselect.sample_stats`` (the dispatcher path that ``torch.compile`` uses).  Each figure is the
    median over 5 batches of calls timed on the host with no synchronisation inside a batch; ``device_us`` is the
    graph-replay time of the same call, for comparison.
    """
    from aselect_kernels.ops.custom_op import config_to_args
    from aselect_kernels.stats import compute_stats
    from aselect_kernels.taps import TapSet

    shape, dtype = ((8, 64, 48), torch.float32) if smoke else ((8, 256, 1152), torch.bfloat16)
    x = torch.randn(shape, device=device, generator=torch.Generator(device=device).manual_seed(8)).to(dtype)
    cfg = StatsConfig()
    calls = 1 if smoke else 200
    holder = nn.ModuleDict({"tap": nn.Identity()})
    rows = torch.arange(shape[0], device=device)

    def host_us(fn: Callable[[], object]) -> dict[str, float]:
        for _ in range(1 if smoke else 2):
            fn()
        sync(device)
        batches = []
        for _ in range(1 if smoke else 5):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            batches.append((time.perf_counter() - t0) / calls * 1e6)
            sync(device)
        return {"median_us": statistics.median(batches), "min_us": min(batches), "calls": calls}

    out: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype), "backends": {}}
    op_args = config_to_args(cfg)
    for backend in backends:
        entry: dict[str, Any] = {}
        try:
            entry["compute_stats"] = host_us(lambda b=backend: compute_stats(x, cfg, b))
            for overlap in (False, True):
                with TapSet(holder, [TapSpec.parse("tap")], shape[0], backend=backend, overlap=overlap) as ts:

                    def one_forward(ts: TapSet = ts) -> None:
                        ts.rows = rows  # a new forward: a tap records one call per forward
                        holder["tap"](x)

                    entry["tap_overlapped" if overlap else "tap"] = host_us(one_forward)
                    ts.join()
            if backend == "triton":
                entry["torch_ops"] = host_us(lambda: torch.ops.aselect.sample_stats(x, *op_args))
            if device.type == "cuda":
                entry["device_us"] = 1e3 * graph_call_ms(lambda _, b=backend: compute_stats(x, cfg, b), 1, device, 20)
        except Exception:
            entry["error"] = traceback.format_exc()
            print(entry["error"], file=sys.stderr, flush=True)
        out["backends"][backend] = entry
    return out



# ---------------------------------------------------------------------------------------------- compile


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



# -------------------------------------------------------------------------------------------------- targets


def _kernel_pct(case: dict[str, Any]) -> tuple[float | None, str | None]:
    """% of the read ceiling of a case's best backend (and which)."""
    best = case.get("best_backend")
    if best is None:
        return None, None
    return case["backends"][best].get("pct_of_read"), best


def _forward_best(fwd: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The eager scored variant with the lowest time overhead (graph replay has its own baseline)."""
    scored = {v: e for v, e in fwd.get("variants", {}).items()
              if e.get("scored") and not e.get("graph") and v != "eager_reference" and "overhead_pct" in e}
    if not scored:
        return None, {}
    name = min(scored, key=lambda v: scored[v]["overhead_pct"])
    return name, scored[name]


def evaluate_targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of :data:`TARGETS`: its value, threshold, met/missed and margin (``met`` None: not measured)."""
    cases = [c for c in report.get("kernel", {}).get("cases", []) if "backends" in c]
    values: dict[str, tuple[float | None, dict[str, Any]]] = {}
    head = next((c for c in cases if c.get("headline")), None)
    pct, backend = _kernel_pct(head) if head else (None, None)
    values["kernel_pct_of_read_headline"] = (pct, {"case": head and head["name"], "backend": backend})
    big = [(c["name"], *_kernel_pct(c)) for c in cases if c["bytes_read"] >= BIG_CASE_BYTES]
    big = [b for b in big if b[1] is not None]
    worst = min(big, key=lambda b: b[1]) if big else None
    values["kernel_min_pct_of_read_16mb"] = (
        worst[1] if worst else None,
        {"case": worst[0], "backend": worst[2], "cases": len(big)} if worst else {})
    for key in ("b128_56", "b128_140", "b8_56"):
        variant, entry = _forward_best(report.get(f"forward_{key}", {}))
        values[f"forward_{key}_overhead_pct"] = (entry.get("overhead_pct"), {"variant": variant})
        if key == "b128_56":
            values["extra_peak_memory_pct"] = (entry.get("extra_peak_pct"), {"variant": variant})
            values["stretch_forward_b128_56_overhead_pct"] = (entry.get("overhead_pct"), {"variant": variant})
    out = {}
    for name, (op, thr, unit, what) in TARGETS.items():
        v, detail = values[name]
        entry: dict[str, Any] = {"target": f"{op} {thr:g}{unit}", "value": v, "unit": unit, "what": what, **detail}
        if v is None:
            entry.update(met=None, margin=None)
        else:
            entry.update(met=bool(v >= thr if op == ">=" else v <= thr), margin=(v - thr) if op == ">=" else thr - v)
        out[name] = entry
    return out


# ---------------------------------------------------------------------------------------------------- report


#: Keys every report has, and those every target entry has.
REPORT_KEYS = ("env", "targets", "targets_spec", "errors", "section_s")
TARGET_KEYS = ("target", "value", "unit", "met", "margin", "what")


def validate_report(report: dict[str, Any]) -> list[str]:
    """Problems with a report's structure (empty when it is well formed): what the summary and RESULTS.md read."""
    problems = [f"missing key {k!r}" for k in REPORT_KEYS if k not in report]
    for name in TARGETS:
        t = report.get("targets", {}).get(name)
        if t is None:
            problems.append(f"target {name!r} missing")
            continue
        problems += [f"target {name!r} lacks {k!r}" for k in TARGET_KEYS if k not in t]
        if t.get("met") is not None and not isinstance(t.get("value"), (int, float)):
            problems.append(f"target {name!r} is met/missed without a value")
    for c in report.get("kernel", {}).get("cases", []):
        if "backends" not in c:
            problems.append(f"kernel case {c.get('name')!r} has no backends")
            continue
        for b, e in c["backends"].items():
            if "error" not in e and not all(k in e for k in ("device_ms", "gbps", "launch")):
                problems.append(f"kernel case {c['name']!r} backend {b!r} lacks timings")
    for key in (k for k in report if k.startswith("forward_")):
        fwd = report[key]
        if "skipped" in fwd:
            continue
        if "unscored" not in fwd.get("variants", {}):
            problems.append(f"{key} has no unscored baseline")
        for v, e in fwd.get("variants", {}).items():
            if "error" not in e and "median_ms" not in e:
                problems.append(f"{key} variant {v!r} lacks a median")
    return problems


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_tables(report: dict[str, Any]) -> None:
    """The human-readable summary (printed last, so that the end of the log has it)."""
    env = report["env"]
    print(f"\n== {env.get('device')} | torch {env['torch']} | triton {env.get('triton')} | "
          f"diffusers {env.get('diffusers')}{' | SMOKE (not performance)' if env['smoke'] else ''}")
    ce = report.get("ceilings")
    if ce:
        print(f"ceilings: copy {ce['copy_gbps']:.0f} GB/s, read {ce['read_gbps']:.0f} GB/s "
              f"({ce['bytes'] / 2**20:.0f} MiB); matmul " +
              ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in ce["matmul_tflops"].items()))
    an = report.get("analysis", {})
    for key, v in an.get("compute_bound_1d", {}).items():
        print(f"1-D projection compute-bound from L = {v['first_L']} ({key}, ridge {v['ridge']:.0f} flop/B)")
    cases = report.get("kernel", {}).get("cases", [])
    if cases:
        print(f"{'case':26} {'shape':>16} {'K':>5} {'backend':>7} {'graph us':>9} {'launch us':>10} {'GB/s':>6} "
              f"{'%read':>6} {'%copy':>6}")
    for c in cases:
        k = an.get("cases", {}).get(c["name"], {}).get("K")
        for b, e in c.get("backends", {}).items():
            if "device_ms" not in e:
                print(f"{c['name']:26} {b:>7} ERROR {str(e.get('error', '')).strip().splitlines()[-1][:80]}")
                continue
            print(f"{c['name']:26} {'x'.join(map(str, c['shape'])):>16} {_fmt(k, 'd'):>5} {b:>7} "
                  f"{_fmt(e.get('graph_ms') and e['graph_ms'] * 1e3):>9} {e['launch']['median_ms'] * 1e3:10.1f} "
                  f"{e['gbps']:6.0f} {_fmt(e.get('pct_of_read')):>6} {_fmt(e.get('pct_of_copy')):>6}")
    for b, e in report.get("launch", {}).get("backends", {}).items():
        parts = [f"{k} {v['median_us']:.1f}" for k, v in e.items() if isinstance(v, dict)]
        print(f"launch host us, {b}: " + ", ".join(parts) + f"; device {_fmt(e.get('device_us'))}")
    for key in ("forward_b128_56", "forward_b8_56", "forward_b128_140"):
        fwd = report.get(key)
        if not fwd or "variants" not in fwd:
            continue
        print(f"{key}: {fwd['model']}, batch {fwd['batch']}, {fwd['n_taps']} taps, {fwd['dtype']}")
        for v, e in fwd["variants"].items():
            if "median_ms" not in e:
                print(f"  {v:18} ERROR {str(e.get('error', '')).strip().splitlines()[-1][:80]}")
                continue
            print(f"  {v:18} {e['median_ms']:9.2f} ms  overhead {_fmt(e.get('overhead_pct'), '7.2f')}%  "
                  f"extra peak {_fmt(e.get('extra_peak_pct'), '.3f')}%  equal {e.get('stats_equal', '-')}")
    for name, c in report.get("checks", {}).items():
        if isinstance(c, dict):
            print(f"check {name:28} {c.get('status')}")
    for name, t in report.get("targets", {}).items():
        state = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"target {name:38} {t['target']:>8}  value {_fmt(t['value'], '.2f'):>9}  {state:6} "
              f"margin {_fmt(t['margin'], '+.2f')}")
    for name, err in report.get("errors", {}).items():
        print(f"ERROR in {name}: {err.strip().splitlines()[-1]}")


def save(report: dict[str, Any], path: Path | None) -> None:
    """Write the JSON report (after every section)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


#: Sections in the order they run, and the seconds each is expected to need on an H100 (for ``--budget-s``).
SECTIONS: dict[str, float] = {"analysis": 1, "ceilings": 8, "checks": 20, "kernel": 90, "forward_b128_56": 40,
                              "launch": 10, "forward_b8_56": 15, "forward_b128_140": 45}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``--smoke`` selects the interpreter (before anything imports the kernel module)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for <device-slug>.json (default bench/results/<device-slug>; --smoke: none)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--model", choices=("auto", "diffusers", "plain"), default="auto")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip a section when less than its expected time is left of this many seconds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {list(SECTIONS)}")
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernel module
        torch.set_num_threads(1)  # tiny shapes: one thread is fastest, above all on a busy machine
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke for the CPU check")
    return args


class Run:
    """One benchmark run: its device, backends, cases, the report and where it is saved."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cpu") if args.smoke else torch.device("cuda", torch.cuda.current_device())
        env = env_info(self.device, args.smoke)
        slug = "smoke-cpu" if args.smoke else slugify(env["device"])
        out_dir = args.out if args.out is not None else (None if args.smoke else REPO / "bench" / "results" / slug)
        self.path = out_dir / f"{slug}.json" if out_dir is not None else None
        self.backends = kernel_backends()
        env["backends"] = self.backends
        self.report: dict[str, Any] = {"env": env, "targets_spec": TARGETS, "errors": {}, "section_s": {},
                                       "skipped": {}}
        self.cases = smoke_cases() if args.smoke else gpu_cases()

    def save(self) -> None:
        self.report["targets"] = evaluate_targets(self.report)
        save(self.report, self.path)

    def kernels(self) -> dict[str, Any]:
        """The ``kernel`` section: every case, saved after each."""
        out: dict[str, Any] = {"backends": self.backends, "cases": []}
        self.report["kernel"] = out
        for c in self.cases:
            print(f"[bench]   {c.name}", flush=True)
            try:
                r = bench_kernel_case(c, self.device, self.args.smoke, self.report.get("ceilings"), self.backends,
                                      c.headline and not self.args.no_compile)
            except Exception:
                r = {**c.describe(), "error": traceback.format_exc()}
                print(r["error"], file=sys.stderr, flush=True)
            out["cases"].append(r)
            self.save()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return out

    def runners(self) -> dict[str, Callable[[], Any]]:
        """Section name -> the call that measures it."""
        import bench_forward

        args, device, backends = self.args, self.device, self.backends
        runners: dict[str, Callable[[], Any]] = {
            "analysis": lambda: analysis(self.cases, self.report.get("ceilings")),
            "ceilings": lambda: bench_ceilings(device, args.smoke),
            "checks": lambda: bench_forward.run_checks(device, args.smoke, args.model, backends),
            "kernel": self.kernels,
            "launch": lambda: bench_launch(device, args.smoke, backends),
        }
        for key, (batch, preset) in bench_forward.FORWARD_CONFIGS.items():
            runners[f"forward_{key}"] = (lambda b=batch, p=preset: bench_forward.bench_forward(
                device, args.smoke, args.model, b, p, backends))
        return runners

    def run_sections(self) -> None:
        """Each section in order, skipped when the budget no longer fits it; the report saved after each."""
        runners, t_start = self.runners(), time.perf_counter()
        for name in self.args.sections:
            left = None if self.args.budget_s is None else self.args.budget_s - (time.perf_counter() - t_start)
            if left is not None and left < SECTIONS[name]:
                self.report["skipped"][name] = f"{left:.0f} s left of the budget, {SECTIONS[name]:.0f} s expected"
                print(f"[bench] {name} skipped: {self.report['skipped'][name]}", flush=True)
                continue
            t0 = time.perf_counter()
            print(f"[bench] {name} ...", flush=True)
            try:
                self.report[name] = runners[name]()
            except Exception:
                self.report["errors"][name] = traceback.format_exc()
                print(self.report["errors"][name], file=sys.stderr, flush=True)
            self.report["section_s"][name] = time.perf_counter() - t0
            if name == "ceilings" and "analysis" in self.report:  # the ridge points need the ceilings
                self.report["analysis"] = analysis(self.cases, self.report["ceilings"])
            self.save()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.report["total_s"] = time.perf_counter() - t_start


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    _set_recompile_limit(64)
    run.run_sections()
    run.report["schema_problems"] = validate_report(run.report)
    run.save()
    print_tables(run.report)
    if run.path is not None:
        print(f"[bench] wrote {run.path}")
    failed = [k for k, c in run.report.get("checks", {}).items()
              if isinstance(c, dict) and c.get("status") in ("FAILED", "ERROR")]
    return 1 if run.report["errors"] or run.report["schema_problems"] or failed else 0


if __name__ == "__main__":
    sys.exit(main())
