"""The cells every rule picks on one benchmark's ``mlp_hidden`` grid, from the cached runs and the committed reports.

Shared by ``confirm_grid.py`` (which timesteps the confirmation grid scores) and ``analyse.py`` (the gaps).  Cells
are index pairs ``(t index, tap index)`` into the committed grid restricted to ``mlp_hidden``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from aselect_kernels import fewlabel
from aselect_kernels.result import SelectionResult
from aselect_kernels.validation.compare import compare, tap_sets
from aselect_kernels.validation.grids import ProbeGrid

ROOT = Path(__file__).resolve().parents[1]
KS = (2, 5, 10, 20)
DRAWS = 10
FIXED_T = (25, 50, 100)
LABEL_FREE = ("sf", "hfr", "token_var")
CRITERIA = ("ridge_loo", "ncm_loo")


def grid(dataset: str) -> dict:
    """The committed grid on ``mlp_hidden``: timesteps, taps, accuracy ``[T, 6]`` in points, its best cell."""
    val = json.loads((ROOT / f"validation_{dataset}.json").read_text())
    g = val["classification"]["grid"]
    taps = tap_sets(g["taps"])["mlp_hidden"]
    acc = 100 * np.asarray(g["metric"])[:, [g["taps"].index(t) for t in taps]]
    best = divmod(int(np.argmax(acc)), len(taps))
    return {"timesteps": g["timesteps"], "taps": taps, "acc": acc, "best": best, "val": val}


def pools(cache: Path, dataset: str) -> dict[int, dict]:
    """``{noise seed: pool}`` of every cached few-label capture (``pool_<dataset>[_s<seed>].npz``)."""
    out = {}
    for path in sorted(cache.glob(f"pool_{dataset}*.npz")):
        m = re.fullmatch(rf"pool_{dataset}(?:_s(\d+))?\.npz", path.name)
        if m:
            with np.load(path) as z:
                out[int(m.group(1) or 0)] = {k: z[k] for k in z.files}
    return out


def draws_of(pool: dict) -> dict[int, list[np.ndarray]]:
    """``{k: [image indices of each draw]}``: ten seeded draws of k per class below the pool's size, the pool at it."""
    y, pool_k = pool["labels"], int(np.bincount(pool["labels"]).min())
    return {k: [np.arange(len(y))] if k == pool_k else [fewlabel.draw_per_class(y, k, seed=d) for d in range(DRAWS)]
            for k in KS if k <= pool_k}


def label_columns(pool: dict, taps: list[str], idx: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The draw's labels and each criterion's leave-one-out correctness ``[T, P, n]``."""
    feats = np.stack([pool[f"means|{tap}"] for tap in taps], axis=2)  # [n, T, P, C]
    y = fewlabel.check_labels(pool["labels"][idx], len(idx))
    f = feats[idx].transpose(1, 2, 0, 3)
    return y, {"ridge_loo": fewlabel.ridge_loo_correct(f, y), "ncm_loo": fewlabel.ncm_loo_correct(f, y)}


def pick(correct: np.ndarray) -> tuple[int, int]:
    """The cell with the most leave-one-out hits (the first in t-major order on a tie)."""
    return divmod(int(np.argmax(correct.mean(-1))), correct.shape[1])


def few_label_cells(pool: dict, taps: list[str]) -> dict[int, list[dict[str, tuple[int, int]]]]:
    """``{k: [{criterion: cell} per draw]}``."""
    return {k: [{c: pick(col) for c, col in label_columns(pool, taps, idx)[1].items()} for idx in draws]
            for k, draws in draws_of(pool).items()}


def saved_grid(val: dict) -> ProbeGrid:
    """The committed classification grid as a :class:`ProbeGrid` (per-sample correctness when it was written)."""
    from aselect_kernels.validation.packed import grid_correct

    g = val["classification"]["grid"]
    correct, floor = grid_correct(val["classification"]) if "correct" in g else (None, None)
    return ProbeGrid(g["timesteps"], g["taps"], np.asarray(g["metric"]), g["metric_name"], g["raw_pixel_floor"],
                     g["forward_samples"], g["wall_s"], correct=correct, floor_correct=floor)


def label_free_cells(cache: Path, dataset: str, g: dict) -> dict[int, dict[str, tuple[int, int]]]:
    """``{seed: {scorer: cell}}``: the committed joint picks (seed 0) and those of the repeated draws."""
    def cells(rep: dict) -> dict[str, tuple[int, int]]:
        joint = {s: rep["tap_sets"]["mlp_hidden"]["scorers"][f"{s}:max"]["joint"] for s in LABEL_FREE}
        return {s: (g["timesteps"].index(j["t"]), g["taps"].index(j["tap"])) for s, j in joint.items()}

    out = {0: cells(g["val"]["classification"])}
    paths = sorted(cache.glob(f"label_free_{dataset}_s*.json"))
    if paths:
        probe = saved_grid(g["val"])
        probe.correct = probe.floor_correct = None  # the picks only: no intervals needed
        for path in paths:
            sel = SelectionResult.load(path)
            out[int(path.stem.rsplit("_s", 1)[1])] = cells(compare(sel, probe, {"mlp_hidden": g["taps"]}))
    return out


def fixed_rules(g: dict) -> dict[str, tuple[int, int]]:
    """``{rule: cell}``: the smallest t with the first block, and each t of :data:`FIXED_T` with each block."""
    rules = {"smallest t, block 0": (int(np.argmin(g["timesteps"])), 0)}
    for t in FIXED_T:
        for p in range(len(g["taps"])):
            rules[f"t={t}, block {p}"] = (g["timesteps"].index(t), p)
    return rules


def named_timesteps(cache: Path, dataset: str) -> list[int]:
    """The grid's best t and every t that a pick names: every few-label draw (each criterion, k and cached
    capture), every label-free pick (committed and repeated), every fixed rule."""
    g = grid(dataset)
    cells = [g["best"], *fixed_rules(g).values()]
    for pool in pools(cache, dataset).values():
        cells += [c for rows in few_label_cells(pool, g["taps"]).values() for row in rows for c in row.values()]
    cells += [c for row in label_free_cells(cache, dataset, g).values() for c in row.values()]
    return sorted({g["timesteps"][ti] for ti, _ in cells})
