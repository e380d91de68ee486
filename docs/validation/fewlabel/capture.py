"""Few-label selection runs on the six benchmarks: one labelled pool per benchmark, cached for the analysis.

    python docs/validation/fewlabel/capture.py CACHE fashion_noise mnist_noise digits_noise fashion mnist digits
    python docs/validation/fewlabel/capture.py CACHE --per-class 10 --seed 1 fashion mnist digits

For each benchmark, :data:`PER_CLASS` (or ``--per-class``) labelled images per class are drawn (seeded,
stratified) from the committed grid's probe-training images (the first ``n_train`` of ``load_dataset``'s
training split), and
``select_timestep(..., labels=y)`` runs on them over the committed grid's timesteps and the ``mlp_hidden`` taps,
noise seed 0 (the plan in PLAN.md).  Writes ``CACHE/pool_<dataset>.npz``: the labels, the channel means
``[n, T, C]`` of every tap that the selection's criteria read, and the run's cost; the selection result goes to
``CACHE/selection_<dataset>.json``.  ``--seed s`` (s > 0) seeds both the pool's draw and the noise with s, for
repeated draws, and adds ``_s<s>`` to the file names.
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
PER_CLASS = 20
SEED = 0


def stratified_draw(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` images of each class, drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class]
                                   for k in np.unique(labels)]))


def capture(cache: Path, dataset: str, per_class: int = PER_CLASS, seed: int = SEED) -> None:
    val = json.loads((ROOT / f"validation_{dataset}.json").read_text())
    (xtr, ytr), _, _ = load_dataset(dataset, n_train=val["n_train"])
    idx = stratified_draw(ytr.numpy(), per_class, seed)
    x = to_model_range(xtr[idx])[:, None]
    ts = val["classification"]["grid"]["timesteps"]
    start = time.perf_counter()
    res = select_timestep(load_embedded(), x, ts, "mlp_hidden", labels=ytr[idx], seed=seed, progress=False)
    wall = time.perf_counter() - start
    tag = f"_s{seed}" if seed else ""
    res.to_json(cache / f"selection_{dataset}{tag}.json")
    np.savez_compressed(cache / f"pool_{dataset}{tag}.npz", labels=ytr[idx].numpy(), index=idx,
                        timesteps=np.asarray(res.timesteps), taps=np.asarray(res.taps),
                        samples=res.meta["samples"], forward_s=res.meta["forward_s"], wall_s=wall,
                        fit_s=res.meta["labels"]["fit_s"],
                        **{f"means|{tap}": m.numpy() for tap, m in res.channel_means.items()})
    print(dataset, seed, res.best(), res.meta["labels"]["pick_share"], f"{wall:.0f} s", flush=True)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    args = sys.argv[2:]
    options = {}
    for flag in ("--per-class", "--seed"):
        if flag in args:
            options[flag] = int(args.pop(args.index(flag) + 1))
            args.remove(flag)
    for name in args:
        capture(folder, name, options.get("--per-class", PER_CLASS), options.get("--seed", SEED))
