"""The result's table and plots, checked against numpy on synthetic score tables: values, marks, legends, widths."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest

from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments
from aselect_kernels.validation.grids import ProbeGrid
from aselect_kernels.validation.report import plot_validation

matplotlib.use("Agg")

KINDS = ("attn1.to_q", "attn1", "ff.net.0", "ff", "")
DIT_TAPS = [f"transformer_blocks.{i}" + (f".{k}" if k else "") for i in range(6) for k in KINDS]
PLAIN_TAPS = ["blocks.0.attn.qkv[q]", "blocks.0.mlp", "blocks.1.attn.qkv[q]", "blocks.1.mlp"]


def synthetic(taps: list[str], timesteps=(0, 250, 500, 750), n_img: int = 5, seed: int = 0, direction="max"
              ) -> tuple[SelectionResult, np.ndarray]:
    """A result over random per-sample scores ``[B, T, P, 1]``, and those scores."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 1.0, (n_img, len(timesteps), len(taps), 1)) * rng.uniform(0.2, 3.0, (1, 1, len(taps), 1))
    res = SelectionResult(list(timesteps), list(taps), ["token_var"], {"token_var": direction},
                          Moments.from_samples(values, axis=0), "token_var")
    return res, values


def parse_table(text: str) -> dict[str, dict[int, tuple[str, bool]]]:
    """{column label: {t: (mean as printed, starred)}} from every block of the table."""
    cols: dict[str, dict[int, tuple[str, bool]]] = {}
    header: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["t"]:
            header = fields[1:]
        elif header and fields and fields[0].lstrip("-").isdigit() and len(fields) == len(header) + 1:
            for label, cell in zip(header, fields[1:], strict=True):
                mean = cell.split("+-")[0]
                cols.setdefault(label, {})[int(fields[0])] = (mean, cell.endswith("*"))
        else:
            header = header if fields else []
    return cols


@pytest.mark.parametrize("direction", ["max", "min"])
def test_elided_table_shows_the_best_taps_with_numpy_values(direction):
    res, values = synthetic(DIT_TAPS, direction=direction)
    text = res.table()
    mean = values[..., 0].mean(0)  # [T, P]
    best = mean.max(0) if direction == "max" else -mean.min(0)
    expect = [DIT_TAPS[p] for p in sorted(np.argsort(-best, kind="stable")[:8])]
    cols = parse_table(text)
    short = {tap: re.sub(r"transformer_blocks\.(\d+)", r"tb\1", tap) for tap in DIT_TAPS}
    assert sorted(cols) == sorted(short[t] for t in expect)
    for tap in expect:
        p = DIT_TAPS.index(tap)
        chosen = int(mean[:, p].argmax() if direction == "max" else mean[:, p].argmin())
        for ti, t in enumerate(res.timesteps):
            printed, starred = cols[short[tap]][t]
            assert printed == f"{mean[ti, p]:.4f}" and starred == (ti == chosen)
    assert "showing 8 of 30 taps" in text and "* marks each tap's best t" in text
    assert "tbN = transformer_blocks.N" in text and "bN = blocks.N" not in text
    assert max(map(len, text.splitlines())) <= 130


def test_table_legend_for_plain_dit_and_short_tables():
    res, _ = synthetic(PLAIN_TAPS)
    text = res.table()
    assert "* marks each tap's best t" in text and "bN = blocks.N" in text
    assert "tbN" not in text and "showing" not in text
    assert sorted(parse_table(text)) == sorted(t.replace("blocks.", "b") for t in PLAIN_TAPS)


def test_wide_tables_wrap_and_long_names_get_a_key():
    res, values = synthetic(DIT_TAPS)
    text = res.table(max_taps=30)
    assert max(map(len, text.splitlines())) <= 130
    assert len(parse_table(text)) == 30  # every tap, over several blocks of columns
    long = [f"encoder.layers.{i}.self_attention.output_projection.dense" for i in range(3)]
    res, values = synthetic(long)
    text = res.table()
    cols = parse_table(text)
    assert sorted(cols) == ["[1]", "[2]", "[3]"] and all(f"[{i + 1}] {tap}" in text for i, tap in enumerate(long))
    assert cols["[2]"][0][0] == f"{values[:, 0, 1, 0].mean():.4f}"


def test_flagged_count_is_worded_right():
    res, values = synthetic(PLAIN_TAPS[:1], n_img=3)
    values[1, 2, 0, 0] = np.nan
    res.moments = Moments.from_samples(values, axis=0)
    assert "WARNING: 1 non-finite sample score flagged and excluded" in res.table()
    values[2, 2, 0, 0] = np.inf
    res.moments = Moments.from_samples(values, axis=0)
    assert "WARNING: 2 non-finite sample scores flagged and excluded" in res.table()


def test_plot_labels_every_tap_and_marks_the_choice():
    import matplotlib.pyplot as plt

    res, values = synthetic(DIT_TAPS)
    fig = res._figure(plt)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(KINDS)  # one panel per tap kind
    mean = values[..., 0].mean(0)
    seen = {}
    for ax in axes:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for line in ax.get_lines():
            if line.get_label().startswith("chosen"):
                star = (line.get_xdata()[0], line.get_ydata()[0])
            else:
                seen[line.get_label()] = line.get_ydata()
            assert line.get_label() in legend
    t_best, tap_best = res.best()
    ti, p = int(np.unravel_index(mean.argmax(), mean.shape)[0]), int(mean.max(0).argmax())
    assert (t_best, tap_best) == (res.timesteps[ti], DIT_TAPS[p]) and star == (t_best, pytest.approx(mean[ti, p]))
    short = [re.sub(r"transformer_blocks\.(\d+)", r"tb\1", t) for t in DIT_TAPS]
    assert sorted(seen) == sorted(short)
    for p, label in enumerate(short):
        np.testing.assert_allclose(seen[label], mean[:, p])
    plt.close(fig)


def test_validation_plot_has_a_legend_and_marks_the_chosen_t(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), real(self, *a, **k))[1])
    res, values = synthetic(PLAIN_TAPS)
    metric = np.random.default_rng(1).uniform(0.3, 0.9, (4, len(PLAIN_TAPS)))
    grid = ProbeGrid(res.timesteps, PLAIN_TAPS, metric, "accuracy", 0.2, 0, 0.0)
    plot_validation(res, grid, str(tmp_path / "v.png"))
    (fig,) = saved
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    mean = values[..., 0].mean(0)
    p = int(mean.max(0).argmax())
    t_sel = res.timesteps[int(mean[:, p].argmax())]
    assert labels == ["probe accuracy", "token_var (max)", f"chosen t = {t_sel}"]
    star = [line for line in ax.get_lines() if line.get_label().startswith("chosen")][0]
    assert star.get_xdata()[0] == t_sel
    assert star.get_ydata()[0] == pytest.approx(100 * metric[res.timesteps.index(t_sel), p])
    assert ax.get_title() == f"token_var @ {PLAIN_TAPS[p]}"
