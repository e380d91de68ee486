"""The content checks of a saved selection result (:meth:`~aselect_kernels.result.SelectionResult.from_dict`).

A file is believed only when it is self-consistent: axes of unique names and timesteps, arrays of the table's
shape, counts that are non-negative integers with the same number of samples (live plus flagged) in every cell,
finite totals wherever a cell has live samples, and the choices it stores equal to those its table gives.  Each
failure is one ``ValueError`` that names the file (``where``) and the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .noise import as_timestep
from .scorers import Moments

if TYPE_CHECKING:
    from .result import SelectionResult

_KEYS = ("timesteps", "taps", "scorers", "directions", "primary", "count", "total", "total_sq", "flagged")


def _names(d: dict, key: str, where: str) -> list[str]:
    values = d[key]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{where}: {key} must be a non-empty list of non-empty strings, got {values!r:.80}")
    if len(set(values)) != len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"{where}: {key} must be unique, {twice} appear more than once")
    return list(values)


def _timesteps(d: dict, where: str) -> list[int]:
    values = d["timesteps"]
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: timesteps must be a non-empty list of integers, got {values!r:.80}")
    try:
        if any(isinstance(t, str) for t in values):
            raise TypeError(f"got the string {next(t for t in values if isinstance(t, str))!r}")
        ts = [as_timestep(t) for t in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: timesteps must be integers ({exc})") from None
    if min(ts) < 0:
        raise ValueError(f"{where}: timesteps must be >= 0, got {min(ts)}")
    if len(set(ts)) != len(ts):
        raise ValueError(f"{where}: timesteps must be unique, {sorted({t for t in ts if ts.count(t) > 1})} appear "
                         "more than once")
    return ts


def _arrays(d: dict, shape: tuple[int, ...], where: str) -> dict[str, np.ndarray]:
    try:
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("count", "total", "total_sq", "flagged")}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: malformed field ({exc})") from None
    for k, a in arrays.items():
        if a.shape != shape:
            raise ValueError(f"{where}: {k} has shape {list(a.shape)}, but {shape[0]} timesteps x {shape[1]} taps x "
                             f"{shape[2]} scorers need {list(shape)}")
    for k in ("count", "flagged"):
        a = arrays[k]
        if not (np.isfinite(a).all() and (a >= 0).all() and (a == np.round(a)).all()):
            raise ValueError(f"{where}: {k} must hold non-negative integers")
    live = arrays["count"] > 0
    for k in ("total", "total_sq"):
        bad = live & ~np.isfinite(arrays[k])
        if bad.any():
            cell = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{where}: {k} must be finite in every cell with samples, but cell {list(cell)} "
                             f"(t, tap, scorer) has count {int(arrays['count'][cell])} and {k} {arrays[k][cell]}")
    if (live & (arrays["total_sq"] < 0)).any():
        raise ValueError(f"{where}: total_sq (a sum of squares) must be >= 0")
    samples = arrays["count"] + arrays["flagged"]
    if samples.size and (samples != samples.flat[0]).any():
        raise ValueError(f"{where}: every cell must hold the same number of samples (count + flagged), found "
                         f"{sorted({int(v) for v in samples.flat})[:5]}")
    return arrays


def check_result_dict(d: object, where: str) -> dict[str, Any]:
    """The constructor arguments of a result from its parsed JSON, every field checked (see the module)."""
    if not isinstance(d, dict) or any(k not in d for k in _KEYS):
        missing = [k for k in _KEYS if k not in d] if isinstance(d, dict) else _KEYS
        raise ValueError(f"{where} is not a selection result: missing {', '.join(missing)}")
    timesteps = _timesteps(d, where)
    taps, scorers = _names(d, "taps", where), _names(d, "scorers", where)
    arrays = _arrays(d, (len(timesteps), len(taps), len(scorers)), where)
    directions = d["directions"]
    if not isinstance(directions, dict) or sorted(directions) != sorted(scorers) or any(
            v not in ("max", "min") for v in directions.values()):
        raise ValueError(f"{where}: directions must map each scorer {scorers} to 'max' or 'min'")
    if d["primary"] not in scorers:
        raise ValueError(f"{where}: primary scorer {d['primary']!r} is not among the scorers {scorers}")
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: meta must be an object, got {type(meta).__name__}")
    pairs = meta.get("pair_scorers") or []
    if not isinstance(pairs, list) or any(p not in scorers for p in pairs):
        raise ValueError(f"{where}: meta.pair_scorers {pairs!r:.80} must name scorers among {scorers}")
    images, samples = meta.get("images"), int(arrays["count"].flat[0] + arrays["flagged"].flat[0])
    if isinstance(images, int) and not isinstance(images, bool) and images != samples:
        raise ValueError(f"{where}: meta.images says {images} images, but every cell holds {samples} samples")
    moments = Moments(arrays["count"].astype(np.int64), arrays["total"], arrays["total_sq"],
                      arrays["flagged"].astype(np.int64))
    return {"timesteps": timesteps, "taps": taps, "scorers": scorers, "directions": dict(directions),
            "moments": moments, "primary": d["primary"], "meta": meta}


def check_stored_choices(result: SelectionResult, d: dict, where: str) -> None:
    """The choices a file stores beside its table (``best``, ``best_t_per_tap``), when it stores them, must be
    those the table gives: a file edited in one place and not the other is refused."""
    if "best" in d:
        cell = result._best_or_none()
        want = None if cell is None else {"t": cell[0], "tap": cell[1]}
        if d["best"] != want:
            raise ValueError(f"{where}: best {d['best']!r:.80} is not the table's best cell {want}")
    if "best_t_per_tap" in d and d["best_t_per_tap"] != result.best_t_per_tap():
        raise ValueError(f"{where}: best_t_per_tap does not match the table's best t of each tap")
