"""Compile the fused statistics kernel for a GPU on a machine without one, and report its resources.

``python bench/compile_report.py [--arch 90] [--out FILE]``: for each shape of :data:`CASES`, the launch that
``fused_stats`` would make on a GPU of compute capability ``--arch`` (the tiling table's row for it, the same
argument specialization as a real launch: 16-byte aligned pointers, unit strides) is compiled by Triton to PTX, and
``ptxas -v`` (the one Triton bundles) reports registers, spills and stack.  From the PTX it counts the MMA
instructions (``wgmma`` on Hopper, ``mma.sync`` before), the global loads by width (16-byte vector loads or
narrower), ``cp.async`` copies, and it reads the shared memory Triton reserved.  These are properties of the
compiled code, not timings.  ``--smoke`` compiles one small case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aselect_kernels.ops import fused_stats as fused  # noqa: E402
from aselect_kernels.ops.stats_kernel import fused_sample_stats_kernel  # noqa: E402
from aselect_kernels.reference import StatsConfig  # noqa: E402

#: (name, L, C, dtype, config): the shapes of the benchmark (N does not change the compiled code).
CASES = [
    ("xl_bf16_1d", 256, 1152, torch.bfloat16, StatsConfig()),
    ("xl_bf16_2d", 256, 1152, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(16, 16))),
    ("xl_fp32_1d", 256, 1152, torch.float32, StatsConfig()),
    ("emb_fp32_1d", 196, 96, torch.float32, StatsConfig()),
    ("emb_bf16_2d", 196, 96, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(14, 14))),
    ("emb_hidden_fp32_1d", 196, 384, torch.float32, StatsConfig()),
    ("sd3_bf16_2d", 1024, 1536, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(32, 32))),
    ("flux_bf16_2d", 4096, 3072, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(64, 64))),
]


def compile_plan(x: torch.Tensor, config: StatsConfig, arch: int, **overrides: object) -> dict:
    """Compile the main kernel of ``fused_stats(x, config)`` for ``sm_<arch>``; resources and PTX counts."""
    plan = fused.launch_plan(x, config, target=(arch // 10, arch % 10), **overrides)
    return compile_launch(fused_sample_stats_kernel, plan.args, plan.meta, arch)


def compile_launch(fn: triton.runtime.JITFunction, args: tuple, meta: dict, arch: int) -> dict:
    """Compile ``fn`` for ``sm_<arch>`` with the specialization a launch with ``args`` would get; resources and
    PTX counts."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **meta)
    options, signature, constexprs, attrs = fn._pack_args(backend, meta, bound, specialization, options)
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    ptx = kernel.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        arch_flag = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        res = subprocess.run([str(ptxas), f"-arch={arch_flag}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, check=True)
    info = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    stack = re.search(r"(\d+) bytes stack frame", info)
    loads = Counter(m.group(1) for m in re.finditer(r"ld\.global(?:\.[a-z]+)*?((?:\.v\d)?\.[bfsu]\d+)", ptx))
    return {
        "meta": dict(meta),
        "registers": int(regs.group(1)) if regs else None,
        "spill_store_bytes": int(spill.group(1)) if spill else None,
        "spill_load_bytes": int(spill.group(2)) if spill else None,
        "stack_bytes": int(stack.group(1)) if stack else None,
        "shared_bytes": kernel.metadata.shared,
        "wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
        "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca"), "tma": ptx.count("cp.async.bulk"),
        "global_loads_by_width": dict(loads), "ex2": ptx.count("ex2.approx"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--smoke", action="store_true", help="one small case")
    parser.add_argument("--legacy", action="store_true", help="also compile the previous kernel (bench-only copy)")
    args = parser.parse_args(argv)
    cases = [("smoke_bf16_1d", 64, 40, torch.bfloat16, StatsConfig())] if args.smoke else CASES
    report: dict = {"triton": triton.__version__, "arch": args.arch, "cases": {}}
    for name, length, channels, dtype, config in cases:
        x = torch.zeros(1, length, channels, dtype=dtype)
        tile = fused.kernel_tiling(length, channels, config, dtype, (args.arch // 10, args.arch % 10))
        entry = {"tiling": vars(tile), "k_low": fused.low_rows(length, config)}
        try:
            entry.update(compile_plan(x, config, args.arch))
        except Exception as exc:  # a tiling that does not compile is a finding, not a crash of the report
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        report["cases"][name] = entry
        if args.legacy:
            from legacy_fused_stats import legacy_kernel, legacy_plan

            _, largs, lmeta, *_ = legacy_plan(x, config)
            try:
                entry["legacy"] = compile_launch(legacy_kernel, largs, lmeta, args.arch)
            except Exception as exc:
                entry["legacy"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"  legacy: regs {entry['legacy'].get('registers')} spills {entry['legacy'].get('spill_store_bytes')}"
                  f" smem {entry['legacy'].get('shared_bytes')}", flush=True)
        print(f"{name}: regs {entry.get('registers')} spills {entry.get('spill_store_bytes')} "
              f"smem {entry.get('shared_bytes')} wgmma {entry.get('wgmma')} mma {entry.get('mma_sync')} "
              f"loads {entry.get('global_loads_by_width')} {entry.get('error', '')}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
