"""A validation report as people read it: summary lines, markdown tables, and the score-against-probe plot."""

from __future__ import annotations

from collections.abc import Sequence

from ..result import SelectionResult
from .grids import ProbeGrid
from .rules import rule_label
from .wording import compared


def plot_validation(selection: SelectionResult, grid: ProbeGrid, path: str, scorers: Sequence[str] | None = None
                    ) -> None:
    """PNG: for each scorer, the probe metric (left axis) and the score (right axis) against t, at the tap the
    scorer's joint choice selects (or the grid's first tap); the t the scorer chooses at that tap is marked on both
    curves, and each panel has a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scorers or selection.scorers)
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        _, tap = selection.best(name)
        if tap not in grid.taps:  # the joint choice lies outside this grid's taps: show the grid's first tap
            tap = grid.taps[0]
        t_sel = selection.best_t_per_tap(name)[tap]
        p_grid, p_sel, s = grid.taps.index(tap), selection.taps.index(tap), selection.scorers.index(name)
        metric, score = grid.metric[:, p_grid] * 100, selection.mean[:, p_sel, s]
        handles = ax.plot(grid.timesteps, metric, "k-o", ms=3, label=f"probe {grid.metric_name}")
        ax.set_xlabel("t")
        ax.set_ylabel(f"{grid.metric_name} (%)")
        ax2 = ax.twinx()
        handles += ax2.plot(selection.timesteps, score, "r-s", ms=3, label=f"{name} ({selection.directions[name]})")
        ax2.set_ylabel(f"{name} ({selection.directions[name]})", color="r")
        handles += ax.plot([t_sel], [metric[grid.timesteps.index(t_sel)]], "b*", ms=13, label=f"chosen t = {t_sel}")
        ax2.plot([t_sel], [score[selection.timesteps.index(t_sel)]], "b*", ms=13)
        ax.legend(handles=handles, fontsize=6, loc="best")
        ax.set_title(f"{name} @ {tap}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_lines(report: dict) -> list[str]:
    """A readable summary: per task and tap set, each scorer's rho / gaps beside the trivial rules."""
    lines = [f"dataset {report['dataset']}: selection on {report['n_select']} images vs probes on "
             f"{report['n_train']}/{report['n_test']}; selection vs the grid: {_cost_words(report['cost'])}"]
    for task in ("classification", "dense"):
        if task not in report:
            continue
        part = report[task]
        g = part["grid"]
        lines.append(f"[{task}] {part['metric']}: raw-pixel floor {100 * g['raw_pixel_floor']:.2f}")
        for set_name, rep in part["tap_sets"].items():
            b = rep["best"]
            margin = (f"; {b['vs_floor']['margin']:+.2f} over raw pixels, 95% CI "
                      f"[{b['vs_floor']['ci95'][0]:+.2f}, {b['vs_floor']['ci95'][1]:+.2f}]") if "vs_floor" in b else ""
            if "vs_smallest_t" in b:
                v = b["vs_smallest_t"]
                margin += (f"; {v['margin']:+.2f} over t={v['t']} at that tap, 95% CI "
                           f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]")
            lines.append(f"  tap set {set_label(report, set_name)}: grid best {b['metric']:.2f} at (t={b['t']}, "
                         f"{b['tap']}){margin}")
            lines += [f"  verdict: {line}" for line in verdict_lines(part, set_name)]
            for key, row in rep["scorers"].items():
                j = row["joint"]
                tag = " (default dir)" if row["direction"] == row["default_direction"] else ""
                lines.append(f"    {key:<20} rho {row['mean_rho']:+.2f}  per-tap gap {row['mean_gap']:5.2f}  "
                             f"joint ({j['t']}, {j['tap']}) gap {_gap(j)}{tag}")
            for rule, row in rep["trivial"].items():
                lines.append(f"    {'rule ' + rule_label(rule, row):<20}           per-tap gap {row['mean_gap']:5.2f}  "
                             f"joint gap {_gap(row['joint'])}")
    return lines


def _gap(joint: dict) -> str:
    """A joint gap, with its 95% interval when there is one."""
    if "gap_ci95" not in joint:
        return f"{joint['gap']:.2f}"
    lo, hi = joint["gap_ci95"]
    return f"{joint['gap']:.2f} [{lo:.2f}, {hi:.2f}]"


def _cost_words(cost: dict, bold: bool = False) -> str:
    """Selection's wall time and forward samples against the grid's, in words computed from the figures."""
    mark = "**" if bold else ""
    time = compared(cost["select_wall_s"], cost["grid_wall_s"], "wall time")
    samples = compared(cost["select_forward_samples"], cost["grid_forward_samples"], "forward samples", "fewer")
    return f"{mark}{time}{mark} and {mark}{samples}{mark}"


def report_markdown(report: dict) -> str:
    """Markdown tables of a validation report (the measured figures of docs/VALIDATION.md)."""
    c = report["cost"]
    out = [f"### {report['dataset']}: selection on {report['n_select']} images, probes on "
           f"{report['n_train']} train / {report['n_test']} test, timesteps `{report['timesteps']}`, "
           f"taps `{report['taps']}`", "",
           f"Compute: selection {c['select_wall_s']:.1f} s for {c['select_forward_samples']} forward samples; "
           f"exhaustive grid {c['grid_wall_s']:.1f} s for {c['grid_forward_samples']} forward samples plus "
           f"{len(report['classification']['grid']['taps']) * len(report['classification']['grid']['timesteps'])}"
           f" probe fits: selection took {_cost_words(c, bold=True)}.", "",
           "Classification gaps carry a 95% paired bootstrap interval over the test images, in brackets.", ""]
    for task in ("classification", "dense"):
        if task not in report:
            continue
        part = report[task]
        g = part["grid"]
        unit = "accuracy" if part["metric"] == "accuracy" else "mIoU"
        out.append(f"#### {task} ({unit}, %; raw-pixel floor {100 * g['raw_pixel_floor']:.2f})")
        out.append("")
        for set_name, rep in part["tap_sets"].items():
            b = rep["best"]
            extra = ""
            if "vs_floor" in b:
                lo, hi = b["vs_floor"]["ci95"]
                extra = (f" (standard error {b['se']:.2f}); margin over raw pixels {b['vs_floor']['margin']:+.2f} "
                         f"[{lo:+.2f}, {hi:+.2f}]")
            if "vs_smallest_t" in b:
                v = b["vs_smallest_t"]
                extra += (f"; margin over t={v['t']} at the same tap {v['margin']:+.2f} "
                          f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]")
            out += [f"Tap set {set_label(report, set_name, '`')}: grid best **{b['metric']:.2f}** at (t={b['t']}, "
                    f"`{b['tap']}`){extra}.", ""]
            verdict = verdict_lines(part, set_name)
            out += [f"* {line}" for line in verdict] + ([""] if verdict else [])
            out += [
                    "| rule | direction | mean ρ | mean per-tap gap | joint pick (t, tap) | joint value | joint gap |",
                    "|---|---|---|---|---|---|---|"]
            for row in rep["scorers"].values():
                j = row["joint"]
                default = " (default)" if row["direction"] == row["default_direction"] else ""
                out.append(f"| {row['scorer']} | {row['direction']}{default} | {row['mean_rho']:+.2f} | "
                           f"{row['mean_gap']:.2f} | ({j['t']}, `{j['tap']}`) | {j['metric']:.2f} | {_gap(j)} |")
            for rule, row in rep["trivial"].items():
                j = row["joint"]
                pick = "random (expectation)" if j["t"] is None else f"({j['t']}, `{j['tap']}`)"
                out.append(f"| *{rule_label(rule, row)}* | | | {row['mean_gap']:.2f} | {pick} | {j['metric']:.2f} | "
                           f"{_gap(j)} |")
            out.append("")
    return "\n".join(out)


def set_label(report: dict, set_name: str, quote: str = "") -> str:
    """A tap set's name as reports print it: ``all`` is every tap the run scored, named by the taps it was given
    (a run given ``mlp_hidden`` reads ``mlp_hidden (every tap given)``, not ``all``)."""
    if set_name != "all":
        return f"{quote}{set_name}{quote}"
    return f"{quote}{report.get('taps', 'all')}{quote} (every tap given)"


def verdict_lines(part: dict, set_name: str) -> list[str]:
    """The verdict on one tap set in words: does the selection's pick (the default scorer, its own direction) beat
    the raw-pixel probe, and can this test split tell the pick, and the other cells, from the grid's best?"""
    rep = part["tap_sets"][set_name]
    row = rep["scorers"].get(part.get("primary", ""))
    if row is None:
        return []
    j, b = row["joint"], rep["best"]
    pick = f"the pick of {row['scorer']} ({row['direction']}), (t={j['t']}, {j['tap']}),"
    lines = []
    if "vs_floor" in j:
        m, (lo, hi) = j["vs_floor"]["margin"], j["vs_floor"]["ci95"]
        word = "beats" if lo > 0 else "loses to" if hi < 0 else "cannot be told from"
        lines.append(f"{pick} {word} the raw-pixel probe: {m:+.2f} points, 95% CI [{lo:+.2f}, {hi:+.2f}]")
    if "gap_ci95" in j and "indistinct" in b:
        lo, hi = j["gap_ci95"]
        n, k, of = b["indistinct"]["n_test"], b["indistinct"]["cells"], b["indistinct"]["of"]
        split = (f"the {n} test images cannot separate it from the grid's best (gap {j['gap']:.2f}, 95% CI "
                 f"[{lo:.2f}, {hi:.2f}] holds 0)" if lo <= 0 else
                 f"the {n} test images separate it from the grid's best (gap {j['gap']:.2f}, 95% CI [{lo:.2f}, "
                 f"{hi:.2f}])")
        many = f"; the split is too small to separate {k} of the {of} cells from the best" if k > 1 else \
            f"; no other of the {of} cells is within the best's interval"
        lines.append(f"{split}{many}")
    return lines
