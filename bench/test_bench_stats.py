"""pytest-benchmark microbenchmarks: each statistics backend vs the eager reference vs ``torch.compile``.

``python -m pytest bench/test_bench_stats.py -q --benchmark-json=OUT.json`` on a CUDA machine (skipped without
one).  Each round times one call on the next of several rotated random inputs (together larger than the L2) and
synchronizes the device inside the timed function, so the figures are wall-clock per call, sync included
(``bench_stats.py`` gives the CUDA-event and graph-replay figures).  Backends: ``triton``, and ``cuda`` when the
package has it; the compiled reference on the headline case only (its compile is slow).  Lives in ``bench/``:
``python -m pytest tests`` does not collect it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import lru_cache

import pytest
import torch

from aselect_kernels.embedded.model import EMBEDDED_CONFIG
from aselect_kernels.reference import StatsConfig, reference_stats

#: Channels of the embedded model's taps (its hidden width).
EMB_C = EMBEDDED_CONFIG["num_attention_heads"] * EMBEDDED_CONFIG["attention_head_dim"]
HEADLINE = "xl_n128_bf16_1d"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU microbenchmarks need a CUDA device")

#: (id, N, L, C, dtype, config): DiT-XL/2 at batch 128 (1-D and 2-D), an SD3-512 shape, and the embedded
#: model's MLP activations.
CASES = [
    (HEADLINE, 128, 256, 1152, torch.bfloat16, StatsConfig()),
    ("xl_n128_bf16_2d", 128, 256, 1152, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(16, 16))),
    ("sd3_n32_bf16_2d", 32, 1024, 1536, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(32, 32))),
    ("emb_hidden_n1024_fp32_1d", 1024, 196, 4 * EMB_C, torch.float32, StatsConfig()),
]


def _backends() -> tuple[str, ...]:
    from aselect_kernels import stats

    return tuple(b for b in ("triton", "cuda") if b in stats.BACKENDS)


IMPLS = _backends() + ("eager", "compiled")
ROUNDS = {"eager": 20, "compiled": 20}


@lru_cache(maxsize=1)
def _inputs(case_id: str) -> tuple[torch.Tensor, ...]:
    """Distinct random inputs for a case, together at least 3x the L2 (the last case's are kept)."""
    _, n, length, c, dtype, _ = next(cs for cs in CASES if cs[0] == case_id)
    nbytes = n * length * c * torch.empty((), dtype=dtype).element_size()
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 64 << 20
    count = max(2, min(64, math.ceil(3 * l2 / nbytes)))
    g = torch.Generator(device="cuda").manual_seed(len(case_id))
    return tuple(torch.randn(n, length, c, device="cuda", generator=g).to(dtype) for _ in range(count))


def _impl(name: str, config: StatsConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ("eager", "compiled"):
        from aselect_kernels.stats import compute_stats

        return lambda x: compute_stats(x, config, name)
    if name == "eager":
        return lambda x: reference_stats(x, config)
    compiled = torch.compile(reference_stats, dynamic=False)
    return lambda x: compiled(x, config)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stats_speed(benchmark, case: tuple, impl: str) -> None:
    """Median wall time of one full statistic set (6 statistics) per implementation."""
    case_id, n, length, c, dtype, config = case
    if impl == "compiled" and case_id != HEADLINE:
        pytest.skip("the compiled reference is timed on the headline case only")
    xs = _inputs(case_id)
    fn = _impl(impl, config)
    ref = reference_stats(xs[0], config)
    out = fn(xs[0])  # compile / JIT outside the timing
    torch.cuda.synchronize()
    assert out.shape == ref.shape and torch.equal(out.isnan(), ref.isnan())
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3, equal_nan=True)
    counter = itertools.count()

    def setup() -> tuple[tuple[torch.Tensor], dict]:
        torch.cuda.synchronize()
        return (xs[next(counter) % len(xs)],), {}

    def run(x: torch.Tensor) -> torch.Tensor:
        y = fn(x)
        torch.cuda.synchronize()
        return y

    benchmark.group = case_id
    benchmark.extra_info.update(shape=[n, length, c], dtype=str(dtype), hfr_dims=config.hfr_dims, impl=impl,
                                bytes_read=xs[0].numel() * xs[0].element_size(), n_buffers=len(xs),
                                device=torch.cuda.get_device_name(0))
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS.get(impl, 100), warmup_rounds=5, iterations=1)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.median > 0:
        benchmark.extra_info["gbps_median"] = benchmark.extra_info["bytes_read"] / stats.median / 1e9
