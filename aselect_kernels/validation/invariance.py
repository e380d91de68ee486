"""Label-free criteria from two views or two noise draws of the same images, and the fixed-rule comparison they are
read against (docs/validation/labelfree2/PLAN.md).

* :func:`retrieval` - top-1 retrieval of one view of each image among the other view's features;
* :func:`linear_cka` (from :mod:`.label_free`) across two noise draws, picked by :func:`plateau_pick`;
* :func:`denoised` and :func:`x0_disagreement` - how much the model's clean-image prediction depends on the draw;
* :func:`lodo_gaps` and :func:`bootstrap_interval` - the leave-one-dataset-out fixed rule and a paired interval.
"""

from __future__ import annotations

import numpy as np

from .label_free import linear_cka as linear_cka

__all__ = ["bootstrap_interval", "denoised", "linear_cka", "lodo_gaps", "plateau_pick", "retrieval",
           "retrieval_pick", "threshold_pick", "x0_disagreement"]


def retrieval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(top-1 accuracy, mean margin)`` of retrieving row ``i`` of ``b`` [N, C] from row ``i`` of ``a`` [N, C].

    Channels are standardised over the rows of both (ddof 0, + 1e-8), rows scaled to unit norm, ``S = a b^T``;
    a query is right when its largest similarity is its own pair's (a tie counts as wrong); the margin is
    ``S_ii - max_{j != i} S_ij``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or len(a) < 2:
        raise ValueError(f"need two [N >= 2, C] arrays of one shape, got {a.shape} and {b.shape}")
    both = np.concatenate([a, b])
    mu, sd = both.mean(0), both.std(0) + 1e-8
    a, b = (a - mu) / sd, (b - mu) / sd
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-30
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-30
    s = a @ b.T
    own = np.diag(s).copy()
    np.fill_diagonal(s, -np.inf)
    rival = s.max(1)
    return float(np.mean(own > rival)), float(np.mean(own - rival))


def retrieval_pick(accuracy: np.ndarray, margin: np.ndarray) -> tuple[int, int]:
    """``(t index, tap index)`` of the largest ``accuracy`` [T, P]; ties go to the larger ``margin``, then the
    smaller t, then the lower tap."""
    acc, mar = np.asarray(accuracy), np.asarray(margin)
    order = np.lexsort((np.arange(acc.size), -mar.ravel(), -acc.ravel()))  # the last key sorts first
    return tuple(int(i) for i in np.unravel_index(order[0], acc.shape))


def plateau_pick(values: np.ndarray, tol: float) -> int:
    """Index of the last entry of ``values`` [T] within ``tol`` of its maximum (the plateau's far end)."""
    v = np.asarray(values, np.float64)
    return int(np.flatnonzero(v >= v.max() - tol)[-1])


def threshold_pick(values: np.ndarray, limit: float) -> int:
    """Index of the last entry of ``values`` [T] at most ``limit``; 0 when none is."""
    hits = np.flatnonzero(np.asarray(values, np.float64) <= limit)
    return int(hits[-1]) if len(hits) else 0


def denoised(x_t: np.ndarray, eps_hat: np.ndarray, alpha_bar: np.ndarray) -> np.ndarray:
    """The DDPM clean-image estimate ``(x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)``; ``alpha_bar`` broadcasts
    against the leading axes of ``x_t`` (one value per sample)."""
    x_t, eps = np.asarray(x_t, np.float64), np.asarray(eps_hat, np.float64)
    ab = np.asarray(alpha_bar, np.float64).reshape(np.shape(alpha_bar) + (1,) * (x_t.ndim - np.ndim(alpha_bar)))
    return (x_t - np.sqrt(1.0 - ab) * eps) / np.sqrt(ab)


def x0_disagreement(xa: np.ndarray, xb: np.ndarray) -> float:
    """``sum_i ||xa_i - xb_i||^2 / (sum_i ||xa_i - mean xa||^2 + sum_i ||xb_i - mean xb||^2)`` over rows ``i``
    (each row flattened): 0 when two draws agree, near 1 when the prediction ignores the image."""
    a = np.asarray(xa, np.float64).reshape(len(xa), -1)
    b = np.asarray(xb, np.float64).reshape(len(xb), -1)
    spread = ((a - a.mean(0)) ** 2).sum() + ((b - b.mean(0)) ** 2).sum()
    return float(((a - b) ** 2).sum() / (spread + 1e-30))


def lodo_gaps(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-dataset-out fixed rule: for ``gaps`` [rules, benchmarks], per benchmark the index of the rule
    with the smallest mean gap over the other benchmarks (ties: the first) and that rule's gap there."""
    g = np.asarray(gaps, np.float64)
    if g.ndim != 2 or g.shape[1] < 2:
        raise ValueError(f"need gaps [rules, benchmarks >= 2], got {g.shape}")
    others = (g.sum(1, keepdims=True) - g) / (g.shape[1] - 1)
    chosen = others.argmin(0)
    return chosen, g[chosen, np.arange(g.shape[1])]


def bootstrap_interval(delta: np.ndarray, level: float, n_boot: int = 10000, seed: int = 0
                       ) -> tuple[float, float]:
    """Percentile interval at ``level`` of the mean of ``delta`` over ``n_boot`` resamples with replacement."""
    d = np.asarray(delta, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
