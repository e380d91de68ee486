"""Add per-sample correctness to committed validation reports, by re-running their classification probe grid.

    python docs/validation/per_sample.py fashion_noise digits_noise mnist_noise digits mnist fashion

For each dataset, ``validation_<dataset>.json`` gives the arguments (dataset, sizes, timesteps, taps, noise,
seed, fit mode); the probe grid is rebuilt exactly as ``validate`` builds it (same splits, same seeded noise, same
fits) and which test images each cell's probe got right (and the raw-pixel probe's) is written into the report's
``classification.grid`` (bit-packed, :mod:`aselect_kernels.validation.packed`).  The check that makes this a
reproduction: every cell's mean correctness must equal the committed accuracy, and the floor the committed floor;
otherwise nothing is written and the differences are printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aselect_kernels.embedded.model import load_embedded
from aselect_kernels.images import to_model_range
from aselect_kernels.validation.datasets import load_dataset
from aselect_kernels.validation.grids import ProbeGrid, probe_grid
from aselect_kernels.validation.packed import pack_bool
from aselect_kernels.validation.splits import prepare_splits

ROOT = Path(__file__).resolve().parent


def rebuild(report: dict) -> ProbeGrid:
    """The classification probe grid of a validation report, from its recorded arguments."""
    if report["use_labels"] or report.get("world_size", 1) != 1:
        raise ValueError("only unconditioned single-process reports are rebuilt here")
    model = load_embedded()
    name, seed = report["dataset"], report["seed"]
    (utr, ytr), (ute, yte), _ = load_dataset(name, report["n_train"], report["n_test"], seed)
    xtr, xte = to_model_range(utr)[:, None], to_model_range(ute)[:, None]
    train, test, classes, _ = prepare_splits(model, xtr, ytr, xte, yte, seed=seed)
    if classes != report["classes"]:
        raise ValueError(f"classes {classes} differ from the report's {report['classes']}")
    grid = report["classification"]["grid"]
    return probe_grid(model, (train.x, train.y), (test.x, test.y), report["timesteps"], report["taps"],
                      len(classes), noise=report["noise"], seed=seed, progress=False,
                      batched=grid.get("fit", "batched") == "batched")


def add_per_sample(dataset: str) -> bool:
    """Rebuild, check against the committed metric, and write; ``False`` (nothing written) on a mismatch."""
    path = ROOT / f"validation_{dataset}.json"
    report = json.loads(path.read_text())
    start = time.perf_counter()
    new = rebuild(report)
    wall = time.perf_counter() - start
    cls = report["classification"]["grid"]
    committed = np.asarray(cls["metric"])
    if new.correct is None or new.floor_correct is None:
        raise RuntimeError("the probe grid kept no per-sample correctness")
    acc = new.correct.mean(-1)
    same_cells = new.timesteps == cls["timesteps"] and new.taps == cls["taps"]
    diff = np.abs(acc - committed) if same_cells else np.array([np.inf])
    floor_diff = abs(float(new.floor_correct.mean()) - cls["raw_pixel_floor"])
    if not same_cells or diff.max() > 1e-12 or floor_diff > 1e-12:
        bad = np.argwhere(diff > 1e-12)
        print(f"{dataset}: MISMATCH, nothing written; cells equal: {same_cells}; {len(bad)} of {diff.size} cells "
              f"differ, max {diff.max():.4f}, mean {diff.mean():.5f}; floor differs by {floor_diff:.4f}; "
              f"first: {bad[:5].tolist()}", flush=True)
        return False
    cls["correct"], cls["floor_correct"] = pack_bool(new.correct), pack_bool(new.floor_correct)
    cls["per_sample_rerun"] = {"wall_s": round(wall, 1), "threads": torch.get_num_threads()}
    path.write_text(json.dumps(report, indent=1))
    print(f"{dataset}: {acc.size} cells reproduced exactly; per-sample correctness written ({wall:.0f} s)",
          flush=True)
    return True


if __name__ == "__main__":
    ok = [add_per_sample(d) for d in sys.argv[1:]]
    sys.exit(0 if all(ok) else 1)
