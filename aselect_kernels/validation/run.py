"""Validation of label-free selection against the exhaustive probe grid, on real data: :func:`validate`.

One run selects on unlabeled training images (:func:`~aselect_kernels.select.select_timestep`), fits the probe grids
(:mod:`.grids`) on the labelled splits (:mod:`.splits`, :mod:`.datasets`), and compares the two (:mod:`.compare`);
:mod:`.report` prints and plots the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..arguments import (
    check_bool,
    check_choice,
    check_count,
    check_fraction,
    check_noise,
    check_optional_int,
    check_seed,
    check_taps,
    check_text,
)
from ..conditioning import Conditioning
from ..constants import DEFAULT_TEST_FRACTION, PERTURBED_DATASETS, VALIDATION_TIMESTEPS
from ..forward import model_device_dtype
from ..images import to_model_range
from ..noise import Noiser, parse_timesteps
from ..reference import StatsConfig, effective_rank
from ..result import SelectionResult
from ..scorers import Moments, Scorer
from ..select import noiser_for, select_timestep
from ..taps import resolve_taps
from .compare import compare, tap_sets
from .datasets import DEFAULT_TIMESTEPS, load_dataset
from .grids import ProbeGrid, dense_probe_grid, probe_grid
from .probe import dense_target
from .splits import Split, prepare_splits

#: Candidate label-free criteria tried beside the registered scorers: the frequency ratios over the 2-D patch
#: grid (a second statistics pass with ``hfr_dims=2``) and the effective rank (unfused: an SVD per sample).
CANDIDATES = {
    "hfr_2d": "hfr with the DFT over the h x w grid (radial frequency)",
    "hfr_2d_centered": "hfr_centered over the 2-D grid",
    "erank": "effective rank of the token-centred features",
}


def _with_candidates(base: SelectionResult, model: nn.Module, images: torch.Tensor, timesteps: str,
                     taps: str | Sequence[str], seed: int, progress: bool) -> SelectionResult:
    """``base`` with the :data:`CANDIDATES` columns added, from one more (untimed) run on the same images."""
    erank = Scorer("erank", "max", feature_fn=effective_rank, doc=CANDIDATES["erank"])
    extra = select_timestep(model, images, timesteps, taps, scorer="hfr", extra_scorers=["hfr_centered", erank],
                            config=StatsConfig(hfr_dims=2), seed=seed, progress=progress)
    names = {"hfr": "hfr_2d", "hfr_centered": "hfr_2d_centered", "erank": "erank"}
    cols = [extra.scorers.index(k) for k in names]
    m, e = base.moments, extra.moments
    moments = Moments(*(np.concatenate([getattr(m, f), getattr(e, f)[..., cols]], axis=-1)
                        for f in ("count", "total", "total_sq", "flagged")))
    directions = {**base.directions, **{names[k]: extra.directions[k] for k in names}}
    return SelectionResult(base.timesteps, base.taps, base.scorers + list(names.values()), directions, moments,
                           base.primary, {**base.meta, "candidates": list(names.values())})


def validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **options) -> dict:
    """Selection vs the exhaustive probe grid on the user's model and labelled images; returns the report.

    ``images [N, C, H, W]`` are in the model's range (``[-1, 1]``, as :func:`~aselect_kernels.images.load_labelled`
    gives them); ``labels [N]`` any integers (mapped to ``0..K-1`` in sorted order).  Without ``test_images`` and
    ``test_labels`` a seeded stratified split holds out ``test_fraction`` of each class.  ``masks [N, H, W]``
    (integer pixel labels, with ``test_masks`` when a test set is given) enable the dense probe; without them it
    is skipped with a note.  ``options`` are those of :func:`validation_parts`.
    """
    return validation_parts(model, images, labels, **options)[0]


def validation_parts(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    test_masks: torch.Tensor | None = None,
    *,
    name: str = "user",
    n_select: int | None = None,
    timesteps: str | Sequence[int] = VALIDATION_TIMESTEPS,
    taps: str | Sequence[str] = "all",
    noise: str = "ddpm",
    use_labels: bool = False,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    n_train: int | None = None,
    n_test: int | None = None,
    dense: bool = True,
    n_dense_train: int = 100,
    n_dense_test: int = 100,
    dense_taps: str | Sequence[str] | None = None,
    candidates: bool = False,
    batched: bool = True,
    memory_budget: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, SelectionResult, ProbeGrid, ProbeGrid | None]:
    """:func:`validate` with its parts: ``(report, selection, grid, dense grid or None)``.

    ``n_train``/``n_test`` keep the first images of each split (default all).  ``n_select`` unlabeled training
    images (default ``min(64, N_train)``) go to selection; ``use_labels``
    conditions the model on each image's class (which the probes then also see).  ``batched`` fits the probes
    together (``memory_budget`` bytes a batch), else one after another.  All arguments are checked before any
    computation.
    """
    check_text("name", name)
    for flag, value in (("use_labels", use_labels), ("dense", dense), ("candidates", candidates),
                        ("batched", batched), ("progress", progress)):
        check_bool(flag, value)
    test_fraction, seed = check_fraction("test_fraction", test_fraction), check_seed(seed)
    n_train, n_test = check_optional_int("n_train", n_train), check_optional_int("n_test", n_test)
    n_dense_train, n_dense_test = check_count("n_dense_train", n_dense_train), check_count("n_dense_test", n_dense_test)
    n_select = check_optional_int("n_select", n_select, 2)
    noise = check_noise(noise, ("ddpm", "flow"))
    taps = check_taps(taps, model)
    if dense_taps is not None:
        check_taps(dense_taps, model, "dense_taps")
    from ..forward import check_memory_budget

    check_memory_budget(memory_budget)
    train, test, classes, dense_classes = prepare_splits(model, images, labels, test_images, test_labels, masks,
                                                         test_masks, test_fraction, seed, n_train, n_test)
    n_select = min(64, len(train.y)) if n_select is None else n_select
    if not 2 <= n_select <= len(train.y):  # selection's default scorer (sf) compares images: 2 at least
        raise ValueError(f"n_select must be in [2, {len(train.y)}] (the training images), got {n_select}")
    if use_labels:
        from ..geometry import check_use_labels

        check_use_labels(model, torch.cat([train.given, test.given]))
    _noiser_check(noise, timesteps)
    tap_names = [spec.name for spec in resolve_taps(model, taps)]
    run_dense = dense and train.target is not None
    if dense_taps is None:  # the block outputs among the taps, else all of them
        dense_taps = tap_sets(tap_names).get("block_out", tap_names)
    elif run_dense:
        extra = [spec.name for spec in resolve_taps(model, dense_taps) if spec.name not in tap_names]
        if extra:
            raise ValueError(f"dense taps {extra} are not among the selection's taps")
    return _run(model, train, test, classes, dense_classes, name=name, n_select=n_select, timesteps=timesteps,
                taps=taps, noise=noise, use_labels=use_labels, dense=run_dense, n_dense=(n_dense_train, n_dense_test),
                dense_taps=dense_taps, candidates=candidates, batched=batched, memory_budget=memory_budget,
                seed=seed, progress=progress,
                dense_note=None if run_dense or not dense else "dense probe skipped: no pixel masks given")


def _noiser_check(noise: str, timesteps: str | Sequence[int], images: torch.Tensor | None = None) -> None:
    noiser_for(noise, images).check(parse_timesteps(timesteps))


def _run(model: nn.Module, train: Split, test: Split, classes: list, dense_classes: int, *, name: str,
         n_select: int, timesteps: str | Sequence[int], taps: str | Sequence[str], noise: str, use_labels: bool,
         dense: bool, n_dense: tuple[int, int], dense_taps: str | Sequence[str], candidates: bool, batched: bool,
         memory_budget: int | None, seed: int, progress: bool, dense_note: str | None
         ) -> tuple[dict, SelectionResult, ProbeGrid, ProbeGrid | None]:
    """Selection, the probe grid, and the dense grid when ``dense``, on checked splits."""
    k = len(classes)

    def cond(*ys: torch.Tensor) -> Conditioning | None:
        return Conditioning(class_labels=torch.cat(ys).to(train.x.device)) if use_labels else None

    ts_spec = timesteps if isinstance(timesteps, str) else ",".join(str(t) for t in timesteps)
    taps_spec = taps if isinstance(taps, str) else ",".join(taps)
    start = time.perf_counter()
    selection = select_timestep(model, train.x[:n_select], timesteps, taps, noise=noise,
                                conditioning=cond(train.given[:n_select]), seed=seed, progress=progress)
    select_s = time.perf_counter() - start
    candidates_s = 0.0
    if candidates:
        start = time.perf_counter()
        selection = _with_candidates(selection, model, train.x[:n_select], timesteps, taps, seed, progress)
        candidates_s = time.perf_counter() - start
    grid = probe_grid(model, (train.x, train.y), (test.x, test.y), timesteps, taps, k, noise=noise,
                      conditioning=cond(train.given, test.given), seed=seed, progress=progress, batched=batched,
                      memory_budget=memory_budget)
    report: dict = {
        "dataset": name, "n_train": len(train.y), "n_test": len(test.y), "n_select": n_select, "timesteps": ts_spec,
        "taps": taps_spec, "noise": noise, "use_labels": use_labels, "classes": list(classes), "seed": seed,
        "world_size": distributed.world_size(),
        "cost": {"select_wall_s": round(select_s, 3), "select_forward_samples": selection.meta["samples"],
                 "grid_wall_s": round(grid.wall_s, 3), "grid_forward_samples": grid.forward_samples,
                 "wall_ratio": grid.wall_s / select_s,
                 "forward_ratio": grid.forward_samples / selection.meta["samples"],
                 "candidates_wall_s": round(candidates_s, 3)},
        "classification": {"grid": grid.to_dict(), **compare(selection, grid, tap_sets(selection.taps))},
    }
    dgrid = None
    if dense:
        assert train.target is not None and test.target is not None
        a, b = min(n_dense[0], len(train.y)), min(n_dense[1], len(test.y))
        dgrid = dense_probe_grid(model, (train.x[:a], train.target[:a]), (test.x[:b], test.target[:b]), timesteps,
                                 dense_taps, dense_classes, noise=noise,
                                 conditioning=cond(train.given[:a], test.given[:b]), seed=seed, progress=progress,
                                 batched=batched, memory_budget=memory_budget)
        report["dense"] = {"grid": dgrid.to_dict(), "n_train": a, "n_test": b,
                           **compare(selection, dgrid, {"dense_taps": dgrid.taps})}
    elif dense_note:
        report["dense_note"] = dense_note
    return report, selection, grid, dgrid


def run_validation(
    model: nn.Module,
    dataset: str = "fashion",
    n_train: int | None = None,
    n_test: int | None = None,
    n_select: int = 64,
    timesteps: str | None = None,
    taps: str = "all",
    dense: bool = True,
    n_dense_train: int = 100,
    n_dense_test: int = 100,
    dense_taps: str | Sequence[str] | None = None,
    candidates: bool = False,
    seed: int = 0,
    progress: bool = True,
    **options,
) -> tuple[dict, SelectionResult, ProbeGrid, ProbeGrid | None]:
    """Selection on ``n_select`` unlabeled training images vs the exhaustive probe grid on ``n_train``/``n_test``
    labeled images of a shipped dataset (and a dense grid on its foreground masks), on the same model, timesteps
    and taps; returns the report and its parts.  ``None`` sizes and timesteps take the dataset's defaults
    (:data:`DEFAULT_N_TRAIN`, :data:`DEFAULT_N_TEST`, :data:`DEFAULT_TIMESTEPS`); the noisy datasets have no dense
    task (their pixels do not give the dense target).  ``options`` (``noise``, ``use_labels``, ``batched``,
    ``memory_budget``) are those of :func:`validation_parts`.

    The selection scores every registered statistic scorer; its cost is that run's.  With ``candidates`` a second,
    untimed run adds the :data:`CANDIDATES`.  The dense probe runs on ``dense_taps``, which must be among ``taps``;
    ``None`` takes the block outputs among ``taps``, or all of ``taps`` when there are none.  Every argument is
    checked before the first forward.
    """
    from .datasets import DATASETS

    dataset, seed = check_choice("dataset", dataset, DATASETS), check_seed(seed)
    n_train, n_test = check_optional_int("n_train", n_train), check_optional_int("n_test", n_test)
    n_select = check_count("n_select", n_select, 2)
    device, _ = model_device_dtype(model)
    (utr, ytr), (ute, yte), _ = load_dataset(dataset, n_train, n_test, seed)
    n_train, n_test = len(ytr), len(yte)
    timesteps = DEFAULT_TIMESTEPS.get(dataset, VALIDATION_TIMESTEPS) if timesteps is None else timesteps
    Noiser("ddpm").check(parse_timesteps(timesteps))
    dense = dense and dataset not in PERTURBED_DATASETS
    if n_select > n_train:
        raise ValueError(f"n_select {n_select} exceeds the training images {n_train}")
    if dense:
        dense_taps = check_dense_taps(model, taps, dense_taps)
    xtr, xte = to_model_range(utr)[:, None].to(device), to_model_range(ute)[:, None].to(device)
    return validation_parts(model, xtr, ytr, xte, yte, dense_target(utr, ytr), dense_target(ute, yte), name=dataset,
                            n_select=n_select, timesteps=timesteps, taps=taps, dense=dense,
                            n_dense_train=n_dense_train, n_dense_test=n_dense_test, dense_taps=dense_taps,
                            candidates=candidates, seed=seed, progress=progress, **options)


def check_dense_taps(model: nn.Module, taps: str | Sequence[str], dense_taps: str | Sequence[str] | None
                     ) -> list[str]:
    """The dense probe's taps, checked to be among the selection's ``taps`` (its gaps are read from the selection);
    ``None`` takes the block outputs among ``taps``, or all of ``taps`` when there are none."""
    scored = [s.name for s in resolve_taps(model, taps)]
    if dense_taps is None:
        blocks = tap_sets(scored).get("block_out", [])
        return blocks or scored
    wanted = [s.name for s in resolve_taps(model, dense_taps)]
    missing = [t for t in wanted if t not in scored]
    if missing:
        raise ValueError(f"the dense probe's taps {missing[:3]}{' ...' if len(missing) > 3 else ''} are not among "
                         f"the scored taps {taps!r}: add them to the taps, or skip the dense probe")
    return wanted
