"""Tiling sweep of the fused statistics kernel on a GPU (a diagnostic, not a tuner).

``python bench/block_sweep.py --out DIR [--budget-s 140]``: for each case, the tiling table's row
(``aselect_kernels.ops.tiling``), the previous kernel (``bench/legacy_fused_stats.py``) and variations of the row,
one or two knobs at a time: token and channel blocks, warps, pipeline stages, channel groups, the persistent grid,
one-tile against token tiles, the basis kept on chip or re-read, the in-kernel merge against a second launch, and
for fp32 inputs ``tf32x3`` against ``ieee`` dots.  Every variant is first checked against the row's output (fp32
accumulation, so only the summation order differs), then timed with ``triton.testing.do_bench`` (median; it
flushes the L2 before each call, and the input rotates among buffers that together exceed 3x the L2).  Variants
run in order of interest until the time budget is spent; those left are listed as skipped.  Writes
``DIR/block_sweep.json`` after each case.  It shares the L2 and rotation helpers of ``common.py``.

``--smoke`` runs tiny cases on the CPU under ``TRITON_INTERPRET=1`` (no timing): it checks the plumbing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import l2_bytes, rotation_count  # noqa: E402
from legacy_fused_stats import legacy_stats  # noqa: E402

from aselect_kernels.ops import fused_stats as fused  # noqa: E402
from aselect_kernels.ops.tiling import Tiling  # noqa: E402
from aselect_kernels.reference import StatsConfig  # noqa: E402

CASES = [("xl_n128_bf16_1d", 128, 256, 1152, torch.bfloat16, StatsConfig()),
         ("emb_n1024_fp32_1d", 1024, 196, 96, torch.float32, StatsConfig()),
         ("xl_n128_bf16_2d", 128, 256, 1152, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(16, 16))),
         ("emb_hidden_n1024_fp32_1d", 1024, 196, 384, torch.float32, StatsConfig())]
SMOKE_CASES = [("smoke_bf16_1d", 3, 64, 40, torch.bfloat16, StatsConfig()),
               ("smoke_fp32_2d", 2, 64, 24, torch.float32, StatsConfig(cutoff=0.5, hfr_dims=2))]
#: The legacy kernel's row in a sweep (it takes no tiling).
LEGACY = "legacy"


def variants(row: Tiling, length: int, channels: int, dtype: torch.dtype) -> list[tuple[str, Tiling | str]]:
    """``(label, tiling)`` to time, most interesting first: the row, the previous kernel, then variations."""
    out: list[tuple[str, Tiling | str]] = [("table", row), ("legacy", LEGACY)]

    def add(label: str, **changes: object) -> None:
        try:
            tile = row.with_overrides(**changes)
        except ValueError:
            return
        if all(tile != t for _, t in out):
            out.append((label, tile))

    add("merge_combine_kernel", merge_in_kernel=False)
    for stages in (1, 3, 4):
        add(f"stages_{stages}", num_stages=stages)
    add(f"warps_{12 - row.num_warps}", num_warps=12 - row.num_warps)  # 4 <-> 8
    add("persistent_1_per_sm", programs_per_sm=1)
    add("persistent_2_per_sm", programs_per_sm=2)
    add("one_program_per_item", programs_per_sm=0)
    if row.one_tile(length):
        add("basis_reread", hoist_basis=False)
        for group in (1, 4, 36):
            add(f"group_{group}", group_c=group)
        add("token_tiles_64x128", block_l=64, block_c=128, group_c=1, num_warps=4)
    else:
        one = triton.next_power_of_2(length)
        if one <= 256:
            add("one_tile_c32_g12", block_l=one, block_c=32, group_c=12, num_warps=8)
            add("one_tile_c16_g24", block_l=one, block_c=16, group_c=24, num_warps=8)
    if dtype == torch.float32:
        add("fp32_ieee" if row.fp32_dot != "ieee" else "fp32_tf32x3",
            fp32_dot="ieee" if row.fp32_dot != "ieee" else "tf32x3")
    for bl, bc, nw in itertools.product((32, 64), (32, 64, 128, 256), (4, 8)):
        if bl < length:
            add(f"tiles_{bl}x{bc}_w{nw}", block_l=bl, block_c=bc, num_warps=nw, group_c=1)
    return out


def _call(x: torch.Tensor, config: StatsConfig, tile: Tiling | str) -> torch.Tensor:
    if tile == LEGACY:
        return legacy_stats(x, config, interpret=fused.INTERPRET)
    return fused.fused_stats(x, config, tile=tile)


def _time(xs: list[torch.Tensor], config: StatsConfig, tile: Tiling | str) -> float:
    """Median ms of one call, the input rotating among ``xs``."""
    counter = itertools.count()
    return triton.testing.do_bench(lambda: _call(xs[next(counter) % len(xs)], config, tile), warmup=10, rep=40,
                                   return_mode="median")


def run_case(case: tuple, device: torch.device, smoke: bool, deadline: float) -> dict:
    """Check and time the variants of one case until ``deadline`` (``time.perf_counter``)."""
    name, n, length, c, dtype, config = case
    nbytes = n * length * c * torch.empty((), dtype=dtype).element_size()
    count = rotation_count(nbytes, device, smoke=smoke)
    g = torch.Generator(device=device).manual_seed(n + c)
    xs = [(torch.randn(n, length, c, device=device, generator=g) * 1.5 + 0.5).to(dtype) for _ in range(count)]
    target = fused.device_target(device)
    row = fused.kernel_tiling(length, c, config, dtype, target if target != "interpreter" else (9, 0))
    ref = _call(xs[0], config, row)
    rows, skipped = [], []
    for label, tile in variants(row, length, c, dtype):
        if time.perf_counter() > deadline:
            skipped.append(label)
            continue
        entry: dict = {"label": label, "tiling": tile if tile == LEGACY else vars(tile)}
        try:
            out = _call(xs[0], config, tile)
            entry["max_rel_diff"] = float(((out - ref).abs() / ref.abs().clamp(min=1e-3)).max())
            if not smoke:
                ms = _time(xs, config, tile)
                entry.update(ms=ms, us=ms * 1e3, gbps=nbytes / ms / 1e6)
        except Exception as exc:  # e.g. out of shared memory / registers
            entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(entry)
        print(f"  {name} {label}: {entry.get('us', '-')} us, diff {entry.get('max_rel_diff')}"
              f" {entry.get('error', '')}", flush=True)
    ok = [r for r in rows if "ms" in r and r["max_rel_diff"] < 1e-3]
    best = min(ok, key=lambda r: r["ms"]) if ok else None
    return {"shape": [n, length, c], "dtype": str(dtype), "bytes": nbytes, "k_low": fused.low_rows(length, config),
            "table_row": vars(row), "best": best, "rows": rows, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=140.0, help="seconds for all cases together")
    parser.add_argument("--smoke", action="store_true", help="tiny cases on the CPU under the interpreter")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu") if args.smoke else torch.device("cuda", torch.cuda.current_device())
    res: dict = {"device": "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name(device),
                 "l2_bytes": l2_bytes(device), "triton": triton.__version__, "torch": torch.__version__,
                 "budget_s": args.budget_s, "cases": {}}
    cases = SMOKE_CASES if args.smoke else CASES
    for i, case in enumerate(cases):
        # an equal share of what is left for each remaining case
        deadline = time.perf_counter() + (args.budget_s - (time.perf_counter() - t0)) / (len(cases) - i)
        res["cases"][case[0]] = run_case(case, device, args.smoke, deadline)
        print(f"{case[0]}: best {res['cases'][case[0]]['best']}", flush=True)
        (args.out / "block_sweep.json").write_text(json.dumps(res, indent=1))
    res["wall_s"] = time.perf_counter() - t0
    (args.out / "block_sweep.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
