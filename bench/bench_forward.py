"""The scored DiT forward on one card: its overhead per scoring variant, and its contract on CUDA.

Driven by ``bench_stats.py`` (sections ``forward_*`` and ``checks``).  A *variant* is one way to run the forward:

* ``unscored``: no hooks;
* ``eager_reference``: taps scored by the PyTorch reference (``backend="torch"``);
* ``fused_<backend>``: taps scored by the fused kernel of that backend, on the current stream;
* ``overlapped_<backend>``: the same on a side stream (``TapSet(overlap=True)``), joined after the forward;
* ``unscored_graph``, ``fused_graph``, ``overlapped_graph``: one forward (with its taps, default backend)
  captured in a CUDA graph and replayed; their overhead is over ``unscored_graph``.

Times are medians of interleaved rounds (every variant once per round, so drift hits all alike).  Every scored
variant's statistics are compared with its eager twin: bitwise for overlap and graph replay, within tolerance
for the kernels against the reference.
"""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from common import DitBundle, build_dit, max_errors, nvtx_range, summary, sync, time_calls, worst_error
from torch import nn

from aselect_kernels.taps import TapSet, TapSpec

#: Forward configurations: name -> (batch, tap preset).  ``attn_mlp`` is 56 taps on DiT-XL/2, ``all`` 140.
FORWARD_CONFIGS: dict[str, tuple[int, str]] = {"b128_56": (128, "attn_mlp"), "b8_56": (8, "attn_mlp"),
                                               "b128_140": (128, "all")}
#: Interleaved rounds per batch size (small batches are short and noisier).
ROUNDS = {128: 7, 8: 15}

_MODELS: dict[tuple, DitBundle] = {}


def get_model(size: str, device: torch.device, dtype: torch.dtype, prefer: str) -> DitBundle:
    """:func:`common.build_dit`, built once per process and argument set."""
    key = (size, str(device), dtype, prefer)
    if key not in _MODELS:
        _MODELS[key] = build_dit(size, device, dtype, prefer)
    return _MODELS[key]


def stats_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bitwise equality of two collected statistic sets (NaN equal to NaN)."""
    return a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(7.25), b[k].nan_to_num(7.25)) for k in a)


def capture(fn: Callable[[], object], device: torch.device,
            rearm: Callable[[], AbstractContextManager] | None = None) -> torch.cuda.CUDAGraph | RehearsedGraph:
    """``fn`` captured in a CUDA graph, after two warm-up calls on a side stream (the usual recipe).

    ``fn`` runs three times, so a scored ``fn`` sets its :class:`~aselect_kernels.taps.TapSet`'s ``rows`` itself:
    each call is a new forward (a tap records one call per forward).  Off CUDA (the CPU rehearsal) the same three
    calls run eagerly and a :class:`RehearsedGraph` stands in for the graph; ``rearm`` gives the context (the taps
    hooked) its replays run in, as the captured kernels would.
    """
    if device.type != "cuda":
        for _ in range(3):
            fn()
        return RehearsedGraph(fn, rearm)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


class RehearsedGraph:
    """The CPU stand-in of a captured graph: :meth:`replay` calls the function again, inside ``rearm()``."""

    def __init__(self, fn: Callable[[], object], rearm: Callable[[], AbstractContextManager] | None) -> None:
        self.fn, self.rearm = fn, rearm or nullcontext

    def replay(self) -> None:
        with self.rearm():
            self.fn()


class Variant:
    """One way to run the forward: its taps (hooked only inside :meth:`active`), a call, and its statistics."""

    def __init__(self, name: str, bundle: DitBundle, taps: list[TapSpec], batch: int, inputs: tuple,
                 backend: str | None, overlap: bool = False, graph: bool = False) -> None:
        self.name, self.bundle, self.inputs, self.graph = name, bundle, inputs, graph
        self.scored = backend is not None
        self.rows = torch.arange(batch, device=inputs[0].device)
        self.tapset = (TapSet(bundle.model, taps, batch, backend=backend, overlap=overlap) if self.scored
                       else None)
        self._graph: torch.cuda.CUDAGraph | RehearsedGraph | None = None
        if graph:  # the graph keeps the kernels and the buffers: no hooks needed afterwards
            with self.active():
                self._graph = capture(self._eager, inputs[0].device, self._hooked)

    @contextmanager
    def active(self) -> Iterator[None]:
        """The taps hooked into the model (eager variants; a graph replays without hooks)."""
        if self.tapset is None or self._graph is not None:
            yield
            return
        with self._hooked():
            yield

    @contextmanager
    def _hooked(self) -> Iterator[None]:
        with self.tapset if self.tapset is not None else nullcontext():
            yield

    def _eager(self) -> None:
        if self.tapset is not None:
            self.tapset.rows = self.rows  # each call is a new forward
        with nvtx_range(f"aselect.variant.{self.name}", self.inputs[0].is_cuda):
            self.bundle(*self.inputs)
            if self.tapset is not None:
                self.tapset.join()

    def __call__(self) -> None:
        if self._graph is not None:
            self._graph.replay()
        else:
            self._eager()

    def stats(self) -> dict[str, torch.Tensor] | None:
        return None if self.tapset is None else self.tapset.collect()


def variant_specs(backends: Sequence[str], cuda: bool, smoke: bool) -> dict[str, dict[str, Any]]:
    """The variants to run: name -> Variant keyword arguments (and ``twin``, the variant it must equal)."""
    default = "auto"  # the CPU rehearsal: the kernel's CPU twin (matmul_stats), fast; its control flow is the point
    specs: dict[str, dict[str, Any]] = {"unscored": {"backend": None},
                                        "eager_reference": {"backend": "torch"}}
    for b in backends:
        specs[f"fused_{b}"] = {"backend": b}
    for b in backends:
        specs[f"overlapped_{b}"] = {"backend": b, "overlap": True, "twin": f"fused_{b}"}
    if cuda or smoke:  # the CPU rehearsal runs the captures' calls eagerly (:class:`RehearsedGraph`)
        specs["unscored_graph"] = {"backend": None, "graph": True}
        specs["fused_default"] = {"backend": default, "untimed": True}
        specs["fused_graph"] = {"backend": default, "graph": True, "twin": "fused_default"}
        specs["overlapped_graph"] = {"backend": default, "overlap": True, "graph": True, "twin": "fused_default"}
    return specs


def bench_forward(device: torch.device, smoke: bool, prefer: str, batch: int, preset: str,
                  backends: Sequence[str]) -> dict[str, Any]:
    """Every variant of :func:`variant_specs` on the DiT forward: times, overheads, peak memory, equality."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if smoke:  # tiny model; the small-batch config takes the plain DiT, so that both model paths run
        batch, prefer = (4, prefer) if batch > 8 else (2, "plain" if prefer == "auto" else prefer)
    bundle = get_model("tiny" if smoke else "xl", device, dtype, prefer)
    taps = bundle.taps_for(f"{preset}:1" if smoke and preset == "all" else preset)  # smoke: one block's 5
    inputs = bundle.inputs(batch, device, dtype)
    res: dict[str, Any] = {
        "model": bundle.kind, "sizes": bundle.sizes, "batch": batch, "dtype": str(dtype), "preset": preset,
        "tokens": (bundle.sizes["sample_size"] // bundle.sizes["patch"]) ** 2, "n_taps": len(taps),
        "params": sum(p.numel() for p in bundle.model.parameters()), "variants": {},
    }
    if not cuda:
        res["graph_variants"] = ("rehearsed: each capture's calls run eagerly (CUDA graphs need a GPU)" if smoke
                                 else "skipped: CUDA graphs need a GPU")
    specs = variant_specs(backends, cuda, smoke)
    rounds = 1 if smoke else ROUNDS.get(batch, 7)
    variants: dict[str, Variant] = {}
    stats: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, spec in specs.items():  # build, warm up (JIT, cuBLAS) and keep the statistics of one call
            kwargs = {k: v for k, v in spec.items() if k not in ("twin", "untimed")}
            try:
                v = Variant(name, bundle, taps, batch, inputs, **kwargs)
                with v.active():
                    v()
                sync(device)
                got = v.stats()
                if got is not None:
                    stats[name] = got
                if not spec.get("untimed"):
                    variants[name] = v
            except Exception:
                res["variants"][name] = {"error": traceback.format_exc()}
        times: dict[str, list[float]] = {n: [] for n in variants}
        for _ in range(rounds):
            for name, v in variants.items():
                with v.active():  # hooks registered outside the timed call
                    times[name] += time_calls(lambda _, v=v: v(), 1, device, warmup=0, reps=1)
        peaks = {name: peak_bytes(v, device) for name, v in variants.items() if not v.graph}
    for name, v in variants.items():
        base = "unscored_graph" if v.graph else "unscored"
        entry: dict[str, Any] = {**summary(times[name]), "times_ms": times[name], "scored": v.scored,
                                 "graph": v.graph, **specs[name]}
        if times.get(base):
            base_ms = statistics.median(times[base])
            entry["overhead_pct"] = 100.0 * (entry["median_ms"] - base_ms) / base_ms
            entry["overhead_ms"] = entry["median_ms"] - base_ms
        if peaks.get(name) is not None:
            entry["peak_bytes"] = peaks[name]
            if peaks.get("unscored"):
                entry["extra_peak_pct"] = 100.0 * (peaks[name] - peaks["unscored"]) / peaks["unscored"]
        twin = specs[name].get("twin")
        if name in stats and twin in stats:
            entry["stats_equal"] = stats_equal(stats[name], stats[twin])
        if name in stats and "eager_reference" in stats and name != "eager_reference":
            errs = [max_errors(stats[name][k], stats["eager_reference"][k]) for k in stats[name]]
            entry["max_rel_err_vs_reference"] = max(worst_error(e) for e in errs)
            entry["nan_patterns_equal_reference"] = all(bool(e["nan_pattern_equal"]) for e in errs)
        res["variants"][name] = entry
    return res


def peak_bytes(v: Variant, device: torch.device) -> int | None:
    """Peak allocated bytes during one call (CUDA only)."""
    if device.type != "cuda":
        return None
    with v.active():
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        v()
        sync(device)
    return torch.cuda.max_memory_allocated(device)


# ---------------------------------------------------------------------------------------------------- checks


class _InPlaceAfterTap(nn.Module):
    """A linear layer whose output the next step modifies in place (what overlap must refuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(32, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        y.mul_(2.0)
        return y


@contextmanager
def _sync_debug(mode: str, device: torch.device) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode(mode)`` inside the block on CUDA; nothing off CUDA (the CPU rehearsal)."""
    if device.type != "cuda":
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def _is_sync_error(exc: RuntimeError) -> bool:
    """Whether ``exc`` is the error of ``set_sync_debug_mode("error")`` (not, e.g., a tap's own error)."""
    return "synchroniz" in str(exc).lower()


def _status(ok: bool, **detail: Any) -> dict[str, Any]:
    return {"status": "PASSED" if ok else "FAILED", **detail}


#: Status of a check that ran on the CPU up to its CUDA calls (sync debug mode and graph capture stood in for).
REHEARSED = "REHEARSED (CPU: control flow only)"


def run_checks(device: torch.device, smoke: bool, prefer: str, backends: Sequence[str]) -> dict[str, Any]:
    """The scored forward's contract, on a small DiT: overlap equals plain, no host sync, graph capture, and
    an in-place change after a tap caught under overlap.  Off CUDA, ``smoke`` rehearses the no-sync and graph
    checks (same forwards and taps, no CUDA call: their status says so, or FAILED); the in-place check needs
    CUDA (overlap is a no-op on the CPU)."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    bundle = get_model("check" if cuda else "tiny", device, dtype, prefer)
    taps = bundle.taps_for("all")
    batch = 8 if cuda else 2
    x, t, y = bundle.inputs(batch, device, dtype)
    out: dict[str, Any] = {"model": bundle.kind, "n_taps": len(taps), "batch": batch}
    chosen = list(backends) + ([] if smoke else ["auto"])

    def scored(backend: str, overlap: bool, chunks: int = 2) -> dict[str, torch.Tensor]:
        with TapSet(bundle.model, taps, batch, backend=backend, overlap=overlap) as ts, torch.no_grad():
            for rows in torch.arange(batch, device=device).chunk(chunks):
                ts.rows = rows
                bundle(x[rows], t[rows], y[rows])
                ts.join()
            return ts.collect()

    for b in chosen:
        name = f"overlap_equals_plain_{b}"
        try:
            out[name] = _status(stats_equal(scored(b, True), scored(b, False)))
        except Exception:
            out[name] = {"status": "ERROR", "error": traceback.format_exc()}
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if cuda or smoke:  # the CPU rehearsal scores with "auto" (the CPU twin): its control flow is the point
        rehearsed = chosen if cuda else ["auto"]
        checks += [("no_host_sync", lambda: _check_no_sync(bundle, taps, x, t, y, rehearsed)),
                   ("graph_capture", lambda: _check_graph(bundle, taps, x, t, y, rehearsed))]
    if cuda:
        checks.append(("inplace_after_tap_detected", lambda: _check_inplace(device)))
    for name, fn in checks:
        try:
            out[name] = fn()
        except Exception:
            out[name] = {"status": "ERROR", "error": traceback.format_exc()}
        if not cuda and out[name]["status"] == "PASSED":
            out[name]["status"] = REHEARSED
    for name in ("no_host_sync", "graph_capture", "inplace_after_tap_detected"):
        out.setdefault(name, {"status": "skipped: needs CUDA"})
    return out


def _check_no_sync(bundle: DitBundle, taps: list[TapSpec], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                   backends: Sequence[str]) -> dict[str, Any]:
    """One scored chunk per backend and overlap setting under ``set_sync_debug_mode("error")``."""
    detail: dict[str, Any] = {}
    rows = torch.arange(x.shape[0], device=x.device)
    with torch.no_grad():
        try:
            with _sync_debug("error", x.device):
                bundle(x, t, y)
            detail["unscored"] = "no sync"
        except RuntimeError as exc:
            if not _is_sync_error(exc):
                raise
            return {"status": "INCONCLUSIVE: the model itself synchronises", "error": str(exc)[:300]}
        for b in backends:
            for overlap in (False, True):
                key = f"{b}{'_overlap' if overlap else ''}"
                with TapSet(bundle.model, taps, x.shape[0], backend=b, overlap=overlap) as ts:
                    ts.rows = rows
                    bundle(x, t, y)  # warm-up outside the check (kernel JIT may synchronise)
                    ts.join()
                    ts.rows = rows  # the checked call is a new forward
                    try:
                        with _sync_debug("error", x.device):
                            bundle(x, t, y)
                            ts.join()
                        detail[key] = "no sync"
                    except RuntimeError as exc:
                        if not _is_sync_error(exc):
                            raise
                        detail[key] = f"SYNC: {str(exc)[:200]}"
    return _status(all(v == "no sync" for v in detail.values()), **detail)


def _check_graph(bundle: DitBundle, taps: list[TapSpec], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                 backends: Sequence[str]) -> dict[str, Any]:
    """One scored chunk captured in a CUDA graph, replayed on new inputs copied into the captured ones: equal to
    eager on the same inputs."""
    detail: dict[str, Any] = {}
    x2 = torch.randn_like(x, dtype=torch.float32).to(x.dtype)
    rows = torch.arange(x.shape[0], device=x.device)
    for b in backends:
        for overlap in (False, True):
            key = f"{b}{'_overlap' if overlap else ''}"
            with torch.no_grad():
                with TapSet(bundle.model, taps, x.shape[0], backend=b) as ts:
                    ts.rows = rows
                    bundle(x2, t, y)
                    eager = ts.collect()
                xs = x.clone()
                ts = TapSet(bundle.model, taps, x.shape[0], backend=b, overlap=overlap)

                def chunk(ts: TapSet = ts, xs: torch.Tensor = xs) -> None:
                    ts.rows = rows  # each call (two warm-ups, the capture) is a new forward
                    bundle(xs, t, y)
                    ts.join()

                with ts:
                    graph = capture(chunk, x.device, rearm=lambda ts=ts: ts)
                xs.copy_(x2)
                graph.replay()
                detail[key] = "equal" if stats_equal(ts.collect(), eager) else "DIFFERENT"
                del graph
    return _status(all(v == "equal" for v in detail.values()), **detail)


def _check_inplace(device: torch.device) -> dict[str, Any]:
    """Overlap refuses a tap whose output is modified in place after the hook; plain scoring accepts it."""
    model = _InPlaceAfterTap().to(device)
    x = torch.randn(4, 16, 32, device=device)
    spec = [TapSpec.parse("lin")]
    with torch.no_grad():
        with TapSet(model, spec, 4) as ts:
            ts.rows = torch.arange(4, device=device)
            model(x)
            ts.collect()
        try:
            with TapSet(model, spec, 4, overlap=True) as ts:
                ts.rows = torch.arange(4, device=device)
                out = model(x)  # alive at the join: a tensor already freed cannot be checked
                ts.collect()
                del out
        except RuntimeError as exc:
            return _status("modified in place" in str(exc), message=str(exc)[:200])
    return _status(False, message="no error raised")
