"""Analytic traffic and work of the fused statistics kernel per shape (no GPU needed; predictions, not timings).

``python bench/traffic_model.py [--json FILE]`` prints, for each shape of the benchmark, the bytes of ``X`` (the
floor: read once), ``K`` (low-frequency basis rows at cutoff 0.15) and its padding to ``BLOCK_K``, the flops of the
projection (useful: ``2 K L C N``; issued: padded rows, twice for the hi/lo split of half-precision inputs, three
times for ``tf32x3``), the basis bytes that token tiles re-read (from L2), the entropy-state bytes written and read
back, and the work items against the SMs, for the previous kernel and for the tiling table's GPU row.  Times are
``bytes / 3016 GB/s`` (the read ceiling measured on an H100 80GB HBM3, ``bench/RESULTS.md``) and ``flops / peak``
with the H100 SXM's dense peaks from its datasheet (tensor cores: 989 TFLOP/s bf16/fp16, 495 TF32; ``ieee`` fp32
dots run on the CUDA cores: 67 TFLOP/s), not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aselect_kernels.ops import fused_stats as fused  # noqa: E402
from aselect_kernels.ops.tiling import Tiling, pow2  # noqa: E402
from aselect_kernels.reference import StatsConfig  # noqa: E402

READ_GBPS = 3016.0  # measured read ceiling, H100 80GB HBM3
PEAK_TFLOPS = {torch.bfloat16: 989.0, torch.float16: 989.0, torch.float32: 495.0}  # datasheet, dense
FP32_FMA_TFLOPS = 67.0  # datasheet: ieee fp32 dots are FMAs on the CUDA cores
SMS = 132

SHAPES = [(f"xl_n{n}_bf16_{d}", n, 256, 1152, torch.bfloat16, cfg)
          for n in (1, 8, 128, 1024) for d, cfg in (("1d", StatsConfig()), ("2d", StatsConfig(hfr_dims=2)))]
SHAPES += [
    ("sd3_n64_bf16_2d", 64, 1024, 1536, torch.bfloat16, StatsConfig(hfr_dims=2)),
    ("flux_n16_bf16_2d", 16, 4096, 3072, torch.bfloat16, StatsConfig(hfr_dims=2)),
    ("flux_n16_bf16_1d", 16, 4096, 3072, torch.bfloat16, StatsConfig()),
    ("emb_n1024_fp32_1d", 1024, 196, 96, torch.float32, StatsConfig()),
    ("emb_n1024_fp32_2d", 1024, 196, 96, torch.float32, StatsConfig(hfr_dims=2)),
    ("emb_n1024_bf16_1d", 1024, 196, 96, torch.bfloat16, StatsConfig()),
    ("emb_hidden_n1024_fp32_1d", 1024, 196, 384, torch.float32, StatsConfig()),
    ("emb_hidden_n1024_bf16_2d", 1024, 196, 384, torch.bfloat16, StatsConfig(hfr_dims=2)),
]


def legacy_tiling(length: int, channels: int, k: int) -> Tiling:
    """The previous kernel's GPU blocks (64-token tiles, 128 or 32 channels, no groups, basis per tile)."""
    return Tiling(block_l=pow2(length, 16, 64), block_c=128 if channels >= 512 else 32, block_k=pow2(k, 16, 64),
                  merge_in_kernel=False, hoist_basis=False)


def model(n: int, length: int, channels: int, dtype: torch.dtype, k: int, tile: Tiling) -> dict:
    """Bytes and flops of one call with ``tile`` (see the module docstring)."""
    elem = torch.empty((), dtype=dtype).element_size()
    x_bytes = n * length * channels * elem
    num_kb = max(1, triton.cdiv(k, tile.block_k)) if k else 0
    rows = num_kb * tile.block_k
    one = tile.one_tile(length)
    groups = fused.num_groups(length, channels, tile)
    num_cb = triton.cdiv(channels, tile.block_c)
    split = 1 if dtype == torch.float32 else 2  # hi/lo dots (fp32: one tf32x3 dot = 3 passes, counted below)
    passes = 3 if dtype == torch.float32 and tile.fp32_dot == "tf32x3" else split
    peak = FP32_FMA_TFLOPS if dtype == torch.float32 and tile.fp32_dot == "ieee" else PEAK_TFLOPS[dtype]
    issued = 2.0 * rows * length * num_cb * tile.block_c * n * passes
    basis_elem = 4 if dtype == torch.float32 else elem * 2  # fp32 basis, or hi + lo halves
    tiles_per_block = triton.cdiv(length, tile.block_l)
    if one and tile.hoist_basis:
        # first row block once per program (persistent: at most min(items, programs)), further ones per block
        programs = n * groups if tile.programs_per_sm == 0 else min(n * groups, tile.programs_per_sm * SMS)
        basis_bytes = programs * tile.block_k * length * basis_elem
        basis_bytes += n * num_cb * (rows - tile.block_k) * length * basis_elem
    else:
        basis_bytes = n * num_cb * tiles_per_block * rows * tile.block_l * basis_elem
    reread_x = 0 if one else x_bytes * (num_kb - 1)  # further row blocks re-read the tiles (L2, or DRAM)
    state_bytes = 2 * n * groups * 3 * length * 4  # written, then read by the merge
    return {
        "x_bytes": x_bytes, "floor_us": x_bytes / READ_GBPS / 1e3, "k": k, "rows_padded": rows,
        "useful_gflop": 2.0 * k * length * channels * n / 1e9, "issued_gflop": issued / 1e9,
        "mma_us_at_peak": issued / (peak * 1e12) * 1e6,
        "flop_per_x_byte": issued / x_bytes, "basis_l2_bytes_over_x": basis_bytes / x_bytes,
        "x_reread_over_x": reread_x / x_bytes, "state_bytes_over_x": state_bytes / x_bytes,
        "work_items": n * groups, "items_per_sm": n * groups / SMS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    args = parser.parse_args(argv)
    table = {}
    head = (f"{'case':26} {'MB':>7} {'floor us':>8} {'K':>4} {'rows':>4} {'GFLOP use/iss':>14} {'mma us':>7}"
            f" {'basis/X':>8} {'state/X':>8} {'items/SM':>8}")
    print(head)
    for name, n, length, channels, dtype, config in SHAPES:
        k = fused.low_rows(length, config)
        new = fused.kernel_tiling(length, channels, config, dtype, (9, 0))
        table[name] = {"shape": [n, length, channels], "dtype": str(dtype), "config": vars(config),
                       "legacy": model(n, length, channels, dtype, k, legacy_tiling(length, channels, k)),
                       "table": model(n, length, channels, dtype, k, new), "tiling": vars(new)}
        for label in ("legacy", "table"):
            m = table[name][label]
            print(f"{name + ' ' + label:26} {m['x_bytes'] / 1e6:7.1f} {m['floor_us']:8.1f} {k:4d}"
                  f" {m['rows_padded']:4d} {m['useful_gflop']:6.2f}/{m['issued_gflop']:7.2f}"
                  f" {m['mma_us_at_peak']:7.1f} {m['basis_l2_bytes_over_x']:8.2f} {m['state_bytes_over_x']:8.3f}"
                  f" {m['items_per_sm']:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
