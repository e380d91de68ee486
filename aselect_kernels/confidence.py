"""How sure a selection is: a bootstrap over the selection images, the cells tied with the best, and the grid's edges.

Every selection resamples its images with replacement (:data:`RESAMPLES` times, seeded by the selection's seed)
and recomputes each cell's score from the resample: the mean of the per-image scores for a per-sample scorer, and
the scorer's ``pair_fn`` on the resampled images' channel means of both draws for an across-image one (``sf``).
A cell is **tied** with the best when its mean score lies inside the best cell's own :data:`LEVEL` bootstrap
interval (the score's sampling error), or when the paired bootstrap of its distance to the best does not exclude 0
(the best beats it in fewer than 97.5 % of the resamples), or when the two means agree within :data:`RESOLUTION`
(the table's printed resolution).  The best itself is always listed.  The pick among
tied cells is the highest mean score (the lowest for a ``min`` scorer), the first in grid order (smallest t, then
tap order) on an exact tie; the selection calls itself **confident** only when no other cell is tied with it.

:func:`edges` says whether the chosen t is the grid's smallest or largest, and whether the chosen tap sits at
the model's first or last block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .reference import signal_fraction
from .scorers import pick

#: Bootstrap resamples of the selection images.
RESAMPLES = 200
#: Two-sided level whose lower bound decides a tie.
LEVEL = 0.95
#: Cells whose means agree within this are tied whatever the bootstrap says: the table prints four decimals, and
#: cells that print the same are never separated.
RESOLUTION = 1e-4
_BLOCK = re.compile(r"(?<![A-Za-z0-9_])(single_transformer_blocks|transformer_blocks|blocks)\.(\d+)(?=$|[.@\[])")


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """How often each of ``n`` images is drawn in each resample: ``[resamples, n]`` integers summing to ``n``."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xB007])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def sample_bootstrap(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cell means of per-image scores ``[B, ...]`` under each resample ``counts [R, B]``: ``[R, ...]``.  A
    non-finite score is left out of its cell, as in the table; a cell with no finite draw is NaN."""
    v = np.asarray(values, dtype=np.float64)
    flat = v.reshape(v.shape[0], -1)
    ok = np.isfinite(flat)
    w = counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w @ np.where(ok, flat, 0.0)) / (w @ ok)
    return out.reshape(counts.shape[0], *v.shape[1:])


def signal_fraction_weighted(a: torch.Tensor, b: torch.Tensor, weights: np.ndarray) -> np.ndarray:
    """:func:`~aselect_kernels.reference.signal_fraction` of every resample at once: ``a``, ``b`` ``[N, C]`` (finite
    rows), ``weights`` ``[R, N]`` the times each image is drawn.  Equal to the scorer on the drawn rows; ``[R]``."""
    a64, b64 = a.double().numpy(), b.double().numpy()
    a64, b64 = a64 - a64.mean(0), b64 - b64.mean(0)  # moments are shift-invariant: centre once for accuracy
    w = weights.astype(np.float64)
    total = w.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # fewer than 2 drawn images: NaN below
        ma, mb = (w @ a64) / total, (w @ b64) / total
        n1 = total - 1
        cov = (w @ (a64 * b64) - total * ma * mb) / n1
        var = (w @ (a64 * a64) - total * ma * ma + w @ (b64 * b64) - total * mb * mb) / n1
        live = var > 0
        out = np.where(live, 2 * cov / np.where(live, var, 1.0), 0.0).sum(1) / live.sum(1)
    return np.where(total[:, 0] >= 2, out, np.nan)


def pair_bootstrap(pair_fn: Callable, first: torch.Tensor, second: torch.Tensor, counts: np.ndarray) -> np.ndarray:
    """A cell's across-image score under each resample: ``first``, ``second`` are the channel means ``[N, C]`` of
    the two draws; a drawn image that is not finite in either draw is dropped (as the scorer does).  ``[R]``."""
    ok = (torch.isfinite(first).all(1) & torch.isfinite(second).all(1)).numpy()
    weights = counts * ok
    if pair_fn is signal_fraction:
        zero = torch.zeros((), dtype=first.dtype)
        a = torch.where(torch.from_numpy(ok)[:, None], first, zero)
        b = torch.where(torch.from_numpy(ok)[:, None], second, zero)
        return signal_fraction_weighted(a, b, weights)
    out = []
    for row in weights:
        index = torch.from_numpy(np.repeat(np.arange(len(row)), row))
        out.append(float(pair_fn(first[index], second[index])) if len(index) >= 2 else np.nan)
    return np.asarray(out)


def ties(boot: np.ndarray, mean: np.ndarray, direction: str, level: float = LEVEL) -> tuple[int, np.ndarray,
                                                                                             np.ndarray]:
    """The best cell (flat index of ``mean``), the tied mask and each cell's share of resamples it wins.

    ``boot`` is ``[R, *mean.shape]``.  A live cell is tied with the best when
    * its mean lies inside the best cell's own ``level`` bootstrap interval (the score's sampling error), or
    * the paired bootstrap of ``best - cell`` (signed so that positive favours the best) does not exclude 0: its
      ``(1 - level) / 2`` quantile is <= 0, or
    * its mean is within :data:`RESOLUTION` of the best's.
    """
    best = pick(mean, direction)
    sign = 1.0 if direction == "max" else -1.0
    flat = boot.reshape(boot.shape[0], -1)
    m = np.asarray(mean, dtype=np.float64).reshape(-1)
    live = np.isfinite(m)
    tail = (1 - level) / 2
    own = flat[:, best][np.isfinite(flat[:, best])]
    within = sign * m >= (np.quantile(sign * own, tail) if own.size else np.inf)
    gap = sign * (flat[:, [best]] - flat)
    gap = np.where(np.isfinite(gap), gap, 0.0)  # a resample where a cell is dead says nothing against a tie
    paired = np.quantile(gap, tail, axis=0) <= 0
    close = np.abs(m - m[best]) < RESOLUTION
    tied = live & (within | paired | close)
    tied[best] = True
    signed = np.where(np.isfinite(flat), sign * flat, -np.inf)
    wins = np.bincount(signed.argmax(1), minlength=flat.shape[1]) / flat.shape[0]
    return best, tied.reshape(np.shape(mean)), wins.reshape(np.shape(mean))


def assess(boot: np.ndarray, mean: np.ndarray, direction: str, timesteps: Sequence[int], taps: Sequence[str],
           images: int, level: float = LEVEL) -> dict:
    """The JSON-ready verdict on one scorer's table: the chosen cell, the tied cells, and how often each wins."""
    if not np.isfinite(mean).any():
        return {"images": images, "resamples": int(boot.shape[0]), "level": level, "chosen": None, "tied": [],
                "chosen_share": None, "confident": False}
    best, tied, wins = ties(boot, mean, direction, level)
    ti, p = divmod(best, len(taps))
    cells = [{"t": int(timesteps[i]), "tap": taps[j], "share": float(wins[i, j])}
             for i, j in zip(*np.nonzero(tied), strict=True)]
    return {"images": images, "resamples": int(boot.shape[0]), "level": level,
            "chosen": {"t": int(timesteps[ti]), "tap": taps[p]}, "chosen_share": float(wins[ti, p]),
            "tied": cells, "confident": len(cells) == 1}


def annotate(result: object, model: torch.nn.Module, pair_means: tuple[dict, dict] | None, pair_fns: dict,
             seed: int = 0) -> None:
    """Fill ``result.meta["confidence"]`` (one :func:`assess` per scorer) and the block facts :func:`edges` needs
    (``meta["blocks"]``, ``meta["tap_blocks"]``).  ``result.per_sample`` ``[B, T, P, S]`` holds the per-image
    scores; ``pair_means`` the channel means ``{tap: [B * T, C]}`` of the two draws when a scorer needs them."""
    from .taps import num_blocks

    values = result.per_sample
    n_img, n_t = values.shape[0], values.shape[1]
    counts = resample_counts(n_img, seed=seed)
    verdicts = {}
    for s, name in enumerate(result.scorers):
        if name in pair_fns:
            if pair_means is None:
                continue
            first, second = pair_means
            boot = np.stack([np.stack([pair_bootstrap(pair_fns[name], first[tap].reshape(n_img, n_t, -1)[:, ti],
                                                      second[tap].reshape(n_img, n_t, -1)[:, ti], counts)
                                       for tap in result.taps], axis=-1) for ti in range(n_t)], axis=1)
        else:
            boot = sample_bootstrap(values[..., s], counts)
        verdicts[name] = assess(boot, result.mean[:, :, s], result.directions[name], result.timesteps,
                                result.taps, n_img)
    result.meta["confidence"] = verdicts
    result.meta["blocks"] = num_blocks(model) or None
    result.meta["tap_blocks"] = {tap: tap_block(model, tap) for tap in result.taps}


def tap_block(model: torch.nn.Module, tap: str) -> int | None:
    """The preset block index of a tap (Flux's single-stream blocks count after its double-stream ones)."""
    m = _BLOCK.search(tap)
    if m is None:
        return None
    i = int(m.group(2))
    if m.group(1) == "single_transformer_blocks":
        i += len(getattr(model, "transformer_blocks", ()))
    return i


def edges(result: object, scorer: str | None = None) -> dict:
    """Whether the chosen t is the grid's smallest or largest (and whether the score still improves toward that
    edge from the next grid t at the same tap), and whether the chosen tap is at the model's first or last block."""
    name = scorer or result.primary
    best = result._best_or_none(name)
    if best is None or best[0] not in result.timesteps or best[1] not in result.taps:  # nothing in the table
        return {"t_edge": None, "rises_to_edge": None, "block_edge": None, "block": None, "blocks": None}
    t, tap = best
    s, p = result.scorers.index(name), result.taps.index(tap)
    order = np.argsort(result.timesteps, kind="stable")
    ts = [result.timesteps[i] for i in order]
    t_edge = None if len(ts) < 2 else "smallest" if t == ts[0] else "largest" if t == ts[-1] else None
    rises = None
    if t_edge is not None:
        nxt = order[1] if t_edge == "smallest" else order[-2]
        here, there = result.mean[result.timesteps.index(t), p, s], result.mean[nxt, p, s]
        if np.isfinite(there):
            rises = bool(here > there) if result.directions[name] == "max" else bool(here < there)
    blocks = result.meta.get("blocks")
    block = (result.meta.get("tap_blocks") or {}).get(tap)
    block_edge = None
    if block is not None and blocks and blocks > 1:
        block_edge = "first" if block == 0 else "last" if block == blocks - 1 else None
    return {"t_edge": t_edge, "rises_to_edge": rises, "block_edge": block_edge, "block": block, "blocks": blocks}


def edge_lines(result: object, scorer: str | None = None) -> list[str]:
    """One line per edge the choice sits on, e.g. "the chosen t is the grid's smallest, and the score still rises
    toward it"."""
    e = edges(result, scorer)
    lines = []
    if e["t_edge"]:
        trend = ", and the score still rises toward it" if e["rises_to_edge"] else ""
        t = result.best(scorer)[0]
        end = 0 if e["t_edge"] == "smallest" else 1000 if result.meta.get("noise") == "flow" else 999
        beyond = f" (t = {t}: no t lies beyond it)" if t == end else ": a t beyond the grid may score better" if \
            e["rises_to_edge"] else ""
        lines.append(f"the chosen t is the grid's {e['t_edge']}{trend}{beyond}")
    if e["block_edge"]:
        lines.append(f"the chosen tap is at the model's {e['block_edge']} block (block {e['block']} of "
                     f"{e['blocks']})")
    return lines


def tie_lines(result: object, scorer: str | None = None, limit: int = 6) -> list[str]:
    """The tie verdict in words: how many cells cannot be told from the best, which ones, and how the pick was
    made among them."""
    name = scorer or result.primary
    v = (result.meta.get("confidence") or {}).get(name)
    if not v or v["chosen"] is None:
        return []
    c = v["chosen"]
    head = (f"bootstrap over the {v['images']} selection images ({v['resamples']} resamples): the chosen cell wins "
            f"{100 * v['chosen_share']:.0f} % of them")
    if v["confident"]:
        return [f"{head}; no other cell is within its sampling error ({int(100 * v['level'])} %): a confident pick"]
    others = [x for x in v["tied"] if (x["t"], x["tap"]) != (c["t"], c["tap"])]
    shown = ", ".join(f"({x['t']}, {x['tap']})" for x in others[:limit])
    more = f" and {len(others) - limit} more" if len(others) > limit else ""
    return [f"{head}; NOT a confident pick: {len(others)} other cell{'s' if len(others) != 1 else ''} within its "
            f"sampling error ({int(100 * v['level'])} %): {shown}{more}",
            f"among the {len(v['tied'])} tied cells the pick is the best mean score, ({c['t']}, {c['tap']}); the "
            "data do not separate them"]
