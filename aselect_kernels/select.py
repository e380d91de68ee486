"""Selection and extraction: the package's top-level API.

:func:`select_timestep` scores every (timestep, tap) in one batched multi-timestep run and picks the best;
:func:`extract_features` returns the features at a chosen (t, tap) for downstream probes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import confidence, distributed, fewlabel
from .arguments import (
    check_backend,
    check_backend_device,
    check_bool,
    check_conditioning,
    check_config,
    check_direction,
    check_grid,
    check_noise,
    check_run_options,
    check_scorer,
    check_scorers,
    check_tap,
    check_taps,
    wrong_type,
)
from .conditioning import Conditioning
from .constants import DEFAULT_SCORER, DEFAULT_TAPS
from .forward import RunInfo, check_class_labels, check_images, model_device_dtype, run_multi_timestep
from .geometry import check_grid_tokens, check_image_count, check_image_size, warn_if_no_signal
from .noise import Noiser, as_timestep, parse_timesteps
from .recipes import accepts_recipe
from .reference import STAT_NAMES, StatsConfig
from .result import SelectionResult
from .scorers import Moments, Scorer, list_scorers
from .stats import compute_means
from .taps import KINDS, TapSet, TapSpec, resolve_taps


def noiser_for(noise: str | Noiser, images: torch.Tensor | None = None) -> Noiser:
    """The :class:`~.noise.Noiser` of ``noise`` (a family name or a Noiser); ``"flux"`` shifts for ``images``."""
    if isinstance(noise, Noiser):
        return noise
    if noise == "flux":  # rectified flow with Flux's shift for this resolution
        from .flux import flux_noiser

        return flux_noiser(images)
    return Noiser(noise)


def _text_tokens(conditioning: Conditioning | None) -> int | None:
    """Text tokens ahead of the image tokens in Flux's single-stream blocks (see :mod:`.taps`)."""
    ehs = conditioning.encoder_hidden_states if conditioning is not None else None
    return int(ehs.shape[1]) if ehs is not None and ehs.dim() == 3 else None


def _door(model: nn.Module, images: torch.Tensor, timesteps: object, taps: object, noise: object,
          conditioning: object, run: dict) -> tuple[Noiser, list[int], list[TapSpec]]:
    """Every argument a forward takes, checked before it (:mod:`.arguments`, :mod:`.geometry`): returns the noiser,
    the timesteps and the taps.  ``run`` holds ``seed``, ``chunk_size``, ``memory_budget``, ``progress`` and
    ``call``, replaced by their checked values."""
    if not isinstance(model, nn.Module):
        raise wrong_type("model", "a torch.nn.Module", model)
    run["seed"], run["chunk_size"], run["memory_budget"], run["progress"] = check_run_options(
        run["seed"], run["chunk_size"], run["memory_budget"], run["progress"], run["call"])
    conditioning = check_conditioning(conditioning)
    taps = check_taps(taps, model)
    noise = check_noise(noise)
    check_images(model, images, model_device_dtype(model)[0], warn_range=False)
    check_image_size(model, images)
    if conditioning is not None:
        check_class_labels(model, conditioning.class_labels, images.shape[0])
    warn_if_no_signal(images)
    noiser = noiser_for(noise, images)
    ts = noiser.check(parse_timesteps(timesteps))
    return noiser, ts, resolve_taps(model, taps, text_tokens=_text_tokens(conditioning))


@accepts_recipe
def select_timestep(
    model: nn.Module,
    images: torch.Tensor,
    timesteps: str | Sequence[int] = "0:1000:50",
    taps: str | Sequence[str] = DEFAULT_TAPS,
    scorer: str | Scorer | None = None,
    direction: str | None = None,
    extra_scorers: Sequence[str | Scorer] | None = None,
    noise: str | Noiser = "ddpm",
    conditioning: Conditioning | None = None,
    config: StatsConfig = StatsConfig(),
    backend: str = "auto",
    seed: int = 0,
    shared_noise: bool = True,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    call=None,
    overlap: bool = False,
    recipe: str | None = None,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> SelectionResult:
    """Score (timestep x tap) with label-free statistics, or a few labels, and select the best.

    Args:
        model: a diffusers transformer or a plain DiT ``nn.Module`` (eval mode is the caller's choice).
        images: clean inputs ``[B, ...]`` in the model's input range, on the model's device.
        timesteps: ``"start:stop:step"``, a comma list or ints; t counts noise from clean (:mod:`.noise`).
        taps: preset names (``query``, ``attn_out``, ``mlp_hidden`` (the default), ``mlp_out``, ``block_out``,
            ``all``, ``attn_mlp``, with optional ``:blocks``) or module paths (:mod:`.taps`).
        scorer: the primary scorer (registered name or :class:`Scorer`); ``direction`` overrides its direction.
            ``None``: ``sf``, or ``ridge_loo`` when ``labels`` are given; ``ridge_loo``/``ncm_loo`` need labels.
        extra_scorers: more scorers for the table; by default every registered statistic scorer, and the
            across-image (``pair_fn``) scorers when the primary is one.  An across-image scorer runs every sample
            a second time, with the noise of ``seed + 1``: the forward costs twice as much.
        noise: ``"ddpm"``, ``"flow"``, ``"flux"`` (flow with Flux's shift for the images' resolution,
            :func:`~aselect_kernels.noise.flux_shift`) or a :class:`Noiser` wrapping a diffusers scheduler.
        config: frequency settings of the statistics (cutoff, 1-D/2-D, grid).
        backend: ``"auto"`` (fused Triton kernel on CUDA, its PyTorch twin ``"matmul"`` on CPU), ``"triton"``,
            ``"matmul"`` or ``"torch"`` (the reference).
        chunk_size / memory_budget: samples per forward (a whole number), or the bytes a chunk may use (floats
            are floored: ``2.5e5`` is 250000 bytes); both must be positive.
        overlap: on CUDA, compute the statistics on a side stream beside the forward, joined after each chunk
            (same results; see :class:`~aselect_kernels.taps.TapSet`); ignored on the CPU.
        backend also takes ``"cuda"`` (the CUDA C++ kernel of ``csrc/``).
        recipe: a published method's settings (:mod:`.recipes`): ``"aselect"`` sets taps, scorer, direction,
            config and noise (the model's own scheduler); an explicit argument that contradicts it is an error.
        labels: one integer class per image (at least 2 images per class): adds the leave-one-out label criteria
            of :mod:`.fewlabel` as columns, from the same forward's channel means, and the pick's bootstrap
            certainty as ``meta["labels"]``.  Not class conditioning (that is ``conditioning``).

    Timesteps are sorted ascending (see :func:`~aselect_kernels.noise.parse_timesteps`); every argument is checked
    before the first forward.
    """
    criterion = fewlabel.criterion_for(scorer, labels)
    primary = check_scorer(DEFAULT_SCORER if scorer is None else scorer) if criterion is None else None
    direction = check_direction(direction)
    if direction is not None and primary is not None:
        primary = Scorer(primary.name, direction, primary.stat, primary.feature_fn, primary.doc, primary.pair_fn)
    extra = check_scorers(extra_scorers)
    pairs_too = primary is not None and primary.pair_fn is not None
    others = extra if extra is not None else [
        s for s in list_scorers() if s.stat is not None or (s.pair_fn is not None and pairs_too)]
    scorers = [primary] * (primary is not None) + [s for s in others if primary is None or s.name != primary.name]
    config, backend = check_config(config), check_backend(backend)
    shared_noise, overlap = check_bool("shared_noise", shared_noise), check_bool("overlap", overlap)
    run = dict(seed=seed, chunk_size=chunk_size, memory_budget=memory_budget, progress=progress, call=call)
    noiser, ts, specs = _door(model, images, timesteps, taps, noise, conditioning, run)
    check_image_count(images.shape[0], scorers)
    y = fewlabel.check_labels(labels, images.shape[0]) if labels is not None else None
    check_backend_device(backend, model_device_dtype(model)[0])
    seed = run.pop("seed")
    run.update(conditioning=conditioning, shared_noise=shared_noise)
    n_img = images.shape[0]
    feature_fns = {s.name: s.feature_fn for s in scorers if s.feature_fn is not None}
    pairs = [s for s in scorers if s.pair_fn is not None]
    start = time.perf_counter()
    tapset = TapSet(model, specs, n_img * len(ts), feature_fns=feature_fns, config=config, backend=backend,
                    overlap=overlap, means=bool(pairs) or y is not None)
    draws = ", draw 1 of 2" if pairs else ""
    collected, info = _run_taps(model, images, ts, noiser, tapset, seed=seed, label=f"scored forward{draws}",
                                **run)
    columns = tapset.columns
    values = _sample_scores(collected, columns, specs, scorers, n_img, len(ts))
    first = {spec.name: collected[spec.name][:, len(columns):] for spec in specs}  # the means, after the stats
    label_info = None
    if y is not None:
        values, label_info = _with_label_columns(values, first, specs, len(scorers), criterion, y, ts, seed)
    moments = Moments.from_samples(values, axis=0)
    if pairs:  # the second noise draw of every image: its channel means only, no statistics
        second = TapSet(model, specs, n_img * len(ts), stat_fn=lambda x: compute_means(x, backend), overlap=overlap)
        again, info2 = _run_taps(model, images, ts, noiser, second, seed=seed + 1,
                                 label="scored forward, draw 2 of 2 (channel means)", **run)
        info = RunInfo(info.samples + info2.samples, info.chunks + info2.chunks, info.chunk_size,
                       info.wall_s + info2.wall_s)
        for s in pairs:
            moments = _with_pair_scores(moments, scorers.index(s), s, specs, first, again, n_img, len(ts))
    directions = {s.name: s.direction for s in scorers} | dict.fromkeys(fewlabel.LABEL_CRITERIA * (y is not None),
                                                                         "max")
    result = SelectionResult(
        timesteps=ts, taps=[s.name for s in specs], scorers=list(directions), directions=directions,
        moments=moments, primary=criterion or primary.name,
        meta={**_meta(model, images, noiser, config, backend, info, time.perf_counter() - start, seed, shared_noise),
              "overlap": overlap, "pair_scorers": [s.name for s in pairs], "pair_seed": seed + 1 if pairs else None,
              **({"labels": label_info} if label_info else {})},
    )
    result.per_sample = values  # [B, T, P, S], not serialized
    confidence.annotate(result, model, (first, again) if pairs else None, {s.name: s.pair_fn for s in pairs}, seed)
    if y is not None:  # the channel means the label criteria read, {tap: [B, T, C]}, not serialized
        result.channel_means = {tap: m.reshape(n_img, len(ts), -1) for tap, m in first.items()}
    return result


def _with_label_columns(values: np.ndarray, means: dict, specs: Sequence, n_scorers: int, criterion: str | None,
                        y: np.ndarray, ts: list[int], seed: int) -> tuple[np.ndarray, dict]:
    """The few-label criteria's per-sample columns appended to ``values``, and their ``meta["labels"]``: every rank
    holds every sample's channel means (:func:`_run_taps`), so each computes the same columns."""
    start = time.perf_counter()
    taps = [s.name for s in specs]
    values = np.concatenate([values, fewlabel.label_columns(means, taps, y, len(ts))], -1)
    info = fewlabel.label_meta(values[..., n_scorers:], criterion or fewlabel.LABEL_CRITERIA[0], y, ts, taps, seed,
                               time.perf_counter() - start)
    return values, info


def _sample_scores(collected: dict, columns: list[str], specs: Sequence, scorers: Sequence[Scorer], n_img: int,
                   n_t: int) -> np.ndarray:
    """Per-sample scores ``[B, T, P, S]``: the only host transfer of the run (across-image scorers: NaN, scored
    from the channel means afterwards)."""
    return np.stack([
        np.stack([collected[spec.name][:, columns.index(s.stat or s.name)].numpy() if s.pair_fn is None
                  else np.full(n_img * n_t, np.nan) for s in scorers]
                 + [np.empty(n_img * n_t, np.float32)], axis=-1)  # a spare column: no scorer is no error
        for spec in specs
    ], axis=1).reshape(n_img, n_t, len(specs), len(scorers) + 1)[..., :-1]


def _with_pair_scores(moments: Moments, index: int, scorer: Scorer, specs: Sequence, first: dict, second: dict,
                      n_img: int, n_t: int) -> Moments:
    """``moments`` with column ``index`` replaced by ``scorer.pair_fn`` of every (t, tap) cell, taken across the
    images from the channel means ``[B * T, C]`` of the two draws (tap name -> means)."""
    value = np.full((n_t, len(specs)), np.nan)
    count = np.zeros((n_t, len(specs)), dtype=np.int64)
    for p, spec in enumerate(specs):
        a = first[spec.name].reshape(n_img, n_t, -1)
        b = second[spec.name].reshape(n_img, n_t, -1)
        for ti in range(n_t):
            ok = torch.isfinite(a[:, ti]).all(1) & torch.isfinite(b[:, ti]).all(1)
            count[ti, p] = int(ok.sum())
            value[ti, p] = float(scorer.pair_fn(a[:, ti], b[:, ti]))
    pop = Moments.from_population(value, count, n_img - count)
    fields = []
    for name in ("count", "total", "total_sq", "flagged"):
        arr = np.array(getattr(moments, name), dtype=np.float64 if name.startswith("total") else np.int64)
        arr[..., index] = getattr(pop, name)
        fields.append(arr)
    return Moments(*fields)


def _run_taps(model: nn.Module, images: torch.Tensor, ts: list[int], noiser: Noiser, tapset: TapSet,
              chunk_size: int | None, progress: bool, label: str = "scored forward", **run
              ) -> tuple[dict[str, torch.Tensor], RunInfo]:
    """Run ``tapset`` over this process's shard of the samples (all of them without a process group) and
    return every sample's values, on every rank (:mod:`.distributed`)."""
    rows = distributed.shard(images.shape[0] * len(ts), chunk_size)
    with distributed.failing_together(), tapset:
        info = run_multi_timestep(model, images, ts, noiser, on_chunk=lambda r: setattr(tapset, "rows", r),
                                  chunk_size=chunk_size, progress=progress and distributed.is_main(), rows=rows,
                                  on_chunk_end=tapset.join, label=label, **run)
    distributed.merge_tap_buffers(tapset, rows)
    return tapset.collect(), info


def _meta(model: nn.Module, images: torch.Tensor, noiser: Noiser, config: StatsConfig, backend: str,
          info: RunInfo, wall: float, seed: int, shared_noise: bool) -> dict:
    device, dtype = model_device_dtype(model)
    return {
        "model": type(model).__name__, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "images": int(images.shape[0]), "image_shape": list(images.shape[1:]), "noise": noiser.family,
        "flow_shift": float(noiser.scheduler.config.get("shift", 1.0)) if noiser.family == "flow" else None,
        "cutoff": config.cutoff, "hfr_dims": config.hfr_dims, "grid": list(config.grid) if config.grid else None,
        "backend": backend, "stats": list(STAT_NAMES), "samples": info.samples, "chunks": info.chunks,
        "chunk_size": info.chunk_size, "forward_s": round(info.wall_s, 4), "wall_s": round(wall, 4),
        "seed": seed, "shared_noise": shared_noise, "world_size": distributed.world_size(),
    }


def capture_features(
    model: nn.Module,
    images: torch.Tensor,
    timesteps: str | Sequence[int],
    taps: str | Sequence[str],
    pool: bool = True,
    noise: str | Noiser = "ddpm",
    conditioning: Conditioning | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    call=None,
) -> tuple[dict[str, torch.Tensor], RunInfo]:
    """Tapped features of every (image, timestep) in one batched run, float32 on the CPU.

    Returns ``{tap: [B, T, C]}`` (mean over tokens) when ``pool``, else ``{tap: [B, T, L, C]}``, and the run info.
    """
    pool = check_bool("pool", pool)
    run = dict(seed=seed, chunk_size=chunk_size, memory_budget=memory_budget, progress=progress, call=call)
    noiser, ts, specs = _door(model, images, timesteps, taps, noise, conditioning, run)

    def keep(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(1) if pool else x.reshape(x.shape[0], -1)

    n, n_t = images.shape[0], len(ts)
    tapset = TapSet(model, specs, n * n_t, stat_fn=keep)
    flat, info = _run_taps(model, images, ts, noiser, tapset, conditioning=conditioning, label="feature forward",
                           **run)
    shapes = tapset.shapes
    out = {}
    for name, value in flat.items():
        length, channels = shapes[name]
        out[name] = value.reshape(n, n_t, channels) if pool else value.reshape(n, n_t, length, channels)
    return out, info


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    t: int,
    tap: str,
    noise: str | Noiser = "ddpm",
    conditioning: Conditioning | None = None,
    grid: tuple[int, int] | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    call=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``images`` noised at ``t`` at one ``tap``.

    Returns ``(pooled [N, C], grid_features [N, C, h, w])``, float32 on the CPU.  Pooled is the mean over tokens;
    the grid is the tokens in row-major order, ``grid`` inferred as square when ``None``.
    """
    t = as_timestep(t)
    tap = check_tap(tap, model)
    grid = check_grid(grid)
    if not isinstance(model, nn.Module):
        raise wrong_type("model", "a torch.nn.Module", model)
    specs = resolve_taps(model, tap)
    if len(specs) != 1:
        shown = ", ".join(s.name for s in specs[:3]) + (", ..." if len(specs) > 3 else "")
        raise ValueError(f"extract_features takes one tap, but {tap!r} expands to {len(specs)} taps ({shown}): name "
                         f"one, e.g. {specs[0].name!r}" + (f" or '{tap.split(':')[0]}:0'" if ":" not in tap else ""))
    if grid is not None and tap.partition(":")[0] in KINDS and isinstance(images, torch.Tensor):
        check_grid_tokens(model, images, grid)
    feats, _ = capture_features(model, images, [t], [tap], pool=False, noise=noise, conditioning=conditioning,
                                seed=seed, chunk_size=chunk_size, memory_budget=memory_budget, progress=progress,
                                call=call)
    (tokens,) = feats.values()
    tokens = tokens[:, 0]  # [N, L, C]
    return tokens.mean(dim=1), tokens_to_grid(tokens, grid)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``[N, L, C]`` row-major tokens -> ``[N, C, h, w]`` (``grid`` inferred as square when ``None``)."""
    n, length, channels = tokens.shape
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} tokens are not a square grid: pass grid=(h, w)")
        grid = (side, side)
    if grid[0] * grid[1] != length:
        raise ValueError(f"grid h*w must equal the token count L: got grid={grid}, L={length}")
    return tokens.transpose(1, 2).reshape(n, channels, grid[0], grid[1])
