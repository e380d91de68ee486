"""The label-free default selection again, on other draws of the selection images and other noise seeds.

    python docs/validation/fewlabel/repeat_label_free.py CACHE 1 2 -- fashion_noise digits_noise mnist_noise

For each dataset and seed s, ``n_select`` images (the committed report's) are drawn at random (seed s) from the
committed grid's probe-training images, and ``select_timestep`` runs on them as ``validate`` runs it (the report's
timesteps, taps and noise; every registered scorer; noise seed s).  The committed selection
(``selection_<dataset>.json``: the first ``n_select`` images, seed 0) is draw 0.  Writes
``CACHE/label_free_<dataset>_s<s>.json`` (the selection result, its drawn image indices in ``meta``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from aselect_kernels.embedded.model import load_embedded
from aselect_kernels.images import to_model_range
from aselect_kernels.select import select_timestep
from aselect_kernels.validation.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def repeat(cache: Path, dataset: str, seed: int) -> None:
    val = json.loads((ROOT / f"validation_{dataset}.json").read_text())
    (xtr, _), _, _ = load_dataset(dataset, val["n_train"], val["n_test"], val["seed"])
    idx = np.sort(np.random.default_rng(seed).permutation(len(xtr))[: val["n_select"]])
    x = to_model_range(xtr[idx])[:, None]
    start = time.perf_counter()
    res = select_timestep(load_embedded(), x, val["timesteps"], val["taps"], noise=val["noise"], seed=seed,
                          progress=False)
    res.meta["repeat"] = {"image_index": idx.tolist(), "seed": seed, "wall_s": time.perf_counter() - start}
    res.to_json(cache / f"label_free_{dataset}_s{seed}.json")
    print(dataset, seed, res.best(), f"{res.meta['repeat']['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    cut = sys.argv.index("--")
    for name in sys.argv[cut + 1:]:
        for s in sys.argv[2:cut]:
            repeat(folder, name, int(s))
