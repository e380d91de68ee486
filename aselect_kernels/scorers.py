"""Scorers: per-sample or across-image scores from tapped features, each with a selection direction; pluggable.

A scorer either reads one column of the fused statistics (:data:`~aselect_kernels.reference.STAT_NAMES`),
computes its own per-sample value from the raw tapped tensor ``[n, L, C]`` inside the forward (``feature_fn``;
slower, for user experiments), or scores a cell across images from the fused per-channel token means of two noise
draws of every image (``pair_fn(means_a [N, C], means_b [N, C]) -> scalar``; selection then runs the forward a
second time, with ``seed + 1``).  ``direction`` is ``"max"`` (argmax over t) or ``"min"``; callers may override it.

Per-timestep scores aggregate per-sample scores over images as count-weighted sums (:class:`Moments`): any
chunking, or sharding across devices followed by :meth:`Moments.merge`, gives the same table.  A non-finite
per-sample score (NaN/Inf features, zero energy) is flagged and excluded, never ranked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .constants import DEFAULT_SCORER, SCORERS
from .reference import STAT_NAMES, signal_fraction

DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Scorer:
    """A named score: a stats column (``stat``) or a raw-feature function (``feature_fn``), and a direction."""

    name: str
    direction: str
    stat: str | None = None
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    doc: str = ""
    pair_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"scorer {self.name!r}: direction must be 'max' or 'min', got {self.direction!r}")
        if sum(f is not None for f in (self.stat, self.feature_fn, self.pair_fn)) != 1:
            raise ValueError(f"scorer {self.name!r}: give exactly one of stat=, feature_fn= or pair_fn=")
        if self.stat is not None and self.stat not in STAT_NAMES:
            raise ValueError(f"scorer {self.name!r}: unknown statistic {self.stat!r} (have {STAT_NAMES})")


_REGISTRY: dict[str, Scorer] = {}


def register_scorer(scorer: Scorer, overwrite: bool = False) -> Scorer:
    """Add a scorer to the registry (``overwrite=True`` to replace one of the same name)."""
    if scorer.name in _REGISTRY and not overwrite:
        raise ValueError(f"a scorer named {scorer.name!r} is already registered")
    _REGISTRY[scorer.name] = scorer
    return scorer


def get_scorer(name: str | Scorer) -> Scorer:
    if isinstance(name, Scorer):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; registered: {sorted(_REGISTRY)}") from None


def list_scorers() -> list[Scorer]:
    return list(_REGISTRY.values())


_BUILT_IN = {s.name: s for s in (
    Scorer("hfr", "max", stat="hfr",
           doc="high-frequency energy ratio, per-channel mean kept (A-SelecT's frequency importance)"),
    Scorer("hfr_centered", "min", stat="hfr_centered",
           doc="high-frequency energy ratio after removing each channel's token mean"),
    Scorer("token_var", "max", stat="token_var", doc="mean over channels of the unbiased variance across tokens"),
    Scorer("chan_entropy", "min", stat="chan_entropy", doc="mean token entropy of the softmax over channels"),
    Scorer("sf", "max", pair_fn=signal_fraction,
           doc="signal fraction: share of the across-image variance of the token means that the image explains "
               "rather than the noise draw (two draws per image)"),
)}
for _name in SCORERS:  # the order and names the command line offers
    register_scorer(_BUILT_IN[_name])
get_scorer(DEFAULT_SCORER)  # the default is one of them


@dataclass
class Moments:
    """Count-weighted sums of per-sample scores over images, per cell; merge exactly across chunks/shards.

    Arrays share one shape (e.g. ``[T, P, S]``).  ``flagged`` counts excluded non-finite samples.
    """

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    flagged: np.ndarray

    @classmethod
    def from_population(cls, value: np.ndarray, count: np.ndarray, flagged: np.ndarray) -> Moments:
        """One value per cell taken across ``count`` images (a ``pair_fn`` scorer): mean ``value``, spread 0.
        A non-finite value counts as no image."""
        v = np.asarray(value, dtype=np.float64)
        ok = np.isfinite(v)
        n = np.where(ok, np.asarray(count), 0)
        z = np.where(ok, v, 0.0)
        return cls(n, z * n, z * z * n, np.asarray(flagged) + np.where(ok, 0, np.asarray(count)))

    @classmethod
    def from_samples(cls, values: np.ndarray, axis: int = 0) -> Moments:
        """Aggregate per-sample ``values`` along ``axis`` (the image axis), in float64, non-finite excluded."""
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        z = np.where(ok, v, 0.0)
        return cls(ok.sum(axis), z.sum(axis), (z * z).sum(axis), (~ok).sum(axis))

    def merge(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq,
                       self.flagged + other.flagged)

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation over images (ddof=1; 0 for a single image, NaN for none)."""
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (self.total_sq - self.total * self.mean) / np.maximum(n - 1, 1)
        return np.where(n > 1, np.sqrt(np.maximum(var, 0.0)), np.where(n == 1, 0.0, np.nan))


def pick(values: np.ndarray, direction: str) -> int:
    """Index of the best finite value under ``direction`` (first on ties); raises if none is finite."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = np.isfinite(v)
    if not ok.any():
        raise ValueError("no finite score to select from: every sample was flagged")
    masked = np.where(ok, v, -np.inf if direction == "max" else np.inf)
    return int(np.argmax(masked) if direction == "max" else np.argmin(masked))
