"""Few-label selection: a cross-validated, closed-form criterion per (timestep, tap) from a handful of labels.

Selection given labels reads the per-channel token means that the fused statistics already return (one forward,
no second read of the taps) and scores every cell by a leave-one-out accuracy over the labelled images:

* ``ridge_loo`` (the default): ridge regression to one-hot targets on the standardised means, ``lam``
  (:data:`RIDGE_LAMBDA`), unpenalised intercept; the leave-one-out predictions come from the hat matrix
  ``H = 11'/n + K (K + lam I)^-1`` with ``K = Z Z'``: ``(Hy - h_ii y_i) / (1 - h_ii)``;
* ``ncm_loo``: nearest class mean by cosine similarity, each image's own class mean taken without it.

Features are standardised once per cell over all the labelled images (the left-out image included), as the
criterion's definition.  A bootstrap over the labelled images (their leave-one-out outcomes resampled, paired
across cells) says how often the pick stays the pick, and which cells it cannot tell from the pick.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .constants import LABEL_CRITERIA

#: Ridge penalty on standardised features (see docs/validation/fewlabel/PLAN.md for the evidence).
RIDGE_LAMBDA = 30.0
#: Bootstrap resamples over the labelled images.
RESAMPLES = 1000


def check_labels(labels: Sequence[int] | np.ndarray | torch.Tensor, n_images: int) -> np.ndarray:
    """Class indices ``0..K-1`` (sorted order of the given integers) of ``n_images`` labelled images; at least two
    classes and two images of each (a leave-one-out class mean needs one left)."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n_images or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"labels must be integers [N={n_images}] (one per image), got {y.dtype} {list(y.shape)}")
    classes, idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"few-label selection needs at least 2 classes, got {classes.tolist()}")
    if counts.min() < 2:
        raise ValueError(f"few-label selection needs 2 images of each class; class {classes[counts.argmin()]} "
                         f"has {counts.min()}")
    return idx.astype(np.int64)


def draw_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``per_class`` images of each class (all of a smaller class), drawn without replacement."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == k))[:per_class] for k in np.unique(y)]))


def criterion_for(scorer: object, labels: object) -> str | None:
    """The label criterion that selects: ``scorer`` when it names one, the default when labels are given and no
    scorer is named, else ``None``.  A label criterion without labels raises."""
    if isinstance(scorer, str) and scorer in LABEL_CRITERIA:
        if labels is None:
            raise ValueError(f"scorer {scorer!r} needs labels: pass labels=")
        return scorer
    return LABEL_CRITERIA[0] if scorer is None and labels is not None else None


def standardise(f: np.ndarray) -> np.ndarray:
    """Per-channel z-scores over the rows (axis -2), float64; a constant channel becomes 0."""
    f = np.asarray(f, dtype=np.float64)
    sd = f.std(-2, keepdims=True)
    return np.where(sd > 1e-12 * (1 + np.abs(f).max(-2, keepdims=True)), (f - f.mean(-2, keepdims=True)) /
                    np.where(sd > 0, sd, 1.0), 0.0)


def ridge_loo_correct(f: np.ndarray, y: np.ndarray, lam: float = RIDGE_LAMBDA) -> np.ndarray:
    """Leave-one-out correctness ``[..., n]`` of ridge to one-hot targets on ``f [..., n, C]`` (standardised
    here), closed form from the hat matrix."""
    z = standardise(f)
    n, k = z.shape[-2], int(y.max()) + 1
    s, u = np.linalg.eigh(z @ np.swapaxes(z, -1, -2))  # K = Z Z' = U diag(s) U'
    shrink = np.clip(s, 0.0, None) / (np.clip(s, 0.0, None) + lam)
    hat = (u * shrink[..., None, :]) @ np.swapaxes(u, -1, -2) + 1.0 / n  # Z is centred: K 1 = 0
    onehot = np.eye(k)[y]
    fitted = hat @ onehot
    h = np.diagonal(hat, axis1=-2, axis2=-1)[..., None]
    loo = (fitted - h * onehot) / (1.0 - h)
    return loo.argmax(-1) == y


def ncm_loo_correct(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out correctness ``[..., n]`` of the nearest class mean (cosine) on standardised ``f [..., n, C]``."""
    z = standardise(f)
    onehot = np.eye(int(y.max()) + 1)[y]  # [n, k]
    counts = onehot.sum(0)
    sums = np.swapaxes(z, -1, -2) @ onehot  # [..., C, k]
    own = (sums[..., :, y].swapaxes(-1, -2) - z) / (counts[y] - 1.0)[:, None]  # own class without the image
    means = sums / counts
    norm_z = np.linalg.norm(z, axis=-1)
    sims = (z @ means) / (norm_z[..., None] * np.linalg.norm(means, axis=-2)[..., None, :] + 1e-12)  # [..., n, k]
    own_sim = (z * own).sum(-1) / (norm_z * np.linalg.norm(own, axis=-1) + 1e-12)
    sims = np.where(onehot > 0, own_sim[..., None], sims)
    return sims.argmax(-1) == y


_CORRECT = {"ridge_loo": ridge_loo_correct, "ncm_loo": ncm_loo_correct}


@dataclass
class Certainty:
    """How sure the pick is: the share of bootstrap resamples that pick the same cell, and the cells whose paired
    95 % interval of ``score(pick) - score(cell)`` reaches 0 (the pick among them)."""

    pick: int
    share: float
    tied: list[int]
    resamples: int


def bootstrap(correct: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> Certainty:
    """Resample the labelled images of ``correct [n, cells]`` (non-finite: dead cells), paired across cells."""
    ok = np.isfinite(correct).all(0)
    c = np.where(np.isfinite(correct), correct, 0.0)
    n = c.shape[0]
    score = np.where(ok, c.mean(0), -np.inf)
    pick = int(np.argmax(score))
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples) / n
    boot = np.where(ok, counts @ c, -np.inf)  # [B, cells]
    share = float((boot.argmax(1) == pick).mean())
    lo = np.percentile(boot[:, [pick]] - np.where(ok, boot, np.nan), 2.5, axis=0)
    tied = [int(i) for i in np.flatnonzero(ok & (lo <= 0))]
    return Certainty(pick, share, tied, resamples)


def label_columns(means: dict[str, torch.Tensor], taps: Sequence[str], y: np.ndarray, n_t: int
                  ) -> np.ndarray:
    """Per-image leave-one-out correctness ``[n, T, P, len(LABEL_CRITERIA)]`` from each tap's channel means
    ``[n * T, C]`` (image-major); a cell with a non-finite mean is NaN (dead)."""
    n = len(y)
    out = np.full((n, n_t, len(taps), len(LABEL_CRITERIA)), np.nan)
    for p, tap in enumerate(taps):
        f = means[tap].reshape(n, n_t, -1).double().numpy().swapaxes(0, 1)  # [T, n, C]
        live = np.isfinite(f).all((1, 2))
        for c, name in enumerate(LABEL_CRITERIA):
            out[:, live, p, c] = _CORRECT[name](f[live], y).T
    return out


def label_meta(values: np.ndarray, criterion: str, y: np.ndarray, timesteps: list[int], taps: list[str],
               seed: int, fit_s: float) -> dict:
    """What the result's ``meta["labels"]`` says: the criterion, the classes' counts, the pick and its certainty."""
    col = values[..., LABEL_CRITERIA.index(criterion)].reshape(len(y), -1)
    start = time.perf_counter()
    cert = bootstrap(col, seed=seed)
    n_p = len(taps)

    def cell(i: int) -> list:
        return [timesteps[i // n_p], taps[i % n_p]]

    return {"criterion": criterion, "lambda": RIDGE_LAMBDA if criterion == "ridge_loo" else None,
            "images": int(len(y)), "per_class": np.bincount(y).tolist(), "pick": cell(cert.pick),
            "pick_share": cert.share, "tied": [cell(i) for i in cert.tied], "resamples": cert.resamples,
            "fit_s": round(fit_s + time.perf_counter() - start, 4)}


def summary(meta: dict) -> str:
    """One line on the few-label pick's certainty (from ``meta["labels"]``)."""
    t, tap = meta["pick"]
    others = len(meta["tied"]) - 1
    tie = f"; {others} other cell{'s' if others != 1 else ''} tied with it" if others else "; no cell tied with it"
    return (f"few-label {meta['criterion']} on {meta['images']} labelled images: ({t}, {tap}) picked in "
            f"{100 * meta['pick_share']:.0f}% of {meta['resamples']} bootstrap resamples{tie} (paired 95% interval)")
