"""Selection read against a probe grid: rank correlations, gaps to the grid's best cell, and their intervals.

:func:`compare` reads a :class:`~aselect_kernels.result.SelectionResult` against a
:class:`~.grids.ProbeGrid`, for every scorer and both directions, per tap and jointly over (t, tap), beside the
trivial rules of :mod:`.rules`, on each of the :func:`tap_sets`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..result import SelectionResult
from .grids import ProbeGrid
from .rules import TRIVIAL_RULES, rule_t

#: Resamples of the paired bootstrap over test images (classification gaps).
BOOTSTRAP_RESAMPLES = 2000


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def paired_bootstrap_ci(reference: np.ndarray, others: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0) -> np.ndarray:
    """95% percentile intervals, in points, of ``acc(reference) - acc(other)`` for each row of ``others``.

    ``reference`` ``[n]`` and ``others`` ``[m, n]`` say which of the same n test samples each probe got right; the
    test samples are resampled with replacement (paired: one resample serves every pair).  Returns ``[m, 2]``.
    """
    n = reference.shape[0]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)  # [B, n]
    diff = reference[None, :].astype(np.float64) - others.astype(np.float64)  # [m, n]
    boot = counts @ diff.T * (100.0 / n)  # [B, m]
    return np.percentile(boot, [2.5, 97.5], axis=0).T


def _mean_of_finite(values: Sequence[float]) -> float:
    """The mean of the finite values; NaN when there are none (a rank correlation is NaN on a constant score)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def compare(selection: SelectionResult, grid: ProbeGrid, tap_sets: dict[str, list[str]] | None = None) -> dict:
    """Score the selection against the grid: for each scorer x direction x tap set, the Spearman rho between score
    and probe metric across t (mean over taps), the per-tap gap (best metric - metric at the selected t, in
    points), and the joint (t, tap) gap; the same gaps for the trivial rules.

    When the grid kept per-sample results (classification), each joint gap gets ``gap_ci95``, a paired bootstrap
    interval over the test images for those two fixed cells (the grid's best is itself picked on the test split,
    which the interval does not undo), and the tap set's best gets its margin over the raw-pixel floor.
    """
    if selection.timesteps != grid.timesteps:
        raise ValueError("selection and probe grid use different timesteps")
    missing = [t for t in grid.taps if t not in selection.taps]
    if missing:
        raise ValueError(f"taps {missing} of the probe grid were not scored by the selection")
    cols = [selection.taps.index(t) for t in grid.taps]
    metric = grid.metric * 100.0
    tap_sets = tap_sets or {"all": list(grid.taps)}
    primary = f"{selection.primary}:{selection.directions[selection.primary]}"
    out: dict = {"metric": grid.metric_name, "primary": primary, "tap_sets": {}}
    for set_name, members in tap_sets.items():
        idx = [grid.taps.index(m) for m in members]
        sub = metric[:, idx]
        best_joint = float(sub.max())
        per_tap_best = sub.max(0)
        rows = {}
        for s, scorer in enumerate(selection.scorers):
            score = selection.mean[:, cols, s][:, idx]
            for direction in ("max", "min"):
                signed = score if direction == "max" else -score
                safe = np.where(np.isfinite(signed), signed, -np.inf)
                t_sel = safe.argmax(0)
                gaps = per_tap_best - sub[t_sel, np.arange(len(idx))]
                rhos = [spearman(signed[:, j], sub[:, j]) for j in range(len(idx))]
                flat = int(np.argmax(safe))
                ti, pj = divmod(flat, len(idx))
                rows[f"{scorer}:{direction}"] = {
                    "scorer": scorer, "direction": direction, "default_direction": selection.directions[scorer],
                    "mean_rho": _mean_of_finite(rhos), "mean_gap": float(gaps.mean()),
                    "selected_t_per_tap": {members[j]: grid.timesteps[int(t_sel[j])] for j in range(len(idx))},
                    "joint": {"t": grid.timesteps[ti], "tap": members[pj], "metric": float(sub[ti, pj]),
                              "gap": best_joint - float(sub[ti, pj])},
                }
        trivial = {}
        mid = len(idx) // 2
        for rule in TRIVIAL_RULES:
            ti = rule_t(rule, grid.timesteps)
            if ti is None:
                per_tap = sub.mean(0)
                joint = float(sub.mean())
                joint_t, joint_tap = None, None
            else:
                per_tap = sub[ti]
                joint = float(sub[ti, mid])
                joint_t, joint_tap = grid.timesteps[ti], members[mid]
            trivial[rule] = {"mean_gap": float((per_tap_best - per_tap).mean()),
                             "joint": {"t": joint_t, "tap": joint_tap, "metric": joint, "gap": best_joint - joint}}
            if ti is not None:
                trivial[rule]["t"] = grid.timesteps[ti]
        bt, bp = divmod(int(np.argmax(sub)), len(idx))
        best = {"t": grid.timesteps[bt], "tap": members[bp], "metric": best_joint, "members": list(members)}
        if grid.correct is not None:
            _add_intervals(grid, best, list(rows.values()) + list(trivial.values()))
        del best["members"]
        out["tap_sets"][set_name] = {"best": best, "scorers": rows, "trivial": trivial}
    return out


def _add_intervals(grid: ProbeGrid, best: dict, rows: list[dict]) -> None:
    """Paired bootstrap intervals of each row's joint gap, and of the best cell's margin over the raw pixels."""
    assert grid.correct is not None and grid.floor_correct is not None
    def cell(t: int, tap: str) -> np.ndarray:
        return grid.correct[grid.timesteps.index(t), grid.taps.index(tap)]

    ref = cell(best["t"], best["tap"])
    t_min = min(grid.timesteps)
    picked = [r for r in rows if r["joint"]["t"] is not None]
    others = np.stack([cell(r["joint"]["t"], r["joint"]["tap"]) for r in picked]
                      + [grid.floor_correct, cell(t_min, best["tap"])])
    ci = paired_bootstrap_ci(ref, others)
    for r, (lo, hi) in zip(picked, ci[:-2], strict=True):
        r["joint"]["gap_ci95"] = [float(lo), float(hi)]
    # each pick against the raw pixels: acc(pick) - acc(floor) = -(acc(floor) - acc(pick))
    floor_ci = paired_bootstrap_ci(grid.floor_correct, others[:-2])
    for r, (lo, hi), mine in zip(picked, floor_ci, others[:-2], strict=True):
        r["joint"]["vs_floor"] = {"margin": 100.0 * float(mine.mean() - grid.floor_correct.mean()),
                                  "ci95": [float(-hi), float(-lo)]}
    # how many cells of the tap set this test split cannot tell from the best (the best's paired interval holds 0)
    members = best["members"]
    cells = np.stack([cell(t, tap) for t in grid.timesteps for tap in members])
    lows = paired_bootstrap_ci(ref, cells)[:, 0]
    best["indistinct"] = {"cells": int((lows <= 0).sum()), "of": len(cells), "n_test": int(ref.shape[0])}
    p, n = best["metric"] / 100.0, ref.shape[0]
    best["se"] = float(100.0 * np.sqrt(p * (1.0 - p) / n))
    best["vs_floor"] = {"margin": best["metric"] - 100.0 * grid.floor, "ci95": [float(ci[-2, 0]), float(ci[-2, 1])]}
    # the interior test: the best cell against the smallest t at the same tap
    best["vs_smallest_t"] = {"t": t_min, "margin": 100.0 * float(ref.mean() - others[-1].mean()),
                             "ci95": [float(ci[-1, 0]), float(ci[-1, 1])]}


def tap_sets(taps: list[str]) -> dict[str, list[str]]:
    """``all`` plus one set per tap kind (query / attention-out / MLP-out / MLP-hidden / block-out) when they can be
    told apart."""
    sets = {"all": list(taps)}
    single = re.compile(r"(^|\.)single_transformer_blocks\.\d+\.")  # Flux's single-stream blocks
    kinds = {"query": lambda t: t.endswith(("to_q", "[q]")),
             "attn_out": lambda t: t.endswith(("attn1", "attn", "attn@0")),
             "mlp_out": lambda t: t.endswith(("ff", ".mlp")) or (t.endswith(".proj_out") and bool(single.search(t))),
             "mlp_hidden": lambda t: t.endswith(("ff.net.0", "mlp.1", "mlp.act", ".act_mlp")),
             "block_out": lambda t: re.search(r"(^|\.)(single_transformer_blocks|transformer_blocks|blocks)\.\d+"
                                              r"(@\d+)?$", t) is not None}
    for kind, test in kinds.items():
        # a token-axis slice ([a:b], Flux's image tokens) does not change the kind
        members = [t for t in taps if test(re.sub(r"\[-?\d*:-?\d*\]$", "", t))]
        if 0 < len(members) < len(taps):
            sets[kind] = members
    return sets
