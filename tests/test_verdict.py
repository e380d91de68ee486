"""validate's verdict in words: the pick against raw pixels with its interval, whether the test split separates the
cells, the tap set named as given, and every trivial rule on the console."""

from __future__ import annotations

import numpy as np
import pytest

from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments
from aselect_kernels.validation.compare import compare, tap_sets
from aselect_kernels.validation.grids import ProbeGrid
from aselect_kernels.validation.report import report_markdown, summary_lines
from aselect_kernels.validation.rules import TRIVIAL_RULES

TAPS = [f"transformer_blocks.{i}.ff.net.0" for i in range(3)]
TS = [0, 50, 100]


def _bootstrap_numpy(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval of acc(a) - acc(b), in points, resampling the test images (the oracle)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    d = counts @ (a.astype(float) - b.astype(float)) * 100.0 / n
    return tuple(np.percentile(d, [2.5, 97.5]))


def _report(n_test: int, p: np.ndarray, floor_p: float, score: np.ndarray, seed: int) -> tuple[dict, np.ndarray,
                                                                                               np.ndarray]:
    rng = np.random.default_rng(seed)
    correct = rng.random((len(TS), len(TAPS), n_test)) < p[..., None]
    floor = rng.random(n_test) < floor_p
    grid = ProbeGrid(TS, TAPS, correct.mean(-1), "accuracy", float(floor.mean()), 10, 1.0, correct=correct,
                     floor_correct=floor)
    m = Moments(np.ones(score.shape + (1,), dtype=np.int64), score[..., None], score[..., None] ** 2,
                np.zeros(score.shape + (1,), dtype=np.int64))
    sel = SelectionResult(TS, TAPS, ["sf"], {"sf": "max"}, m, "sf")
    cost = {"select_wall_s": 1.0, "select_forward_samples": 8, "grid_wall_s": 20.0, "grid_forward_samples": 80,
            "wall_ratio": 20.0, "forward_ratio": 10.0}
    report = {"dataset": "toy", "n_select": 4, "n_train": 10, "n_test": n_test, "timesteps": "0,50,100",
              "taps": "mlp_hidden", "cost": cost,
              "classification": {"grid": grid.to_dict(), "metric": "accuracy",
                                 **compare(sel, grid, tap_sets(TAPS))}}
    return report, correct, floor


def test_a_large_split_separates_and_the_pick_beats_raw_pixels():
    rng = np.random.default_rng()
    p = np.full((3, 3), 0.55) + rng.uniform(0, 0.02, (3, 3))
    p[0, 0] = 0.9  # the pick (score max at (0, tb0)) is the grid's best, far above the rest and the floor
    score = np.zeros((3, 3))
    score[0, 0] = 1.0
    report, correct, floor = _report(2000, p, 0.6, score, int(rng.integers(1 << 16)))
    text = "\n".join(summary_lines(report))
    lo, hi = _bootstrap_numpy(floor, correct[0, 0])  # acc(floor) - acc(pick): the margin is its negative
    margin = 100 * (correct[0, 0].mean() - floor.mean())
    assert f"beats the raw-pixel probe: {margin:+.2f} points, 95% CI [{-hi:+.2f}, {-lo:+.2f}]" in text
    assert "no other of the 9 cells is within the best's interval" in text
    assert "tap set mlp_hidden (every tap given)" in text and "tap set all" not in text
    for rule in TRIVIAL_RULES:
        assert f"rule {rule}" in text
    md = report_markdown(report)
    assert "Tap set `mlp_hidden` (every tap given)" in md and "* the pick of sf (max)" in md


def test_forty_test_images_cannot_separate_close_cells():
    rng = np.random.default_rng()
    p = np.full((3, 3), 0.7) + rng.uniform(-0.02, 0.02, (3, 3))
    score = rng.uniform(0, 1, (3, 3))
    report, correct, floor = _report(40, p, 0.7, score, int(rng.integers(1 << 16)))
    part = report["classification"]
    best = part["tap_sets"]["all"]["best"]
    ref = correct[TS.index(best["t"]), TAPS.index(best["tap"])]
    lows = [_bootstrap_numpy(ref, correct[i, j])[0] for i in range(3) for j in range(3)]
    k = sum(lo <= 0 for lo in lows)
    assert best["indistinct"] == {"cells": k, "of": 9, "n_test": 40}
    text = "\n".join(summary_lines(report))
    assert k > 1 and f"too small to separate {k} of the 9 cells" in text
    j = part["tap_sets"]["all"]["scorers"]["sf:max"]["joint"]
    if j["gap_ci95"][0] <= 0:
        assert "the 40 test images cannot separate it from the grid's best" in text
    lo, hi = j["vs_floor"]["ci95"]
    word = "beats" if lo > 0 else "loses to" if hi < 0 else "cannot be told from"
    assert f"{word} the raw-pixel probe" in text


@pytest.mark.parametrize("given", ["mlp_hidden", "all"])
def test_heading_names_the_taps_given(given):
    report, _, _ = _report(50, np.full((3, 3), 0.6), 0.6, np.eye(3), 1)
    report["taps"] = given
    assert f"Tap set `{given}` (every tap given)" in report_markdown(report)
