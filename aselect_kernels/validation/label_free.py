"""Candidate label-free criteria that need two noise draws or several images, read against the probe grids.

    python -m aselect_kernels.validation.label_free runs/validation fashion digits fashion_noise digits_noise

For each dataset, the token-mean features of the 64 selection images (the first 64 training images of
``load_dataset``, as ``aselect validate`` uses) are captured at every tap of the validation grid with two noise
seeds (0, the selection's, and 1), cached as ``pooled_<dataset>.npz`` in the folder, and scored per (t, tap):

* ``sf``: fraction of the across-image variance that the image explains rather than the noise draw, per channel
  ``1 - Var(f0 - f1) / (Var f0 + Var f1)``, averaged over channels;
* ``bw``: across-image variance of the token mean (mean over channels) over the mean within-image token variance
  (the ``token_var`` column of ``selection_<dataset>.json``);
* ``stab``: linear CKA of the features with those at the neighbouring timesteps of the grid (mean of the two);
* ``perank``: effective rank of the standardized features across the 64 images;
* ``sf_bw`` and ``sf_stab``: the products.

Each is read in both directions with :func:`.compare.compare` against ``validation_<dataset>.json``
of the same folder, and ``label_free.json`` collects the reports.  The criteria are not registered scorers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..embedded.model import load_embedded
from ..images import to_model_range
from ..result import SelectionResult
from ..scorers import Moments
from ..select import capture_features
from .compare import compare, tap_sets
from .datasets import load_dataset
from .grids import ProbeGrid

NAMES = ("sf", "bw", "stab", "perank", "sf_bw", "sf_stab")
N_SELECT = 64


def pooled_features(folder: Path, dataset: str, timesteps: list[int], taps: list[str]) -> dict[str, np.ndarray]:
    """``{"<seed>|<tap>": [64, T, C]}`` for seeds 0 and 1, from the cache or a fresh capture."""
    cache = folder / f"pooled_{dataset}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            if list(z["timesteps"]) == timesteps:
                return {k: z[k] for k in z.files if k != "timesteps"}
    (utr, _), _, _ = load_dataset(dataset)
    model = load_embedded()
    x = to_model_range(utr[:N_SELECT])[:, None]
    out = {}
    for seed in (0, 1):
        feats, _ = capture_features(model, x, timesteps, taps, pool=True, seed=seed, progress=False)
        out.update({f"{seed}|{k}": v.numpy() for k, v in feats.items()})
    np.savez_compressed(cache, timesteps=np.asarray(timesteps), **out)
    return out


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear centred kernel alignment of two feature matrices over the same rows."""
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b) + 1e-30))


def population_erank(f: np.ndarray) -> float:
    """exp(entropy) of the normalized squared singular values of the standardized rows."""
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    s = np.linalg.svd(f, compute_uv=False) ** 2
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def criteria(pooled: dict[str, np.ndarray], taps: list[str], token_var: np.ndarray) -> np.ndarray:
    """``[T, P, len(NAMES)]`` criterion values; ``token_var`` is ``[T, P]`` (mean over the same images)."""
    n_t = pooled[f"0|{taps[0]}"].shape[1]
    out = np.zeros((n_t, len(taps), len(NAMES)))
    for p, tap in enumerate(taps):
        f0, f1 = pooled[f"0|{tap}"].astype(np.float64), pooled[f"1|{tap}"].astype(np.float64)
        for t in range(n_t):
            a, b = f0[:, t], f1[:, t]
            total = a.var(0, ddof=1) + b.var(0, ddof=1) + 1e-12
            sf = float(np.mean(1.0 - (a - b).var(0, ddof=1) / total))
            bw = float(a.var(0, ddof=1).mean() / (token_var[t, p] + 1e-12))
            stab = float(np.mean([linear_cka(a, f0[:, u]) for u in (t - 1, t + 1) if 0 <= u < n_t]))
            out[t, p] = [sf, bw, stab, population_erank(a), sf * bw, sf * stab]
    return out


def evaluate(folder: Path, dataset: str) -> dict:
    val = json.loads((folder / f"validation_{dataset}.json").read_text())
    sel = json.loads((folder / f"selection_{dataset}.json").read_text())
    g = val["classification"]["grid"]
    taps, ts = g["taps"], g["timesteps"]
    tv = np.asarray(sel["mean"])[:, [sel["taps"].index(t) for t in taps], sel["scorers"].index("token_var")]
    values = criteria(pooled_features(folder, dataset, ts, taps), taps, tv)
    result = SelectionResult(ts, taps, list(NAMES), dict.fromkeys(NAMES, "max"),
                             Moments.from_samples(values[None], axis=0), NAMES[0], {})
    grid = ProbeGrid(ts, taps, np.asarray(g["metric"]), "accuracy", g["raw_pixel_floor"], 0, 0.0)
    return compare(result, grid, tap_sets(taps))


def main(folder: Path, datasets: list[str]) -> None:
    reports = {d: evaluate(folder, d) for d in datasets}
    (folder / "label_free.json").write_text(json.dumps(reports, indent=1))
    sets = ["all", "mlp_hidden"]
    print("| criterion | " + " | ".join(f"{d} ({s}) per-tap gap, joint pick, gap" for d in datasets for s in sets
                                          if s in reports[d]["tap_sets"]) + " |")
    for key in reports[datasets[0]]["tap_sets"]["all"]["scorers"]:
        cells = []
        for d in datasets:
            for s in sets:
                if s in reports[d]["tap_sets"]:
                    r = reports[d]["tap_sets"][s]["scorers"][key]
                    j = r["joint"]
                    tap = j["tap"].replace("transformer_blocks.", "tb")
                    cells.append(f"{r['mean_gap']:.2f}, ({j['t']}, {tap}) {j['gap']:.2f}")
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["fashion", "digits", "fashion_noise", "digits_noise"])
