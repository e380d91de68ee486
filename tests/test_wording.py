"""Comparative words from the figures: both directions and equality, in the reports that use them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aselect_kernels.validation.report import report_markdown, summary_lines
from aselect_kernels.validation.wording import compared


@pytest.mark.parametrize("ours,theirs,text", [
    (8, 80, "10.0x fewer forward samples"),
    (36, 24, "1.5x more forward samples"),
    (24, 24, "the same forward samples"),
    (100, 101, "1.01x fewer forward samples"),
    (1000, 1001, "about the same forward samples (slightly fewer)"),
    (0, 5, "forward samples: 0 vs 5"),
])
def test_compared_examples(ours, theirs, text):
    assert compared(ours, theirs, "forward samples", "fewer") == text


@given(st.floats(1e-3, 1e6), st.floats(1e-3, 1e6))
def test_the_word_follows_the_figures(ours, theirs):
    """The direction word matches which figure is smaller, and the factor is the larger over the smaller."""
    text = compared(ours, theirs, "wall time")
    if ours == theirs:
        assert text == "the same wall time"
        return
    word = "less" if ours < theirs else "more"
    words = re.findall(r"[a-z]+", text)
    assert word in words and ("more" if word == "less" else "less") not in words
    if not text.startswith("about"):
        factor = float(text.split("x")[0])
        ratio = max(ours, theirs) / min(ours, theirs)
        assert factor == pytest.approx(ratio, abs=0.0501 if factor >= 1.1 else 0.00501)  # half the last digit
        assert factor > 1.0


def _report(select_s, select_n, grid_s, grid_n):
    cost = {"select_wall_s": select_s, "select_forward_samples": select_n, "grid_wall_s": grid_s,
            "grid_forward_samples": grid_n, "wall_ratio": grid_s / select_s, "forward_ratio": grid_n / select_n}
    grid = {"taps": ["x"], "timesteps": [0], "raw_pixel_floor": 0.1}
    return {"dataset": "toy", "n_select": 4, "n_train": 10, "n_test": 10, "timesteps": "0", "taps": "x",
            "cost": cost, "classification": {"grid": grid, "metric": "accuracy", "tap_sets": {}}}


@pytest.mark.parametrize("figures,words", [
    ((3.0, 36, 2.0, 24), ("1.5x more wall time", "1.5x more forward samples")),  # the case reported backwards
    ((1.0, 8, 20.0, 80), ("20.0x less wall time", "10.0x fewer forward samples")),
    ((2.0, 24, 2.0, 24), ("the same wall time", "the same forward samples")),
])
def test_reports_say_what_the_figures_say(figures, words):
    report = _report(*figures)
    markdown, summary = report_markdown(report), summary_lines(report)[0]
    for phrase in words:
        assert phrase in markdown and phrase in summary
    for wrong in ("0.7x", "less forward", "fewer wall"):
        assert wrong not in markdown and wrong not in summary
