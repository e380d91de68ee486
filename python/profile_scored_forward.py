"""Profile the DiT-XL/2-sized scored forward (fused taps on all 56 attention-out / MLP-out outputs), or the
statistics kernels alone on one shape, NVTX-annotated.

Forward mode runs ``--iters`` timed iterations (after one warm-up outside the profiled range) of a batch split
into chunks.  NVTX ranges: ``aselect.iter{i}`` > ``aselect.chunk{k}`` (one forward) > ``aselect.tap`` >
``<tap name>`` (the statistics of one tap, e.g. ``transformer_blocks.27.ff``).  ``cudaProfilerStart/Stop``
bracket the timed iterations.  ``--overlap`` scores the taps on a side stream (``TapSet(overlap=True)``).

``--kernel-only`` instead calls each statistics backend (``triton``, and ``cuda`` when the package has it) on
random ``--shape`` inputs (default the headline ``128,256,1152`` bf16), ``--iters`` times, each call inside an
outermost ``aselect.tap`` range with the backend's name nested in it, and the calls of each backend between
``cudaProfilerStart/Stop`` (for ``ncu --profile-from-start off``).

Nsight Systems (timeline; if ``nsys`` is not on the PATH, the Nsight Compute bundle may include a copy)::

    nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi -o /tmp/scored_fwd \\
        python python/profile_scored_forward.py --iters 3

Nsight Compute, on the tap kernels of the forward (a trailing ``/`` names a push/pop range, ``*`` in a filter
stands for whole nesting levels, not for part of a name: hence the constant ``aselect.tap`` range), or on the
kernels alone between the profiler start/stop calls of ``--kernel-only``::

    ncu --nvtx --nvtx-include "aselect.tap/" --set full --clock-control none --launch-count 4 \\
        -o /tmp/tap_kernels python python/profile_scored_forward.py --iters 1
    ncu --nvtx --profile-from-start off --set full --clock-control none --launch-count 8 \\
        -o /tmp/kernels python python/profile_scored_forward.py --kernel-only --iters 1

``bench/profile_kernels.sh`` runs the second with the sections and metrics the kernel work reads (DRAM and L2
bytes, registers, spills, occupancy, stall reasons, load widths) and adds the SASS of the kernels.

``--smoke`` runs two tiny blocks (or a tiny kernel shape) on the CPU (``TRITON_INTERPRET=1``), no profiler.
Diffusers' ``DiTTransformer2DModel`` is used when it imports, else the plain DiT of ``bench/common.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import build_dit, kernel_backends, nvtx_range, sync  # noqa: E402

from aselect_kernels.reference import StatsConfig  # noqa: E402
from aselect_kernels.stats import compute_stats  # noqa: E402
from aselect_kernels.taps import TapSet  # noqa: E402


def profile_kernels(shape: Sequence[int], iters: int, device: torch.device, dtype: torch.dtype) -> int:
    """Each backend on random ``shape`` inputs, every call in ``aselect.tap`` > ``<backend>`` ranges."""
    g = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(*shape, device=device, generator=g).to(dtype) for _ in range(2)]
    cuda = device.type == "cuda"
    for backend in kernel_backends():
        compute_stats(xs[0], StatsConfig(), backend)  # warm-up outside the ranges: JIT, basis upload
        sync(device)
        t0 = time.perf_counter()
        if cuda:
            torch.cuda.profiler.start()
        for i in range(iters):
            with nvtx_range("aselect.tap", cuda), nvtx_range(backend, cuda):
                out = compute_stats(xs[i % 2], StatsConfig(), backend)
        if cuda:
            torch.cuda.profiler.stop()
        sync(device)
        print(f"[profile] {backend} {list(shape)} {dtype}: {iters} calls in {(time.perf_counter() - t0) * 1e3:.2f} ms, "
              f"finite rows {int(out.isfinite().all(dim=1).sum())}/{shape[0]}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--iters", type=int, default=3, help="profiled iterations")
    parser.add_argument("--batch", type=int, default=None, help="samples per iteration (default 128; smoke 4)")
    parser.add_argument("--chunk", type=int, default=None, help="samples per forward (default: the whole batch)")
    parser.add_argument("--model", choices=("auto", "diffusers", "plain"), default="auto")
    parser.add_argument("--backend", default=None, help="statistics backend of the taps (default auto; smoke triton)")
    parser.add_argument("--overlap", action="store_true", help="score the taps on a side stream")
    parser.add_argument("--kernel-only", action="store_true", help="the statistics kernels alone on --shape")
    parser.add_argument("--shape", default="128,256,1152", help="N,L,C of --kernel-only (smoke: 2,64,48)")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(min(2, torch.get_num_threads()))
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke for the CPU check")
    cuda = not args.smoke
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.kernel_only:
        shape = [2, 64, 48] if args.smoke else [int(v) for v in args.shape.split(",")]
        return profile_kernels(shape, args.iters, device, dtype)
    batch = args.batch or (4 if args.smoke else 128)
    chunk = args.chunk or batch
    backend = args.backend or ("triton" if args.smoke else "auto")
    bundle = build_dit("tiny" if args.smoke else "xl", device, dtype, args.model)
    x, t, y = bundle.inputs(batch, device, dtype)
    print(f"[profile] {bundle.kind}, {len(bundle.taps)} taps, batch {batch} in chunks of {chunk}, {dtype}, "
          f"backend {backend}", flush=True)

    def iteration(i: int, tapset: TapSet) -> None:
        with nvtx_range(f"aselect.iter{i}", cuda):
            for k, s in enumerate(range(0, batch, chunk)):
                rows = torch.arange(s, min(s + chunk, batch), device=device)
                tapset.rows = rows
                with nvtx_range(f"aselect.chunk{k}", cuda):
                    bundle(x[rows], t[rows], y[rows])
                    tapset.join()

    times = []
    with TapSet(bundle.model, bundle.taps, batch, backend=backend, nvtx=True, overlap=args.overlap) as tapset, \
            torch.no_grad():
        iteration(-1, tapset)  # warm-up: kernel JIT, cuBLAS handles
        sync(device)
        if cuda:
            torch.cuda.profiler.start()
        for i in range(args.iters):
            t0 = time.perf_counter()
            iteration(i, tapset)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            torch.cuda.profiler.stop()
        stats = tapset.collect()
    nan_taps = [name for name, v in stats.items() if v.isnan().all(dim=1).any()]
    print(f"[profile] {args.iters} iterations: median {statistics.median(times):.2f} ms "
          f"(min {min(times):.2f}); {len(stats)} taps scored, rows with all-NaN stats in {len(nan_taps)} taps")
    return 0 if not nan_taps else 1


if __name__ == "__main__":
    sys.exit(main())
