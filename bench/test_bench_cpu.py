"""pytest-benchmark on the CPU: the statistics backends that ``backend="auto"`` chooses between off a GPU.

``python -m pytest bench/test_bench_cpu.py -q --benchmark-json=OUT.json`` times one full statistic set (6
statistics) with ``matmul_stats`` (the kernel's algorithm in PyTorch ops) and ``reference_stats`` (the definition,
FFT based), in float32, on the embedded model's tap shapes: a 594-sample chunk of hidden width (96) and of the MLP's
hidden activation (384), 196 tokens, 1-D and 2-D frequency ratios.  Inputs rotate among random buffers larger than
the last-level cache.  Skipped where CUDA is visible (a GPU run's time goes to the GPU benchmarks) unless
``ASELECT_BENCH_CPU=1``.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from aselect_kernels.embedded.model import EMBEDDED_CONFIG
from aselect_kernels.ops.matmul_stats import matmul_stats
from aselect_kernels.reference import StatsConfig, reference_stats

HIDDEN = EMBEDDED_CONFIG["num_attention_heads"] * EMBEDDED_CONFIG["attention_head_dim"]

pytestmark = pytest.mark.skipif(torch.cuda.is_available() and os.environ.get("ASELECT_BENCH_CPU") != "1",
                                reason="CPU benchmark: set ASELECT_BENCH_CPU=1 to run it on a CUDA machine")

#: (id, N, L, C, config)
CASES = [
    ("emb_n594_c96_1d", 594, 196, HIDDEN, StatsConfig()),
    ("emb_n594_c384_1d", 594, 196, 4 * HIDDEN, StatsConfig()),
    ("emb_n594_c96_2d", 594, 196, HIDDEN, StatsConfig(hfr_dims=2, grid=(14, 14))),
]
IMPLS = {"matmul": matmul_stats, "reference": reference_stats}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_stats_speed(benchmark, case: tuple, impl: str) -> None:
    case_id, n, length, c, config = case
    g = torch.Generator().manual_seed(n + c)
    xs = [torch.randn(n, length, c, generator=g) * 1.5 + 0.5 for _ in range(3)]  # 3 x 45-180 MB
    fn = IMPLS[impl]
    torch.testing.assert_close(fn(xs[0], config), reference_stats(xs[0], config, torch.float64).float(),
                               rtol=1e-4, atol=1e-5)
    counter = itertools.count()
    benchmark.group = case_id
    benchmark.extra_info.update(shape=[n, length, c], dtype="float32", hfr_dims=config.hfr_dims, impl=impl,
                                threads=torch.get_num_threads())
    benchmark.pedantic(lambda: fn(xs[next(counter) % len(xs)], config), rounds=9, warmup_rounds=2, iterations=1)
