"""Python launch overhead of each statistics path: what one call costs the host, against what it costs the device.

``python bench/launch_overhead.py --out launch_overhead.json [--smoke] [--batches 1,8] [--reps 300]``

At small batches the host cost of a scored tap, not the kernel, sets the forward's overhead.  For each path and
batch (``[N, 256, 1152]`` bf16, 1-D ratios) this records medians of:

* ``host_us``: the Python call alone, calls issued back to back without synchronising (the device queue absorbs
  the kernels, so this is the CPU time per call: argument checks, basis cache, allocation, launch);
* ``event_us``: CUDA events around each call (device time, plus any gap the host leaves);
* ``synced_us``: wall time of a call followed by a device synchronisation.

Paths: ``triton`` (:func:`~aselect_kernels.ops.fused_stats.fused_stats`, the Triton launcher), ``cuda``
(:func:`~aselect_kernels.ops.cuda_stats.cuda_stats`), ``cuda_op`` (``torch.ops.aselect_cuda.sample_stats`` with the
basis prepared: the bare C++ op through ``torch.ops``), ``custom_op`` (``torch.ops.aselect.sample_stats``, the
Python custom op that ``torch.compile`` sees) and ``auto`` (``compute_stats``).  A path that cannot run here is
recorded with its error.  ``--smoke`` times the CPU paths (``matmul``, ``custom_op``) on a tiny shape, to check
the script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env_info, sync  # noqa: E402

from aselect_kernels.reference import StatsConfig  # noqa: E402

StatsPath = Callable[[torch.Tensor], torch.Tensor]


def paths(device: torch.device, config: StatsConfig) -> dict[str, StatsPath]:
    """The statistics paths to time on ``device``."""
    from aselect_kernels.ops import custom_op
    from aselect_kernels.stats import compute_stats

    args = custom_op.config_to_args(config)
    out: dict[str, StatsPath] = {"custom_op": lambda x: torch.ops.aselect.sample_stats(x, *args)}
    if device.type == "cpu":
        out["matmul"] = lambda x: compute_stats(x, config, backend="matmul")
        return out

    def triton(x: torch.Tensor) -> torch.Tensor:
        from aselect_kernels.ops.fused_stats import fused_stats

        return fused_stats(x, config)

    def cuda(x: torch.Tensor) -> torch.Tensor:
        from aselect_kernels.ops.cuda_stats import cuda_stats

        return cuda_stats(x, config)

    def cuda_op(x: torch.Tensor) -> torch.Tensor:
        from aselect_kernels.ops.cuda_stats import kernel_operands, load_extension

        load_extension()
        basis = kernel_operands(x.shape[1], config.resolve_grid(x.shape[1]), float(config.cutoff), x.dtype,
                                x.device)
        return torch.ops.aselect_cuda.sample_stats(x, *basis)

    out.update(triton=triton, cuda=cuda, cuda_op=cuda_op, auto=lambda x: compute_stats(x, config))
    return out


def time_path(fn: StatsPath, x: torch.Tensor, reps: int) -> dict[str, float]:
    """Medians (us) of host-only, event and synchronised times of ``fn(x)``."""
    device = x.device
    for _ in range(5):  # warm-up: builds, caches, autotune-free first launches
        fn(x)
    sync(device)
    host = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        host.append((time.perf_counter() - t0) * 1e6)
    sync(device)
    res = {"host_us": statistics.median(host)}
    if device.type == "cuda":
        events = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            events.append((start, end))
        sync(device)
        res["event_us"] = statistics.median(s.elapsed_time(e) * 1e3 for s, e in events)
    synced = []
    for _ in range(max(10, reps // 4)):
        t0 = time.perf_counter()
        fn(x)
        sync(device)
        synced.append((time.perf_counter() - t0) * 1e6)
    res["synced_us"] = statistics.median(synced)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="CPU paths on a tiny shape")
    parser.add_argument("--batches", default="1,8", help="comma list of N")
    parser.add_argument("--reps", type=int, default=300)
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke for the CPU check")
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    device = torch.device("cpu") if args.smoke else torch.device("cuda", torch.cuda.current_device())
    length, channels, dtype = (64, 48, torch.float32) if args.smoke else (256, 1152, torch.bfloat16)
    reps = min(args.reps, 20) if args.smoke else args.reps
    config = StatsConfig()
    report: dict[str, Any] = {"env": env_info(device, args.smoke), "shape": [None, length, channels],
                              "dtype": str(dtype), "config": vars(config), "reps": reps, "results": []}
    failed = False
    for n in (int(b) for b in args.batches.split(",")):
        x = torch.randn(n, length, channels, device=device).to(dtype)
        for name, fn in paths(device, config).items():
            entry: dict[str, Any] = {"path": name, "n": n}
            try:
                entry.update(time_path(fn, x, reps))
            except Exception:
                entry["error"] = traceback.format_exc(limit=3)
                failed = failed or name not in ("cuda", "cuda_op")  # the CUDA build may be missing
            report["results"].append(entry)
            shown = {k: round(v, 1) for k, v in entry.items() if k.endswith("_us")}
            print(f"[launch] N={n:<4} {name:10} {shown or entry['error'].splitlines()[-1]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
