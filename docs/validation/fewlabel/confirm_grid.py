"""Probe accuracies of every ``mlp_hidden`` tap at a few timesteps, on a confirmation split no choice saw.

    python docs/validation/fewlabel/confirm_grid.py docs/validation/fewlabel fashion_noise mnist_noise fashion mnist

For each dataset the probes train on the same images as the committed grid (the first ``n_train`` of
``validation_<dataset>.json``) and are scored on the next :data:`N_CONFIRM` training-split images, which neither
the committed grid nor any selection here used.  The timesteps are fixed before any few-label pick was read: the
committed grid's best t, the smallest t, and the small t's where the fixed rules and the grid's best cells lie.
Writes ``confirm_grid_<dataset>.npz`` (which confirmation images each probe got right, and the raw-pixel probe's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from aselect_kernels.embedded.model import load_embedded
from aselect_kernels.images import to_model_range
from aselect_kernels.validation.datasets import load_dataset
from aselect_kernels.validation.grids import probe_grid

ROOT = Path(__file__).resolve().parents[1]
N_CONFIRM = 1000
TIMESTEPS = {"fashion": [0, 10, 25], "mnist": [0, 10, 25], "fashion_noise": [0, 25, 50, 100],
             "mnist_noise": [0, 25, 50, 100]}


def confirm_grid(dataset: str) -> dict[str, np.ndarray]:
    val = json.loads((ROOT / f"validation_{dataset}.json").read_text())
    n_train = val["n_train"]
    (xtr, ytr), _, k = load_dataset(dataset, n_train=n_train + N_CONFIRM)
    x = to_model_range(xtr)[:, None]
    grid = probe_grid(load_embedded(), (x[:n_train], ytr[:n_train]), (x[n_train:], ytr[n_train:]),
                      TIMESTEPS[dataset], "mlp_hidden", k, seed=val["seed"], progress=False)
    return {"timesteps": np.asarray(grid.timesteps), "taps": np.asarray(grid.taps), "correct": grid.correct,
            "floor_correct": grid.floor_correct, "wall_s": np.asarray(grid.wall_s),
            "forward_samples": np.asarray(grid.forward_samples)}


def main(folder: Path, datasets: list[str]) -> None:
    for d in datasets:
        out = confirm_grid(d)
        np.savez_compressed(folder / f"confirm_grid_{d}.npz", **out)
        print(d, out["timesteps"].tolist(), (100 * out["correct"].mean(-1)).round(2).tolist(),
              f"{float(out['wall_s']):.0f} s", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
