"""Re-score the cells a validation run picked on a confirmation split that no pick and no probe saw.

    python -m aselect_kernels.validation.confirm runs/validation fashion fashion_noise mnist mnist_noise

``aselect validate`` chooses the grid's best (t, tap) on its test split, so that cell's margin over raw pixels, and
every gap measured against it, is biased upwards (the winner's curse).  This script takes, from
``validation_<dataset>.json`` in the folder (and ``label_free.json`` when present), the cells already chosen on
the tap set ``mlp_hidden``: the grid's best cell, the same tap at the smallest t, each registered scorer's joint
pick (its default direction), the smallest-t and t ~ 100 rules' cells, and each label-free candidate's pick.  It
then trains the same probes on the same training images (the first ``n_train`` of the split) and scores them, with
the raw-pixel probe, on the training-split images that the run did not use: Fashion-MNIST's shipped subset has
4000 training images, the MNIST subset 4000 after its test split, so 3000 (noisy sets: 3700) remain.  Digits has
none left.  Intervals are paired bootstrap 95 % intervals over the confirmation images.

Writes ``confirm_<dataset>.json`` to the folder and prints one table per dataset.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..embedded.model import load_embedded
from ..images import to_model_range
from ..scorers import get_scorer
from .compare import paired_bootstrap_ci
from .datasets import load_dataset
from .grids import probe_grid

TAP_SET = "mlp_hidden"
#: The training pool of each dataset's split (all its training images), of which the run used the first n_train.
POOL = {"fashion": 4000, "fashion_noise": 4000, "mnist": 4000, "mnist_noise": 4000}
REGISTERED = ("sf", "token_var", "hfr", "hfr_centered", "chan_entropy")


def chosen_cells(folder: Path, dataset: str) -> dict[str, tuple[int, str]]:
    """``{label: (t, tap)}`` of every cell the run chose on :data:`TAP_SET`."""
    cls = json.loads((folder / f"validation_{dataset}.json").read_text())["classification"]
    sets = cls["tap_sets"]
    rep = sets[TAP_SET] if TAP_SET in sets else sets["all"]  # a run over the preset alone names it "all"
    best = rep["best"]
    ts = cls["grid"]["timesteps"]
    cells = {"grid best": (best["t"], best["tap"]), "grid best's tap at the smallest t": (min(ts), best["tap"])}
    for name in REGISTERED:
        key = f"{name}:{get_scorer(name).direction}"
        if key in rep["scorers"]:
            j = rep["scorers"][key]["joint"]
            cells[key] = (j["t"], j["tap"])
    for rule in ("smallest_t", "t100"):
        j = rep["trivial"][rule]["joint"]
        cells[f"rule {rule}"] = (j["t"], j["tap"])
    lf = folder / "label_free.json"
    if lf.is_file():
        reports = json.loads(lf.read_text())
        if dataset in reports:
            sets = reports[dataset]["tap_sets"]
            part = sets[TAP_SET] if TAP_SET in sets else sets["all"]
            for key, r in part["scorers"].items():
                if key.endswith(":max") or key.startswith("perank"):
                    cells[f"candidate {key}"] = (r["joint"]["t"], r["joint"]["tap"])
    return cells


def confirm(folder: Path, dataset: str, pool: int | None = None) -> dict:
    """Train on the run's probe-training images, score every chosen cell and raw pixels on the unused ones."""
    val = json.loads((folder / f"validation_{dataset}.json").read_text())
    n_train = val["n_train"]
    (xtr, ytr), _, k = load_dataset(dataset, n_train=pool or POOL[dataset])
    if len(xtr) <= n_train:
        raise ValueError(f"{dataset}: no training images beyond the {n_train} the probes use")
    cells = chosen_cells(folder, dataset)
    ts = sorted({t for t, _ in cells.values()})
    taps = sorted({tap for _, tap in cells.values()})
    x = to_model_range(xtr)[:, None]
    grid = probe_grid(load_embedded(), (x[:n_train], ytr[:n_train]), (x[n_train:], ytr[n_train:]), ts, taps, k,
                      seed=val["seed"], progress=False)
    floor = grid.floor_correct
    rows = {}
    for label, (t, tap) in cells.items():
        c = grid.correct[ts.index(t), grid.taps.index(tap)]
        lo, hi = paired_bootstrap_ci(c, floor[None])[0]
        rows[label] = {"t": t, "tap": tap, "accuracy": 100 * float(c.mean()),
                       "vs_raw_pixels": {"margin": 100 * float(c.mean() - floor.mean()), "ci95": [lo, hi]}}
    best = grid.correct[ts.index(cells["grid best"][0]), grid.taps.index(cells["grid best"][1])]
    for row in rows.values():
        c = grid.correct[ts.index(row["t"]), grid.taps.index(row["tap"])]
        lo, hi = paired_bootstrap_ci(best, c[None])[0]
        row["below_grid_best"] = {"gap": 100 * float(best.mean() - c.mean()), "ci95": [lo, hi]}
    return {"dataset": dataset, "n_train": n_train, "n_confirm": int(len(xtr) - n_train), "tap_set": TAP_SET,
            "raw_pixels": 100 * float(floor.mean()), "cells": rows, "wall_s": round(grid.wall_s, 1)}


def main(folder: Path, datasets: list[str]) -> None:
    for d in datasets:
        rep = confirm(folder, d)
        (folder / f"confirm_{d}.json").write_text(json.dumps(rep, indent=1))
        print(f"\n{d}: {rep['n_confirm']} confirmation images, probes on {rep['n_train']}; raw pixels "
              f"{rep['raw_pixels']:.2f}")
        print("| cell (chosen on the test split) | (t, tap) | accuracy | vs raw pixels | below the grid best's cell |")
        print("|---|---|---|---|---|")
        for label, r in rep["cells"].items():
            v, g = r["vs_raw_pixels"], r["below_grid_best"]
            tap = r["tap"].replace("transformer_blocks.", "tb")
            print(f"| {label} | ({r['t']}, {tap}) | {r['accuracy']:.2f} | {v['margin']:+.2f} "
                  f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}] | {g['gap']:.2f} [{g['ci95'][0]:.2f}, "
                  f"{g['ci95'][1]:.2f}] |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["fashion", "fashion_noise"])
