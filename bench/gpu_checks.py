"""Correctness of a GPU statistics kernel (Triton, or the CUDA C++ kernel of csrc/) on the GPU, written as JSON.

``python bench/gpu_checks.py --out results.json [--smoke | --sanitizer] [--backend triton|cuda]``

``--backend`` picks the kernel under test: ``triton`` (default), :func:`~aselect_kernels.ops.fused_stats.fused_stats`,
or ``cuda``, :func:`~aselect_kernels.ops.cuda_stats.cuda_stats` (GPU only; built on first use).  Every check below
runs on the chosen kernel; the compile check runs with ``triton`` only (it exercises the custom op and the taps).

* ``accuracy``: :func:`~aselect_kernels.ops.fused_stats.fused_stats` against the float64 reference on fresh random
  inputs, fp32/fp16/bf16, awkward shapes (N=1, L=49 C=200, non-powers of two, 2-D non-square grids, several basis
  row blocks, a DC-dominated mean, a mean of 3000 on an odd L that leaks through the rounded basis (the CPU
  test's case), constant tokens that give NaN), strided views (token stride, transposed,
  channel and qkv slices) and N=1024 at ``[256, 1152]`` bf16.  ``fused_stats`` allocates its buffers itself and
  has no ``out=``: before each call the caching allocator is *poisoned* (blocks of the exact sizes the launcher
  will ask for are filled with NaN or a 1e30 sentinel and freed, so it hands them back), then the result must
  have the reference's NaN pattern and be within tolerance; ``poison_hit`` records whether the output really
  landed in a poisoned block.
* ``determinism``: two runs are bitwise equal, and a sample's result does not depend on its batch.
* ``dispatch``: ``compute_stats(x, backend="auto")`` (the custom op) equals the kernel bitwise where the backend
  table sends the shape to it; elsewhere ``compute_stats(x, backend=<kernel>)`` must.
* ``compile``: ``torch._dynamo.explain`` and ``torch.compile(fullgraph=True)`` of a small plain DiT with fused
  taps (:class:`~aselect_kernels.taps.TapSet`, backend ``auto``): graph breaks, and whether it runs and matches
  eager.

``--smoke`` runs a subset on the CPU under ``TRITON_INTERPRET=1`` (taps through the custom op's CPU reference,
compiled with the ``eager`` backend); ``--sanitizer`` a short GPU subset for ``compute-sanitizer``, e.g.::

    compute-sanitizer --tool memcheck --kernel-name kns=aselect_stats --error-exitcode 3 \
        python bench/gpu_checks.py --sanitizer --backend cuda --out memcheck.json
    compute-sanitizer --tool racecheck --kernel-name kns=aselect_stats --racecheck-report all --error-exitcode 3 \
        python bench/gpu_checks.py --sanitizer --backend cuda --out racecheck.json

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if "--smoke" in sys.argv:  # the interpreter must be chosen before anything imports Triton (common does)
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, PlainDiT, env_info, nvtx_range, sync  # noqa: E402

from aselect_kernels.ops import cuda_canary  # noqa: E402
from aselect_kernels.reference import STAT_NAMES, StatsConfig, reference_stats  # noqa: E402

#: fp32 unit roundoff, and the relative error of the rounded low-frequency basis per input dtype (see
#: tests/test_fused_stats.py: fp32 rounds B to 24 bits; fp16/bf16 split it into hi + lo halves of the input dtype).
U32 = 2.0**-24
BASIS_ERR = {torch.float32: 4 * 2.0**-24, torch.float16: 4 * 2.0**-21, torch.bfloat16: 4 * 2.0**-16}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: The CUDA kernel takes fp32 inputs through 3xTF32 (operands split into TF32 halves): about 2^-21 per product.
CUDA_OPERAND_ERR = {**BASIS_ERR, torch.float32: 4 * 2.0**-21}
KERNELS = ("triton", "cuda")


def tolerance(dtype: torch.dtype, length: int, channels: int, backend: str = "triton") -> float:
    """Relative tolerance: basis (and operand) rounding plus fp32 accumulation over the L*C terms of a sample."""
    return (CUDA_OPERAND_ERR if backend == "cuda" else BASIS_ERR)[dtype] + 8 * U32 * math.sqrt(length * channels)


def stats_fn(backend: str) -> Callable[[torch.Tensor, StatsConfig], torch.Tensor]:
    """The kernel under test."""
    if backend == "cuda":
        from aselect_kernels.ops.cuda_stats import cuda_stats

        return cuda_stats
    from aselect_kernels.ops.fused_stats import fused_stats

    return fused_stats


@dataclass
class Check:
    """One accuracy case: ``make(dtype, generator, device)`` returns the (possibly strided) input."""

    name: str
    n: int
    length: int
    channels: int
    config: StatsConfig = field(default_factory=StatsConfig)
    layout: str = "contiguous"  # contiguous | token_stride | transposed | channel_slice | qkv_slice | constant
    # | mean_leak
    offset: float = 0.0
    dtypes: tuple[torch.dtype, ...] = DTYPES

    def make(self, dtype: torch.dtype, g: torch.Generator, device: torch.device) -> torch.Tensor:
        n, length, c = self.n, self.length, self.channels

        def rnd(*shape: int) -> torch.Tensor:
            base = torch.randn(shape, generator=g, device=device) * 1.5 + self.offset
            base += 0.3 * torch.randn((shape[0],) + (1,) * (len(shape) - 1), generator=g, device=device)
            return base.to(dtype)

        if self.layout == "contiguous":
            return rnd(n, length, c)
        if self.layout == "token_stride":
            return rnd(n, 2 * length, c)[:, ::2, :]
        if self.layout == "transposed":
            return rnd(n, c, length).transpose(1, 2)
        if self.layout == "channel_slice":
            return rnd(n, length, c + 7)[:, :, 3:3 + c]
        if self.layout == "qkv_slice":
            return rnd(n, length, 3 * c)[..., c:2 * c]
        if self.layout == "mean_leak":  # tests/test_fused_stats.py's rounded-basis mean leak, at any shape
            tokens = torch.arange(length, dtype=torch.float64, device=device)
            wave = 8 * torch.cos(2 * math.pi * 2 * tokens / length)  # one low frequency shared by all channels
            noise = torch.randn(n, length, c, generator=g, device=device, dtype=torch.float64)
            return (self.offset + wave[None, :, None] + 4 * noise).to(dtype)
        if self.layout == "constant":  # every token equal (dyadic levels: the fp64 reference centres them exactly)
            levels = torch.randint(-12, 13, (n, 1, c), generator=g, device=device).float() / 4
            return levels.expand(n, length, c).contiguous().to(dtype)  # token_var 0, hfr 0, hfr_centered NaN
        raise ValueError(self.layout)


def checks(mode: str) -> list[Check]:
    """The accuracy cases of a mode: ``full`` (GPU), ``sanitizer`` (short GPU subset) or ``smoke`` (CPU)."""
    g68 = StatsConfig(cutoff=0.4, hfr_dims=2, grid=(6, 8))
    g57 = StatsConfig(cutoff=0.6, hfr_dims=2, grid=(5, 7))
    # Mean 3000 on an odd L: the rounded basis rows of a 16-bit input sum to ~5e-5, so without the rowsum
    # correction hfr_centered is off by about 3.6 tolerances (the CPU test's case); tests/test_gpu_run.py checks it.
    leak = Check("mean_leak_l63_c48", 2, 63, 48, StatsConfig(cutoff=0.3), layout="mean_leak", offset=3000.0)
    if mode == "smoke":
        return [
            leak,
            Check("n1_l49_c200_1d", 1, 49, 200),
            Check("grid6x8_c40_2d", 2, 48, 40, g68),
            Check("transposed_l64_c24", 2, 64, 24, layout="transposed"),
            Check("constant_tokens", 2, 64, 20, layout="constant", dtypes=(torch.float32,)),
        ]
    if mode == "sanitizer":
        return [
            Check("n1_l49_c200_1d", 1, 49, 200, dtypes=(torch.float32, torch.bfloat16)),
            Check(leak.name, 2, 63, 48, leak.config, layout="mean_leak", offset=3000.0, dtypes=(torch.bfloat16,)),
            Check("grid5x7_c24_2d", 2, 35, 24, g57, dtypes=(torch.float16,)),
            Check("transposed_l77_c1000", 2, 77, 1000, layout="transposed", dtypes=(torch.bfloat16,)),
            Check("l1024_c1152_1d_multik", 1, 1024, 1152, dtypes=(torch.bfloat16,)),
            Check("many_items_l40_c136", 320, 40, 136, dtypes=(torch.float32, torch.bfloat16)),
        ]
    bf16 = (torch.bfloat16,)
    return [
        Check("n1_l49_c200_1d", 1, 49, 200),
        Check("l100_c17_1d", 3, 100, 17),
        Check("l77_c1000_1d", 2, 77, 1000),
        Check("grid6x8_c40_2d", 2, 48, 40, g68),
        Check("grid5x7_c24_2d", 2, 35, 24, g57),
        Check("grid12x20_c96_2d", 3, 240, 96, StatsConfig(cutoff=0.3, hfr_dims=2, grid=(12, 20))),
        Check("square7x7_c33_2d", 2, 49, 33, StatsConfig(cutoff=0.5, hfr_dims=2)),
        Check("xl_l256_c1152_1d", 4, 256, 1152),
        Check("xl_l256_c1152_2d", 4, 256, 1152, StatsConfig(hfr_dims=2, grid=(16, 16))),
        Check("emb_l196_c128_1d", 8, 196, 128),
        Check("emb_l196_c128_2d", 8, 196, 128, StatsConfig(hfr_dims=2, grid=(14, 14))),
        Check("l1024_c1152_1d_multik", 2, 1024, 1152),
        Check("l1024_c1152_2d", 2, 1024, 1152, StatsConfig(hfr_dims=2, grid=(32, 32))),
        Check("dc_dominated_mean", 3, 64, 96, offset=30.0),
        leak,
        Check("constant_tokens", 2, 64, 40, layout="constant"),
        Check("token_stride_l98_c200", 2, 98, 200, layout="token_stride"),
        Check("transposed_l196_c128", 3, 196, 128, StatsConfig(hfr_dims=2, grid=(14, 14)), layout="transposed"),
        Check("channel_slice_l256_c200", 2, 256, 200, layout="channel_slice"),
        Check("qkv_slice_l256_c1152", 2, 256, 1152, layout="qkv_slice"),
        # many short items per persistent block: copies run ahead across items (2 tiles each, a ragged last
        # tile) and a partial last channel block; 1-D K = 6 (one row fragment)
        Check("many_items_l40_c136", 1536, 40, 136),
        # several basis passes (K = 150: 4 passes of 48 rows at 16 bits, 5 of 32 at fp32) with a ragged last tile
        # and a partial channel block, the basis streamed per tile
        Check("l1000_c200_1d_multipass", 2, 1000, 200),
        Check("xl_n1024_bf16_1d", 1024, 256, 1152, dtypes=bf16),
        Check("xl_n1024_bf16_2d", 1024, 256, 1152, StatsConfig(hfr_dims=2, grid=(16, 16)), dtypes=bf16),
    ]


def reference64(x: torch.Tensor, config: StatsConfig, chunk: int = 128) -> torch.Tensor:
    """The float64 reference, on ``x``'s device, in chunks of samples (bounded memory for N=1024)."""
    return torch.cat([reference_stats(x[i:i + chunk].double(), config, torch.float64)
                      for i in range(0, x.shape[0], chunk)]).cpu()


def compare(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, rtol: float) -> dict[str, Any]:
    """``|out - ref| <= rtol * scale`` per entry with the NaN pattern of ``ref`` (scales as in the unit tests)."""
    out = out.double().cpu()
    res: dict[str, Any] = {"shape_ok": tuple(out.shape) == tuple(ref.shape)}
    nan_equal = bool(torch.equal(out.isnan(), ref.isnan()))
    scale = ref.abs().clone()
    rms = torch.cat([x[i:i + 128].double().square().mean(dim=(1, 2)).sqrt().cpu() for i in range(0, x.shape[0], 128)])
    scale[:, 0] = torch.maximum(scale[:, 0], rms)
    scale[:, 3] = scale[:, 3].clamp(min=1.0)
    # the ratios' error is absolute too: E_high = E_centred - E_low is a difference of sums within rtol each
    # (tests/stats_checks.py, docs/STATISTICS.md "Accuracy")
    length = x.shape[1]
    scale[:, 4] += 2 * ((length - 1) / length * ref[:, 2] / ref[:, 1]).nan_to_num(0.0)  # E_centred / E_total
    scale[:, 5] += 2
    err = (out - ref).abs().masked_fill(ref.isnan(), 0.0).nan_to_num(nan=math.inf)
    rel = err / scale.clamp(min=1e-30)
    bad = err > rtol * scale.nan_to_num(0.0) + 1e-12
    res["max_rel_err"] = {name: float(rel[:, i].max()) for i, name in enumerate(STAT_NAMES)}
    res["bad_entries"] = int(bad.sum())
    res.update(nan_pattern_equal=nan_equal, finite_where_ref_finite=bool(out[~ref.isnan()].isfinite().all()),
               rtol=rtol)
    res["passed"] = bool(res["shape_ok"] and nan_equal and not bad.any() and res["finite_where_ref_finite"])
    return res


def block_plan(x: torch.Tensor, config: StatsConfig, backend: str = "triton") -> list[int]:
    """Bytes of the buffers the kernel allocates, in its order (Triton: partials, entropy states, tickets, output;
    CUDA: partials, entropy states, output)."""
    from aselect_kernels.ops import fused_stats as fused

    n, length, c = x.shape
    if backend == "cuda":  # csrc/aselect_stats.cu: 128-channel blocks, 4 partials and 3 states per (padded) token
        num_cb, padded = -(-c // 128), -(-length // 32) * 32
        return [n * num_cb * 4 * 4, n * num_cb * 3 * padded * 4, n * len(STAT_NAMES) * 4]
    tile = fused.kernel_tiling(length, c, config, x.dtype, fused.device_target(x.device))
    return fused.buffer_bytes(n, length, c, tile)


def poison_allocator(sizes: Sequence[int], device: torch.device, value: float) -> set[int]:
    """Fill freshly allocated blocks of these byte sizes with ``value`` and free them (the caching allocator hands
    them back to the next requests of the same sizes); returns their addresses."""
    blocks = [torch.full((max(1, s // 4),), value, dtype=torch.float32, device=device) for s in sizes]
    sync(device)
    ptrs = {b.data_ptr() for b in blocks}
    blocks.clear()
    return ptrs


def run_accuracy(device: torch.device, mode: str, results: list[dict[str, Any]] | None = None,
                 on_result: Callable[[], None] | None = None, backend: str = "triton") -> list[dict[str, Any]]:
    """Every accuracy case x dtype, with poisoned buffers, against the fp64 reference (appended to ``results``,
    ``on_result`` called after each, so a run cut short keeps what it checked)."""
    kernel = stats_fn(backend)
    results = [] if results is None else results
    k = 0
    for chk in checks(mode):
        for dtype in chk.dtypes:
            name = f"{chk.name}/{str(dtype).replace('torch.', '')}"
            seed = zlib.crc32(name.encode()) ^ int(time.time_ns() % (1 << 31))  # fresh inputs every run
            entry: dict[str, Any] = {"name": name, "shape": [chk.n, chk.length, chk.channels], "layout": chk.layout,
                                     "config": vars(chk.config), "seed": seed}
            try:
                g = torch.Generator(device=device).manual_seed(seed)
                x = chk.make(dtype, g, device)
                entry["strides"] = list(x.stride())
                ref = reference64(x, chk.config)
                poison = float("nan") if k % 2 == 0 else 1e30
                entry["poison"] = "nan" if k % 2 == 0 else "1e30"
                ptrs = poison_allocator(block_plan(x, chk.config, backend), device, poison)
                with nvtx_range(f"aselect.check.{name}", device.type == "cuda"):
                    out = kernel(x, chk.config)
                sync(device)
                entry["poison_hit"] = out.data_ptr() in ptrs if device.type == "cuda" else None
                entry.update(compare(out, ref, x, tolerance(dtype, chk.length, chk.channels, backend)))
                entry["output_dtype_ok"] = out.dtype == torch.float32 and out.device == x.device
                entry["passed"] = entry["passed"] and entry["output_dtype_ok"]
            except Exception:
                entry.update(passed=False, error=traceback.format_exc())
            k += 1
            results.append(entry)
            if on_result is not None:
                on_result()
            print(f"[checks] accuracy {name:40} {'ok' if entry['passed'] else 'FAIL'}"
                  f"{'' if entry.get('poison_hit') is None else ' (poison hit)' if entry['poison_hit'] else ''}",
                  flush=True)
    return results


def run_determinism(device: torch.device, mode: str, backend: str = "triton") -> list[dict[str, Any]]:
    """Bitwise repeatability, batch invariance and the dispatcher (custom op) path."""
    from aselect_kernels.ops.backend_table import choose_for
    from aselect_kernels.stats import compute_stats

    kernel = stats_fn(backend)
    shapes = [(8, 256, 1152, StatsConfig()), (64, 196, 128, StatsConfig(hfr_dims=2, grid=(14, 14)))]
    if mode == "smoke":
        shapes = [(3, 64, 40, StatsConfig())]
    elif mode == "full":
        shapes.append((1024, 256, 1152, StatsConfig()))
    out = []
    for n, length, c, cfg in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            name = f"{n}x{length}x{c}/{str(dtype).replace('torch.', '')}/{cfg.hfr_dims}d"
            entry: dict[str, Any] = {"name": name}
            try:
                g = torch.Generator(device=device).manual_seed(zlib.crc32(name.encode()) ^ time.time_ns() % 997)
                x = torch.randn(n, length, c, generator=g, device=device).to(dtype)
                a, b = kernel(x, cfg), kernel(x, cfg)
                part = kernel(x[1:2].clone(), cfg)
                if device.type == "cpu":
                    dispatch = "triton"
                else:  # "auto" where the table sends this shape to the kernel under test
                    dispatch = "auto" if choose_for(x, cfg.hfr_dims) == backend else backend
                via_op = compute_stats(x, cfg, backend=dispatch)
                entry.update(repeat_bitwise=bool(torch.equal(a, b)),
                             batch_invariant_bitwise=bool(torch.equal(part[0], a[1])),
                             dispatch_bitwise=bool(torch.equal(via_op, a)), dispatch_backend=dispatch)
                entry["passed"] = entry["repeat_bitwise"] and entry["batch_invariant_bitwise"] and entry[
                    "dispatch_bitwise"]
            except Exception:
                entry.update(passed=False, error=traceback.format_exc())
            print(f"[checks] determinism {name:34} {'ok' if entry['passed'] else 'FAIL'}", flush=True)
            out.append(entry)
    return out


def _op_stats(z: torch.Tensor) -> torch.Tensor:
    """The statistics through the custom op with the default config (cutoff 0.15, 1-D)."""
    return torch.ops.aselect.sample_stats(z, 0.15, 1, 0, 0)


@dataclass
class CompileCase:
    """The compile check's model, inputs and statistic path (:func:`compile_case`)."""

    model: torch.nn.Module
    taps: list
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    rows: torch.Tensor
    stat_fn: Callable[[torch.Tensor], torch.Tensor] | None  # None: TapSet's default, compute_stats("auto")
    backend: str  # the torch.compile backend
    info: dict[str, Any]


def compile_case(device: torch.device, batch: int = 8) -> CompileCase:
    """A small plain DiT (2 blocks, width 128) with its ``attn_mlp`` taps and random inputs.  On CUDA the taps
    score through ``TapSet(backend="auto")`` and compile with inductor; on the CPU the ``auto`` path is the eager
    reference (not one graph), so the custom op's CPU kernel is traced instead, with the ``eager`` backend."""
    from aselect_kernels.taps import resolve_taps

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = PlainDiT(layers=2, heads=4, head_dim=32, in_channels=4, out_channels=4, sample_size=16, patch=2,
                         classes=10)
    model = model.to(dtype).eval()
    taps = resolve_taps(model, "attn_mlp")
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, 4, 16, 16, generator=g, device=device).to(dtype)
    t = torch.randint(0, 1000, (batch,), generator=g, device=device)
    y = torch.randint(0, 10, (batch,), generator=g, device=device)
    info: dict[str, Any] = {"model": "PlainDiT 2 blocks, dim 128", "taps": [s.name for s in taps],
                            "dtype": str(dtype)}
    if cuda:
        stat_fn, backend = None, "inductor"
        info["stat_path"] = "TapSet(backend='auto') -> torch.ops.aselect.sample_stats"
    else:
        stat_fn, backend = _op_stats, "eager"
        info["stat_path"] = "torch.ops.aselect.sample_stats (CPU kernel: matmul_stats)"
    info["compile_backend"] = backend
    return CompileCase(model, taps, (x, t, y), torch.arange(batch, device=device), stat_fn, backend, info)


def scored_forwards(case: CompileCase, fn: Callable[..., object], calls: int = 1) -> dict[str, torch.Tensor]:
    """The taps' statistics after ``calls`` forwards of ``fn`` (the model, or its compiled form), each one a new
    forward of the same rows: ``rows`` is set before each (a tap records one call per forward)."""
    from aselect_kernels.taps import TapSet

    with TapSet(case.model, case.taps, case.rows.shape[0], stat_fn=case.stat_fn) as ts, torch.no_grad():
        for _ in range(calls):
            ts.rows = case.rows
            fn(*case.inputs)
        return ts.collect()


def explain_graphs(case: CompileCase) -> dict[str, Any]:
    """``torch._dynamo.explain`` of the scored forward: graphs, breaks and their first reasons."""
    import torch._dynamo

    from aselect_kernels.taps import TapSet

    torch._dynamo.reset()
    try:
        with TapSet(case.model, case.taps, case.rows.shape[0], stat_fn=case.stat_fn) as ts, torch.no_grad():
            ts.rows = case.rows
            ex = torch._dynamo.explain(case.model)(*case.inputs)
        return {"graph_count": ex.graph_count, "graph_break_count": ex.graph_break_count,
                "break_reasons": [str(getattr(r, "reason", r))[:300] for r in ex.break_reasons][:5]}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def compiled_vs_eager(case: CompileCase, eager: dict[str, torch.Tensor], cuda: bool) -> dict[str, Any]:
    """``torch.compile(fullgraph=True)`` of the model, called twice (the second call finds its buffers made:
    another guard set), against the eager statistics."""
    import torch._dynamo

    torch._dynamo.reset()
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(case.model, fullgraph=True, backend=case.backend)
        got = scored_forwards(case, compiled, calls=2)
        res["fullgraph"] = "ok"
        res["compile_s"] = time.perf_counter() - t0
        res["max_rel_diff_vs_eager"] = max(
            float(((got[k] - eager[k]).abs() / eager[k].abs().clamp(min=1.0)).nan_to_num(0.0).max()) for k in eager)
        res["nan_pattern_equal"] = all(torch.equal(got[k].isnan(), eager[k].isnan()) for k in eager)
        # bf16 activations: inductor's fused kernels round differently from eager, hence the loose GPU bound
        res["matches_eager"] = res["nan_pattern_equal"] and res["max_rel_diff_vs_eager"] <= (5e-2 if cuda else 1e-5)
    except Exception as exc:
        res["fullgraph"] = "failed"
        res["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        res["matches_eager"] = False
    return res


def run_compile(device: torch.device) -> dict[str, Any]:
    """Dynamo explain + ``torch.compile(fullgraph=True)`` of a small plain DiT with fused taps on all blocks."""
    case = compile_case(device)
    res = dict(case.info)
    eager = scored_forwards(case, case.model)
    res["explain"] = explain_graphs(case)
    res.update(compiled_vs_eager(case, eager, device.type == "cuda"))
    res["passed"] = res["fullgraph"] == "ok" and res["matches_eager"] and res.get("explain", {}).get(
        "graph_break_count", 1) == 0
    print(f"[checks] compile fullgraph: {res['fullgraph']}, explain {res.get('explain')}", flush=True)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="CPU subset under TRITON_INTERPRET=1")
    mode.add_argument("--sanitizer", action="store_true", help="short GPU subset, for compute-sanitizer")
    parser.add_argument("--backend", choices=KERNELS, default="triton", help="the kernel under test")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--sections", default="accuracy,determinism,compile",
                        help="comma list of accuracy, determinism, compile")
    args = parser.parse_args(argv)
    run_mode = "smoke" if args.smoke else "sanitizer" if args.sanitizer else "full"
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(min(2, torch.get_num_threads()))
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke for the CPU check")
    if args.smoke and args.backend == "cuda":
        parser.error("--backend cuda needs a CUDA device (tests/test_cuda_kernel.py checks its algorithm on the CPU)")
    device = torch.device("cpu") if args.smoke else torch.device("cuda", torch.cuda.current_device())
    report: dict[str, Any] = {"env": env_info(device, args.smoke), "mode": run_mode, "repo": str(REPO),
                              "backend": args.backend}
    t0 = time.perf_counter()

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")

    report["accuracy"] = []
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("accuracy", lambda: run_accuracy(device, run_mode, report["accuracy"], save, args.backend)),
        ("determinism", lambda: run_determinism(device, run_mode, args.backend)),
    ]
    if run_mode != "sanitizer" and not args.skip_compile and args.backend == "triton":
        sections.append(("compile", lambda: run_compile(device)))
    wanted = {name.strip() for name in args.sections.split(",")}
    sections = [(name, fn) for name, fn in sections if name in wanted]
    failed: list[str] = []
    for name, fn in sections:
        try:
            report[name] = fn()
        except Exception:
            report[name] = {"passed": False, "error": traceback.format_exc()}
        items = report[name] if isinstance(report[name], list) else [report[name]]
        failed += [f"{name}:{i.get('name', name)}" for i in items if not i.get("passed")]
        save()
    # auto's first-use checks of the CUDA kernel (instance -> None when it agreed with the reference, else why not)
    report["cuda_canary"] = {" ".join(map(str, key)): reason for key, reason in cuda_canary.verdicts().items()}
    failed += [f"cuda_canary:{key}" for key, reason in report["cuda_canary"].items() if reason is not None]
    acc = report.get("accuracy", [])
    hits = [a.get("poison_hit") for a in acc if isinstance(a, dict) and a.get("poison_hit") is not None]
    report["summary"] = {
        "passed": not failed, "failed": failed, "n_accuracy": len(acc),
        "poison_hits": f"{sum(hits)}/{len(hits)}" if hits else None, "wall_s": time.perf_counter() - t0,
    }
    save()
    print(f"[checks] {run_mode}: {'ALL PASSED' if not failed else 'FAILED ' + ', '.join(failed)} "
          f"({len(acc)} accuracy cases, poison hits {report['summary']['poison_hits']}, "
          f"{report['summary']['wall_s']:.0f} s) -> {args.out}", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
