"""Probe accuracies of every ``mlp_hidden`` tap at the picked timesteps, on a confirmation split no choice saw.

    python docs/validation/fewlabel/confirm_grid.py CACHE docs/validation/fewlabel fashion_noise mnist_noise mnist

For each dataset the probes train on the same images as the committed grid (the first ``n_train`` of
``validation_<dataset>.json``) and are scored on the next :data:`N_CONFIRM` training-split images
(:data:`SPLIT_LEFT` where fewer are left), which neither the committed grid nor any selection here used.  The
timesteps (amended in PLAN.md before any of these accuracies existed): the committed grid's best t and every t that
a pick names (:func:`picks.named_timesteps`: every few-label draw cached in ``CACHE``, every label-free pick, every
fixed rule).  Writes ``confirm_grid_<dataset>.npz`` (which confirmation images each probe got right, and the
raw-pixel probe's).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from picks import named_timesteps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_CONFIRM = 1000
#: Fewer images left: digits_noise's training split holds 1297 images, 300 of them the grid's.  (``digits`` has
#: none left: its 1000 training images are all the grid's.)
SPLIT_LEFT = {"digits_noise": 997}


def confirm_grid(dataset: str, timesteps: list[int]) -> dict[str, np.ndarray]:
    val = json.loads((ROOT / f"validation_{dataset}.json").read_text())
    n_train = val["n_train"]
    (xtr, ytr), _, k = load_dataset(dataset, n_train=n_train + SPLIT_LEFT.get(dataset, N_CONFIRM))
    x = to_model_range(xtr)[:, None]
    grid = probe_grid(load_embedded(), (x[:n_train], ytr[:n_train]), (x[n_train:], ytr[n_train:]),
                      timesteps, "mlp_hidden", k, seed=val["seed"], progress=False)
    return {"timesteps": np.asarray(grid.timesteps), "taps": np.asarray(grid.taps), "correct": grid.correct,
            "floor_correct": grid.floor_correct, "wall_s": np.asarray(grid.wall_s),
            "forward_samples": np.asarray(grid.forward_samples)}


def main(cache: Path, folder: Path, datasets: list[str]) -> None:
    for d in datasets:
        ts = named_timesteps(cache, d)
        print(d, "timesteps", ts, flush=True)
        out = confirm_grid(d, ts)
        np.savez_compressed(folder / f"confirm_grid_{d}.npz", **out)
        print(d, out["timesteps"].tolist(), (100 * out["correct"].mean(-1)).round(2).tolist(),
              f"{float(out['wall_s']):.0f} s", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
