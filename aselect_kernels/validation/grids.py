"""The exhaustive baseline: a linear probe per (timestep, tap) cell of the grid, and a probe on raw pixels.

:func:`probe_grid` (classification accuracy of pooled features) and :func:`dense_probe_grid` (mIoU of grid
features) capture the features of every cell in one batched multi-timestep run, the machinery of selection
(:func:`capture_grid`), and fit their probes through one path (:func:`fit_cells`): each process fits the cells it
owns (every cell with one process), all together in batches or one after another, then the probe on the raw
pixels (the floor), and the results are summed over ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..arguments import check_bool, check_callable, check_count, wrong_type
from ..conditioning import Conditioning
from ..noise import Noiser, parse_timesteps
from ..select import capture_features, tokens_to_grid
from .logistic import default_memory_budget
from .packed import pack_bool
from .probe import (
    DENSE_MAX_ITER,
    MAX_ITER,
    dense_miou_from_logits,
    dense_probe_miou,
    dense_tokens,
    patch_labels,
    probe_logits,
    standardize,
)


@dataclass
class ProbeGrid:
    """Probe scores of every (timestep, tap): ``metric[T, P]`` (accuracy or mIoU) and its cost.

    For accuracy, ``correct[T, P, n_test]`` (and ``floor_correct[n_test]``) keep which test samples each probe got
    right, for paired bootstrap intervals; :meth:`to_dict` writes them bit-packed (:mod:`.packed`).
    """

    timesteps: list[int]
    taps: list[str]
    metric: np.ndarray
    metric_name: str
    floor: float
    forward_samples: int
    wall_s: float
    extra: dict = field(default_factory=dict)
    correct: np.ndarray | None = field(default=None, repr=False)
    floor_correct: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = {"timesteps": self.timesteps, "taps": self.taps, "metric_name": self.metric_name,
               "metric": self.metric.tolist(), "raw_pixel_floor": self.floor,
               "forward_samples": self.forward_samples, "wall_s": round(self.wall_s, 3), **self.extra}
        if self.correct is not None and self.floor_correct is not None:
            out["correct"], out["floor_correct"] = pack_bool(self.correct), pack_bool(self.floor_correct)
        return out


@dataclass
class GridRun:
    """The features of every cell, ``feats[tap]`` ``[N_train + N_test, T, ...]``, captured from ``start``."""

    feats: dict[str, torch.Tensor]
    timesteps: list[int]
    samples: int
    start: float

    @property
    def taps(self) -> list[str]:
        return list(self.feats)

    @property
    def cells(self) -> list[tuple[int, int]]:
        """``(tap index, timestep index)`` of every cell, tap-major."""
        return [(p, ti) for p in range(len(self.feats)) for ti in range(len(self.timesteps))]

    def by_timestep(self, values: np.ndarray) -> np.ndarray:
        """Per-cell values ``[cells, ...]`` (tap-major) as ``[T, P, ...]``."""
        per_tap = values.reshape(len(self.feats), len(self.timesteps), *values.shape[1:])
        return np.ascontiguousarray(np.swapaxes(per_tap, 0, 1))


def check_grid_args(train: object, test: object, num_classes: object, batched: object, memory_budget: object,
                    on_fit: object = None) -> tuple[tuple, tuple]:
    """The probe grids' own arguments (the forward's are checked by :func:`capture_features`): ``train`` and
    ``test`` pairs of tensors ``(images, labels or targets)`` of one length each."""
    from ..forward import check_memory_budget

    for what, pair in (("train", train), ("test", test)):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
            raise wrong_type(what, "a pair (images, labels) of tensors", pair)
        if pair[0].dim() < 1 or pair[1].dim() < 1 or pair[0].shape[0] != pair[1].shape[0]:
            raise ValueError(f"{what} must pair N images with N labels, got shapes {tuple(pair[0].shape)} and "
                             f"{tuple(pair[1].shape)}")
    check_count("num_classes", num_classes, 2)
    check_bool("batched", batched)
    check_memory_budget(memory_budget)
    check_callable("on_fit", on_fit)
    return tuple(train), tuple(test)  # type: ignore[return-value]


def capture_grid(model: nn.Module, train_x: torch.Tensor, test_x: torch.Tensor, timesteps: str | Sequence[int],
                 taps: str | Sequence[str], pool: bool, **options) -> GridRun:
    """Features of the train then the test images at every (t, tap), pooled or as token grids, in one run;
    ``options`` are those of :func:`~aselect_kernels.select.capture_features`."""
    start = time.perf_counter()
    feats, info = capture_features(model, torch.cat([train_x, test_x]), timesteps, taps, pool=pool, **options)
    return GridRun(feats, parse_timesteps(timesteps), info.samples, start)


def fit_cells(run: GridRun, load: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], n_rows: int,
              labels: torch.Tensor, num_classes: int, score: Callable[[torch.Tensor], np.ndarray | float],
              floor: Callable[[int], np.ndarray | float], out: np.ndarray, *, device: torch.device,
              max_iter: int = MAX_ITER, batched: bool = True, memory_budget: int | None = None,
              progress: bool = True, on_fit: Callable[[int, int], None] | None = None, desc: str = "probe fits"
              ) -> np.ndarray:
    """Fit the probe of every cell this process owns, then the floor; returns ``out`` summed over ranks.

    ``load(p, ti)`` gives cell ``(p, ti)``'s standardized float64 ``(train, test)`` features (``n_rows`` rows in
    all), called only when its fit is due; ``score(test logits)`` is the cell's row of ``out`` (``[cells + 1,
    ...]``: the cells tap-major, then the floor), and ``floor(memory budget)`` the floor's.  The fits run on
    ``device``, together (``batched``, at most ``memory_budget`` bytes a batch) or one after another;
    ``on_fit(done, cells + 1)`` follows them, or a progress bar when ``progress`` and no ``on_fit``.
    """
    cells = run.cells
    budget = default_memory_budget(device) if memory_budget is None else memory_budget
    mine = [i for i in range(len(cells)) if distributed.owns(i)]  # every cell with one process
    total = len(cells) + 1
    with distributed.failing_together(), _fit_progress(progress, on_fit, total, desc) as fitted:
        fits = probe_logits([lambda c=cells[i]: load(*c) for i in mine],
                            [run.feats[run.taps[cells[i][0]]].shape[-1] for i in mine], n_rows, labels, num_classes,
                            max_iter=max_iter, batched=batched, memory_budget=budget)
        for done, (j, logits) in enumerate(fits, start=1):
            out[mine[j]] = score(logits)
            fitted(done)
        if distributed.owns(len(cells)):
            out[-1] = floor(budget)
        fitted(total)
    return distributed.sum_over_ranks(out)


def probe_grid(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    timesteps: str | Sequence[int],
    taps: str | Sequence[str],
    num_classes: int,
    noise: str | Noiser = "ddpm",
    conditioning: Conditioning | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: bool = True,
    on_fit: Callable[[int, int], None] | None = None,
    batched: bool = True,
    memory_budget: int | None = None,
) -> ProbeGrid:
    """Linear-probe top-1 accuracy of pooled features for every (t, tap), and the raw-pixel floor.

    ``train``/``test`` are ``(images [N, ...] in the model's range on its device, labels [N])``; ``conditioning``
    covers the train images then the test images.  Train and test images are run together (one batched run);
    features are the token mean of each tap.  The probes are fitted on the model's device, all cells together
    (``batched``, in batches of at most ``memory_budget`` bytes) or one after another.  ``on_fit(done, total)`` is
    called after each probe fit (the raw-pixel floor is the last); without it, ``progress`` shows a bar.  With several
    processes (:mod:`.distributed`), each fits the cells it owns and the results are summed across ranks.
    """
    (xtr, ytr), (xte, yte) = check_grid_args(train, test, num_classes, batched, memory_budget, on_fit)
    run = capture_grid(model, xtr, xte, timesteps, taps, True, noise=noise, conditioning=conditioning, seed=seed,
                       chunk_size=chunk_size, progress=progress)
    n, m, dev = xtr.shape[0], xte.shape[0], xtr.device

    def load(p: int, ti: int) -> tuple[torch.Tensor, torch.Tensor]:
        feat = run.feats[run.taps[p]][:, ti].to(dev, torch.float64)
        tr, te = standardize(feat[:n], feat[n:])
        return tr, te

    def right(logits: torch.Tensor) -> np.ndarray:
        return (logits.argmax(1).cpu() == yte.cpu()).numpy()

    def raw_pixels(budget: int) -> np.ndarray:
        raw = standardize(xtr.flatten(1).to(torch.float64), xte.flatten(1).to(torch.float64))
        (_, logits), = probe_logits([lambda: tuple(raw)], [raw[0].shape[1]], n + m, ytr, num_classes,
                                    batched=batched, memory_budget=budget)
        return right(logits)

    out = fit_cells(run, load, n + m, ytr, num_classes, right, raw_pixels,
                    np.zeros((len(run.cells) + 1, m), dtype=bool), device=dev, batched=batched,
                    memory_budget=memory_budget, progress=progress, on_fit=on_fit)
    correct, floor_correct = run.by_timestep(out[:-1]), out[-1]
    return ProbeGrid(run.timesteps, run.taps, correct.mean(-1), "accuracy", float(floor_correct.mean()), run.samples,
                     time.perf_counter() - run.start, extra={"fit": "batched" if batched else "one_at_a_time"},
                     correct=correct, floor_correct=floor_correct)


def dense_probe_grid(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    timesteps: str | Sequence[int],
    taps: str | Sequence[str],
    num_classes: int,
    noise: str | Noiser = "ddpm",
    conditioning: Conditioning | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: bool = True,
    batched: bool = True,
    memory_budget: int | None = None,
) -> ProbeGrid:
    """Dense-probe mIoU of grid features for every (t, tap), and the raw-patch floor.

    ``train``/``test`` are ``(images in the model's range, pixel targets [N, H, W])`` with labels in
    ``[0, num_classes)`` (for shipped datasets :func:`~.probe.dense_target`, background first).
    """
    (xtr, ttr), (xte, tte) = check_grid_args(train, test, num_classes, batched, memory_budget)
    run = capture_grid(model, xtr, xte, timesteps, taps, False, noise=noise, conditioning=conditioning, seed=seed,
                       chunk_size=chunk_size, progress=progress)
    n, dev = xtr.shape[0], xtr.device
    hw = tuple(tokens_to_grid(run.feats[run.taps[0]][:1, 0]).shape[2:])

    def load(p: int, ti: int) -> tuple[torch.Tensor, torch.Tensor]:
        grid = tokens_to_grid(run.feats[run.taps[p]][:, ti]).to(dev)
        return dense_tokens(grid[:n], grid[n:])

    def miou(logits: torch.Tensor) -> float:
        return dense_miou_from_logits(logits, tte, hw, num_classes)

    def raw_patches(budget: int) -> float:
        raw = torch.cat([xtr, xte]).float()
        raw_grid = torch.nn.functional.pixel_unshuffle(raw, xtr.shape[-1] // hw[1])  # [N, C*p*p, h, w]: patches
        return dense_probe_miou(raw_grid[:n], ttr, raw_grid[n:], tte, num_classes)

    rows = (n + xte.shape[0]) * hw[0] * hw[1]
    out = fit_cells(run, load, rows, patch_labels(ttr, hw, num_classes).reshape(-1), num_classes, miou, raw_patches,
                    np.zeros(len(run.cells) + 1), device=dev, max_iter=DENSE_MAX_ITER, batched=batched,
                    memory_budget=memory_budget, progress=progress, desc="dense probe fits")
    return ProbeGrid(run.timesteps, run.taps, run.by_timestep(out[:-1]), "mIoU", float(out[-1]), run.samples,
                     time.perf_counter() - run.start, extra={"fit": "batched" if batched else "one_at_a_time"})


@contextmanager
def _fit_progress(progress: bool, on_fit: Callable[[int, int], None] | None, total: int, desc: str
                  ) -> Iterator[Callable[[int], None]]:
    """``fitted(done)`` for a loop of probe fits: calls ``on_fit(done, total)``, or moves a progress bar (closed on
    exit, error or not) when ``progress`` and no ``on_fit`` is given."""
    bar = None
    if on_fit is None and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="fit", desc=desc, leave=False)

    def fitted(done: int) -> None:
        if on_fit is not None:
            on_fit(done, total)
        elif bar is not None:
            bar.update(done - bar.n)

    try:
        yield fitted
    finally:
        if bar is not None:
            bar.close()
