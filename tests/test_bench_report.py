"""The benchmark report of ``bench/bench_stats.py`` on the CPU: its targets logic on synthetic timings, its
projection analysis against a numpy count, and the schema of a smoke run of its cheap sections (no timings are
asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_stats  # noqa: E402

MB = 10**6


def _case(name: str, nbytes: int, pct: dict[str, float], headline: bool = False) -> dict:
    backends = {b: {"device_ms": 100.0 / p, "gbps": p, "launch": {"median_ms": 1.0}, "pct_of_read": p}
                for b, p in pct.items()}
    return {"name": name, "bytes_read": nbytes, "headline": headline, "backends": backends,
            "best_backend": max(pct, key=pct.get)}


def _forward(overheads: dict[str, float], peaks: dict[str, float] | None = None) -> dict:
    variants = {"unscored": {"median_ms": 100.0, "scored": False, "graph": False, "overhead_pct": 0.0}}
    for name, pct in overheads.items():
        variants[name] = {"median_ms": 100.0 + pct, "scored": True, "graph": name.endswith("_graph"),
                          "overhead_pct": pct, "extra_peak_pct": (peaks or {}).get(name)}
    return {"variants": variants}


def test_targets_take_the_best_backend_and_the_best_eager_variant():
    report = {
        "kernel": {"cases": [
            _case("head", 75 * MB, {"triton": 70.0, "cuda": 85.0}, headline=True),
            _case("small", 2 * MB, {"triton": 10.0}),  # under 16 MB: not in the >= 60 % target
            _case("big_a", 600 * MB, {"triton": 65.0, "cuda": 61.0}),
            _case("big_b", 100 * MB, {"triton": 40.0, "cuda": 55.0}),
        ]},
        "forward_b128_56": _forward({"eager_reference": 150.0, "fused_triton": 3.0, "overlapped_triton": 1.5,
                                     "fused_graph": 0.1}, peaks={"overlapped_triton": 0.4, "fused_triton": 0.2}),
        "forward_b128_140": _forward({"fused_triton": 6.0, "overlapped_triton": 5.5}),
    }
    t = bench_stats.evaluate_targets(report)
    assert set(t) == set(bench_stats.TARGETS)
    head = t["kernel_pct_of_read_headline"]
    assert (head["value"], head["backend"], head["met"]) == (85.0, "cuda", True)
    worst = t["kernel_min_pct_of_read_16mb"]
    assert (worst["value"], worst["case"], worst["backend"], worst["cases"], worst["met"]) == (
        55.0, "big_b", "cuda", 3, False)
    fwd = t["forward_b128_56_overhead_pct"]
    assert (fwd["value"], fwd["variant"], fwd["met"]) == (1.5, "overlapped_triton", True)
    assert fwd["margin"] == pytest.approx(0.5)
    assert t["extra_peak_memory_pct"]["value"] == 0.4 and t["extra_peak_memory_pct"]["met"]
    assert t["stretch_forward_b128_56_overhead_pct"]["met"] is False
    assert t["forward_b128_140_overhead_pct"]["value"] == 5.5 and not t["forward_b128_140_overhead_pct"]["met"]
    assert t["forward_b8_56_overhead_pct"]["met"] is None and t["forward_b8_56_overhead_pct"]["value"] is None


def test_validate_report_names_what_is_missing():
    report = {"env": {}, "targets": bench_stats.evaluate_targets({}), "targets_spec": bench_stats.TARGETS,
              "errors": {}, "section_s": {}}
    assert bench_stats.validate_report(report) == []
    report["kernel"] = {"cases": [{"name": "x", "backends": {"triton": {"gbps": 1.0}}}]}
    report["forward_b8_56"] = {"variants": {"fused_triton": {"median_ms": 1.0}}}
    del report["targets"]["extra_peak_memory_pct"]
    problems = bench_stats.validate_report(report)
    assert any("extra_peak_memory_pct" in p for p in problems)
    assert any("'x'" in p and "timings" in p for p in problems)
    assert any("forward_b8_56" in p and "unscored" in p for p in problems)


def _numpy_low_bins(length: int, grid: tuple[int, int] | None, cutoff: float) -> int:
    """Oracle: low non-DC DFT bins counted with numpy's fftfreq (|f| as a fraction of Nyquist)."""
    if grid is None:
        r = np.abs(np.fft.fftfreq(length)) * 2
    else:
        ry, rx = (np.abs(np.fft.fftfreq(n)) * 2 for n in grid)
        r = np.sqrt(ry[:, None] ** 2 + rx[None, :] ** 2).ravel()
    return int(((r <= cutoff) & (r > 0)).sum())


@pytest.mark.parametrize(("length", "grid"), [(256, None), (4096, None), (197, None), (256, (16, 16)),
                                              (4096, (64, 64)), (1024, (32, 32)), (196, (14, 14))])
def test_projection_k_is_the_count_of_low_bins(length, grid):
    got = bench_stats.projection_intensity(length, grid, 0.15, itemsize=2, dots=2)
    k = _numpy_low_bins(length, grid, 0.15)
    assert got["K"] == k
    assert got["flops_per_byte"] == pytest.approx(2 * k * 2 / 2)


@pytest.mark.parametrize(("ridge", "dots"), [(37.0, 1), (90.5, 2), (3.0, 2)])
def test_compute_bound_point_is_the_first_length_past_the_ridge(ridge, dots):
    lengths = np.arange(2, 2000)
    intensity = np.array([2 * _numpy_low_bins(int(n), None, 0.15) * dots / 2 for n in lengths])
    expected = int(lengths[np.argmax(intensity >= ridge)])
    assert bench_stats.compute_bound_point(ridge, 0.15, itemsize=2, dots=dots) == expected
    assert bench_stats.compute_bound_point(1e9, 0.15, itemsize=2, dots=dots) is None


def test_smoke_sections_write_a_well_formed_report(tmp_path):
    threads = torch.get_num_threads()
    try:
        rc = bench_stats.main(["--smoke", "--sections", "analysis,ceilings,checks,launch", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "smoke-cpu.json").read_text())
    assert rc == 0 and report["errors"] == {} and bench_stats.validate_report(report) == []
    assert report["env"]["smoke"] is True and "triton" in report["env"]["backends"]
    assert report["checks"]["overlap_equals_plain_triton"]["status"] == "PASSED"
    assert report["checks"]["graph_capture"]["status"].startswith("REHEARSED")  # its CUDA calls stood in for
    assert report["checks"]["inplace_after_tap_detected"]["status"].startswith("skipped")
    entry = report["launch"]["backends"]["triton"]
    assert {"compute_stats", "tap", "tap_overlapped", "torch_ops"} <= set(entry)
    headline = report["analysis"]["cases"]["tiny_n2_bf16_1d"]
    assert headline["K"] == _numpy_low_bins(64, None, 0.15)
    assert set(report["analysis"]["compute_bound_1d"]) == {"bf16_dots1", "bf16_dots2", "tf32_dots1", "tf32_dots2"}
    assert all(t["met"] is None for t in report["targets"].values())  # nothing timed that a target reads
