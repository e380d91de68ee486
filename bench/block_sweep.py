"""Block-size and warp sweep of the fused statistics kernel on a GPU (a diagnostic, not a tuner).

``python bench/block_sweep.py --out DIR``: for each case, every ``(BLOCK_L, BLOCK_C, num_warps)`` of the grid
below is checked against the default blocks' output (fp32 accumulation, so only summation order differs) and
timed with ``triton.testing.do_bench`` (median; it flushes the L2 before each call, and the input rotates among
buffers that together exceed 3x the L2).  Writes ``DIR/block_sweep.json`` after each case.  It shares the
L2 and rotation helpers of ``bench_stats.py``, so diffusers must import (``run_all_gpu.sh`` installs the wheels).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stats import l2_bytes, rotation_count  # noqa: E402

from aselect_kernels.frequency import low_frequency_basis  # noqa: E402
from aselect_kernels.ops.fused_stats import NUM_WARPS, block_sizes, fused_stats  # noqa: E402
from aselect_kernels.reference import StatsConfig  # noqa: E402

CASES = [("xl_n128_bf16_1d", 128, 256, 1152, torch.bfloat16, StatsConfig()),
         ("emb_n1024_fp32_1d", 1024, 196, 96, torch.float32, StatsConfig()),
         ("xl_n128_bf16_2d", 128, 256, 1152, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(16, 16))),
         ("emb_hidden_n1024_fp32_1d", 1024, 196, 384, torch.float32, StatsConfig())]
BLOCK_L = (16, 32, 64)
BLOCK_C = (32, 64, 128, 256)
WARPS = (4, 8)


def _time(xs: list[torch.Tensor], config: StatsConfig, bl: int, bc: int, nw: int) -> float:
    """Median ms of one call, the input rotating among ``xs``."""
    counter = itertools.count()
    return triton.testing.do_bench(
        lambda: fused_stats(xs[next(counter) % len(xs)], config, block_l=bl, block_c=bc, num_warps=nw),
        warmup=10, rep=40, return_mode="median")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda", torch.cuda.current_device())
    res: dict = {"device": torch.cuda.get_device_name(device), "l2_bytes": l2_bytes(device),
                 "triton": triton.__version__, "torch": torch.__version__, "cases": {}}
    for name, n, length, c, dtype, config in CASES:
        nbytes = n * length * c * torch.empty((), dtype=dtype).element_size()
        count = rotation_count(nbytes, device, smoke=False)
        g = torch.Generator(device="cuda").manual_seed(n + c)
        xs = [(torch.randn(n, length, c, device="cuda", generator=g) * 1.5 + 0.5).to(dtype) for _ in range(count)]
        k = low_frequency_basis(length, config.resolve_grid(length), config.cutoff).shape[0]
        default = block_sizes(length, c, k)
        ref = fused_stats(xs[0], config)
        rows = []
        for bl, bc, nw in itertools.product(BLOCK_L, BLOCK_C, WARPS):
            row = {"block_l": bl, "block_c": bc, "num_warps": nw}
            try:
                out = fused_stats(xs[0], config, block_l=bl, block_c=bc, num_warps=nw)
                row["max_rel_diff"] = float(((out - ref).abs() / ref.abs().clamp(min=1e-3)).max())
                ms = _time(xs, config, bl, bc, nw)
                row.update(ms=ms, gbps=nbytes / ms / 1e6)
            except Exception as exc:  # e.g. out of shared memory / registers
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
            rows.append(row)
        ok = [r for r in rows if "ms" in r and r["max_rel_diff"] < 1e-3]
        best = min(ok, key=lambda r: r["ms"]) if ok else None
        dflt = next((r for r in rows if (r["block_l"], r["block_c"]) == default[:2] and "ms" in r
                     and r["num_warps"] == NUM_WARPS), None)
        res["cases"][name] = {"shape": [n, length, c], "dtype": str(dtype), "bytes": nbytes, "k_low": k,
                              "default_blocks": default, "default": dflt, "best": best, "rows": rows}
        print(f"{name}: default {dflt}\n  best {best}", flush=True)
        (args.out / "block_sweep.json").write_text(json.dumps(res, indent=1))
    res["wall_s"] = time.perf_counter() - t0
    (args.out / "block_sweep.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
