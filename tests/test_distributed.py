"""Two processes (gloo, CPU) give the one-process result; a failing or hanging rank ends every rank.

One ``torch.distributed.run --nproc-per-node 2`` launch of tests/dist_worker.py runs every scenario; the
one-process references run here, on one thread like each rank.

What is exact and what is not: the ranks run whole chunks of the one-process run (explicit chunk size), so the
per-sample statistics are bitwise equal; the tables (sums over images), the probe grids and the choices are
computed from those same values on every rank, so they are bitwise equal too.  Only run facts (wall times,
chunks of this rank, ``world_size``) differ.  When each rank plans its own chunks under its memory budget, the
batches differ from one process: per-sample statistics then agree to float rounding (1e-5), and so does the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aselect_kernels import distributed
from aselect_kernels.cli import main

from dist_worker import BUDGET, PROBE_ARGS, SELECT_ARGS, VALIDATE_ARGS, api_dense, api_inputs, api_labelled, api_select

ROOT = Path(__file__).resolve().parents[1]
#: Run facts that legitimately differ between one process and two.
RUN_FACTS = {"chunks", "forward_s", "wall_s", "command_wall_s", "world_size", "select_wall_s", "grid_wall_s",
             "wall_ratio", "candidates_wall_s"}


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images_npz(tmp_path_factory):
    from aselect_kernels.embedded.data import load_embedded_images

    x, y = load_embedded_images("test")
    path = tmp_path_factory.mktemp("data") / "images.npz"
    np.savez(path, images=np.asarray(x[:5]), labels=np.asarray(y[:5]))
    return path


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, images_npz):
    """Launch the worker on 2 gloo ranks once; returns its output folder."""
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           distributed.TIMEOUT_ENV: "120", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "dist_worker.py"), str(out), str(images_npz)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _load(out: Path, name: str) -> list:
    return [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(2)]


def _strip(value: object) -> object:
    """``value`` without run facts (wall times, this rank's chunks, world size)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in RUN_FACTS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_cli_select_two_ranks_equals_one_process(two_ranks, images_npz, tmp_path, one_thread):
    assert _load(two_ranks, "codes") == [{"select": 0, "validate": 0, "probe": 0}] * 2
    assert main(SELECT_ARGS + ["--images", str(images_npz), "--out", str(tmp_path)]) == 0
    one = json.loads((tmp_path / "result.json").read_text())
    two = json.loads((two_ranks / "select" / "result.json").read_text())
    assert two["meta"]["world_size"] == 2 and one["meta"]["world_size"] == 1
    assert two["meta"]["samples"] == one["meta"]["samples"] == 30  # 15 samples x 2 noise draws (sf)
    assert two["meta"]["chunks"] < one["meta"]["chunks"]  # rank 0 ran only its shard
    assert _strip(two) == _strip(one)  # the table's sums, mean, std and choices: exact


def test_cli_validate_two_ranks_equals_one_process(two_ranks, tmp_path, one_thread):
    assert main(VALIDATE_ARGS + ["--out", str(tmp_path)]) == 0
    one = json.loads((tmp_path / "validation_fashion.json").read_text())
    two = json.loads((two_ranks / "validate" / "validation_fashion.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert len(two["classification"]["grid"]["metric"]) == 2  # 2 timesteps x 1 tap + the floor: 3 probe fits
    assert _strip(two) == _strip(one)  # probe accuracies, rho, gaps, bootstrap intervals: exact


def test_cli_probe_two_ranks_equals_one_process(two_ranks, tmp_path, one_thread):
    assert main(PROBE_ARGS + ["--out", str(tmp_path)]) == 0
    one = json.loads((tmp_path / "probe.json").read_text())
    two = json.loads((two_ranks / "probe" / "probe.json").read_text())
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert _strip(two) == _strip(one)  # the grid's accuracies and the raw-pixel floor: exact


def test_api_per_sample_statistics_and_dense_grid_are_identical(two_ranks, one_thread):
    model, x, train, test = api_inputs()
    one = api_select(model, x).per_sample
    for r in range(2):  # every rank holds every sample's statistics, bitwise equal to one process
        np.testing.assert_array_equal(np.load(two_ranks / f"per_sample.rank{r}.npy"), one)
    dense = api_dense(model, train, test).metric.tolist()
    assert [d["metric"] for d in _load(two_ranks, "dense")] == [dense, dense]


def test_few_label_selection_two_ranks_equals_one_process(two_ranks, one_thread):
    """The label criteria read every image's means, gathered from both ranks: the same columns and pick."""
    one = api_labelled(api_inputs()[0])
    meta = {k: v for k, v in one.meta["labels"].items() if k != "fit_s"}
    for r, saved in enumerate(_load(two_ranks, "labels")):
        np.testing.assert_array_equal(np.load(two_ranks / f"per_sample_labels.rank{r}.npy"), one.per_sample)
        assert saved == meta


def test_own_memory_budgets_agree_up_to_batch_rounding(two_ranks, one_thread):
    """Without an explicit chunk size each rank plans chunks for its shard under its own budget: the batches
    differ from one process, so the per-sample statistics agree to float rounding, not bitwise, and the table
    up to that rounding and the summation order."""
    model, x, _, _ = api_inputs()
    one = api_select(model, x, chunk_size=None, memory_budget=BUDGET)
    assert one.meta["chunks"] > 1 and all(b["chunks"] > 1 for b in _load(two_ranks, "budget"))
    for r in range(2):
        np.testing.assert_allclose(np.load(two_ranks / f"per_sample_budget.rank{r}.npy"), one.per_sample,
                                   rtol=1e-5, atol=1e-6)
    for seen in _load(two_ranks, "budget"):
        np.testing.assert_allclose(np.asarray(seen["mean"], dtype=np.float64), one.mean, rtol=1e-5, atol=1e-6)


def test_failing_rank_ends_every_rank_with_its_error(two_ranks):
    for seen in _load(two_ranks, "failing"):
        assert seen["error"] is not None
        assert "rank 1 of 2 failed" in seen["error"] and "injected failure in rank 1" in seen["error"]


def test_hanging_rank_ends_the_wait(two_ranks):
    rank0, rank1 = _load(two_ranks, "hanging")
    assert "did not answer within 3 s" in rank0["error"]  # rank 0 gave up on rank 1: the job did not hang
    assert rank1["error"] is not None  # rank 1, released afterwards, found rank 0 gone


def test_shards_cover_the_samples_in_whole_chunks(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    for total, chunk in [(1, None), (7, None), (15, 4), (16, 4), (5, 8), (100, 7)]:
        shards = []
        for r in range(3):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            shards.append(distributed.shard(total, chunk))
        assert [i for s in shards for i in s] == list(range(total))  # contiguous, disjoint, complete
        if chunk:
            assert all(s.start % chunk == 0 for s in shards if len(s))  # whole chunks of the one-process run
        units = [-(-len(s) // (chunk or 1)) for s in shards]  # samples, or chunks: balanced within one
        assert max(units) - min(units) <= 1
