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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import distributed
from .forward import Conditioning
from .noise import Noiser, parse_timesteps
from .probe import dense_probe_miou, dense_target, linear_probe_correct
from .reference import StatsConfig, effective_rank
from .result import SelectionResult
from .scorers import Moments, Scorer
from .select import capture_features, tokens_to_grid

TRIVIAL_RULES = ("smallest_t", "t100", "random")
#: Default test-split size per dataset: every shipped Fashion-MNIST test image; for digits, what is left of its 1797
#: images after 1000 training images.  One probe's accuracy then has a standard error near 1.3 points (near 2 points
#: on the 500 test images of the noisy benchmarks, sized for run time).
DEFAULT_N_TEST = {"fashion": 1000, "digits": 797, "fashion_noise": 500, "digits_noise": 500}
#: Default probe-training size: 1000 labeled images, 300 on the noisy benchmarks (few labels, as in the search).
DEFAULT_N_TRAIN = {"fashion_noise": 300, "digits_noise": 300}
#: The offline datasets of :func:`load_dataset`.
DATASETS = ("fashion", "digits", "fashion_noise", "digits_noise")
#: Default validation grid: every 50 steps, plus t = 10 and 25, where a well-trained DiT's probe accuracy can peak.
VALIDATION_TIMESTEPS = "0,10,25,50:1000:50"
#: Grid of the noisy benchmarks: finer around t = 100, coarser above 300 (9 timesteps, for run time).
NOISE_TIMESTEPS = "0,25,50,100,150,200,300,500,900"
#: Default grid per dataset (:data:`VALIDATION_TIMESTEPS` where none is named).
DEFAULT_TIMESTEPS = {"fashion_noise": NOISE_TIMESTEPS, "digits_noise": NOISE_TIMESTEPS}
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
    from .select import select_timestep

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
) -> ProbeGrid:
    """Linear-probe top-1 accuracy of pooled features for every (t, tap), and the raw-pixel floor.

    ``train``/``test`` are ``(images [N, ...] in the model's range on its device, labels [N])``.  Train and test
    images are run together (one batched run); features are the token mean of each tap.  ``on_fit(done, total)``
    is called after each probe fit (the raw-pixel floor is the last); without it, ``progress`` shows a bar.
    """
    (xtr, ytr), (xte, yte) = train, test
    start = time.perf_counter()
    feats, info = capture_features(model, torch.cat([xtr, xte]), timesteps, taps, pool=True, noise=noise,
                                   conditioning=conditioning, seed=seed, chunk_size=chunk_size, progress=progress)
    names = list(feats)
    ts = parse_timesteps(timesteps)
    n, dev = xtr.shape[0], xtr.device  # probes are fitted on the model's device
    correct = np.zeros((len(ts), len(names), xte.shape[0]), dtype=bool)
    floor_correct = np.zeros(xte.shape[0], dtype=bool)
    total = len(names) * len(ts) + 1
    with distributed.failing_together(), _fit_progress(progress, on_fit, total, "probe fits") as fitted:
        for p, name in enumerate(names):  # with several processes, each fits the cells it owns
            f = feats[name]  # [N, T, C]
            for ti in range(len(ts)):
                if distributed.owns(p * len(ts) + ti):
                    feat = f[:, ti].to(dev)
                    correct[ti, p] = linear_probe_correct(feat[:n], ytr, feat[n:], yte, num_classes).numpy()
                fitted(p * len(ts) + ti + 1)
        if distributed.owns(total - 1):
            floor_correct = linear_probe_correct(xtr.flatten(1), ytr, xte.flatten(1), yte, num_classes).numpy()
        fitted(total)
    correct, floor_correct = distributed.sum_over_ranks(correct), distributed.sum_over_ranks(floor_correct)
    return ProbeGrid(ts, names, correct.mean(-1), "accuracy", float(floor_correct.mean()), info.samples,
                     time.perf_counter() - start, correct=correct, floor_correct=floor_correct)


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
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    timesteps: str | Sequence[int],
    taps: str | Sequence[str],
    num_classes: int,
    noise: str | Noiser = "ddpm",
    seed: int = 0,
    chunk_size: int | None = None,
    progress: bool = True,
) -> ProbeGrid:
    """Dense-probe mIoU of grid features for every (t, tap), and the raw-patch floor.

    ``train``/``test`` are ``(images in the model's range, uint8 images [N, H, W], labels [N])``; the target is
    :func:`~aselect_kernels.probe.dense_target` with ``num_classes + 1`` labels (background first).
    """
    (xtr, utr, ytr), (xte, ute, yte) = train, test
    start = time.perf_counter()
    feats, info = capture_features(model, torch.cat([xtr, xte]), timesteps, taps, pool=False, noise=noise,
                                   seed=seed, chunk_size=chunk_size, progress=progress)
    ts = parse_timesteps(timesteps)
    n, dev = xtr.shape[0], xtr.device
    k = num_classes + 1
    ttr, tte = dense_target(utr, ytr), dense_target(ute, yte)
    miou = np.zeros(len(ts) * len(feats) + 1)  # the cells, then the raw-patch floor
    with distributed.failing_together(), _fit_progress(progress, None, len(feats) * len(ts),
                                                       "dense probe fits") as fitted:
        for p, name in enumerate(feats):  # with several processes, each fits the cells it owns
            tokens = feats[name]  # [N, T, L, C]
            for ti in range(len(ts)):
                if distributed.owns(ti * len(feats) + p):
                    grid = tokens_to_grid(tokens[:, ti]).to(dev)
                    miou[ti * len(feats) + p] = dense_probe_miou(grid[:n], ttr, grid[n:], tte, k)
                fitted(p * len(ts) + ti + 1)
        if distributed.owns(len(miou) - 1):
            h, w = tokens_to_grid(tokens[:1, 0]).shape[2:]
            raw = torch.cat([xtr, xte]).float()
            raw_grid = torch.nn.functional.pixel_unshuffle(raw, xtr.shape[-1] // w)  # [N, C*p*p, h, w]: patches
            miou[-1] = dense_probe_miou(raw_grid[:n], ttr, raw_grid[n:], tte, k)
    miou = distributed.sum_over_ranks(miou)
    floor, miou = float(miou[-1]), miou[:-1].reshape(len(ts), len(feats))
    return ProbeGrid(ts, list(feats), miou, "mIoU", floor, info.samples, time.perf_counter() - start)


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
    0..255; a seeded stratified-by-shuffle split (the DiT never saw them: transfer without retraining).
    ``fashion_noise`` / ``digits_noise``: the same splits with seeded Gaussian pixel noise
    (:func:`~aselect_kernels.nuisance.add_pixel_noise`, independent streams for train and test), the benchmark
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
        from .data import load_embedded_images

        (xtr, ytr), (xte, yte) = load_embedded_images("train"), load_embedded_images("test")
        xtr, ytr, xte, yte = (torch.as_tensor(np.asarray(a)) for a in (xtr, ytr, xte, yte))
        num_classes = 10
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
        from .nuisance import STREAMS, add_pixel_noise

        xtr, xte = (torch.from_numpy(add_pixel_noise(x.numpy(), seed=seed, stream=STREAMS[split]))
                    for x, split in ((xtr, "train"), (xte, "test")))
    if n_train > len(xtr) or n_test > len(xte):
        raise ValueError(f"{name} has {len(xtr)} train / {len(xte)} test images; asked {n_train} / {n_test}")
    return (xtr[:n_train], ytr[:n_train].long()), (xte[:n_test], yte[:n_test].long()), num_classes


def _model_input(u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return (u8.float() / 127.5 - 1.0)[:, None].to(device)


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
    dense_taps: str | None = None,
    candidates: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, SelectionResult, ProbeGrid, ProbeGrid | None]:
    """Selection on ``n_select`` unlabeled training images vs the exhaustive probe grid on ``n_train``/``n_test``
    labeled images (and a dense grid), on the same model, timesteps and taps; returns the report and its parts.
    ``None`` sizes and timesteps take the dataset's defaults (:data:`DEFAULT_N_TRAIN`, :data:`DEFAULT_N_TEST`,
    :data:`DEFAULT_TIMESTEPS`).  The noisy datasets have no dense task: their pixels do not give the dense target.

    The selection scores every registered statistic scorer; its cost is that run's.  With ``candidates`` a second,
    untimed run adds the :data:`CANDIDATES`.  The dense probe runs on ``dense_taps``, which must be among ``taps``;
    ``None`` takes the block outputs among ``taps``, or all of ``taps`` when there are none.  Every argument is
    checked before the first forward.
    """
    from .forward import model_device_dtype
    from .select import select_timestep

    device, _ = model_device_dtype(model)
    (utr, ytr), (ute, yte), k = load_dataset(dataset, n_train, n_test, seed)
    n_train, n_test = len(ytr), len(yte)
    timesteps = timesteps or DEFAULT_TIMESTEPS.get(dataset, VALIDATION_TIMESTEPS)
    Noiser("ddpm").check(parse_timesteps(timesteps))
    dense = dense and not dataset.endswith("_noise")
    if n_select > n_train:
        raise ValueError(f"n_select {n_select} exceeds the training images {n_train}")
    if dense:
        dense_taps = check_dense_taps(model, taps, dense_taps)
    xtr, xte = _model_input(utr, device), _model_input(ute, device)
    start = time.perf_counter()
    selection = select_timestep(model, xtr[:n_select], timesteps, taps, seed=seed, progress=progress)
    select_s = time.perf_counter() - start
    candidates_s = 0.0
    if candidates:
        start = time.perf_counter()
        selection = _with_candidates(selection, model, xtr[:n_select], timesteps, taps, seed, progress)
        candidates_s = time.perf_counter() - start
    grid = probe_grid(model, (xtr, ytr), (xte, yte), timesteps, taps, k, seed=seed, progress=progress)
    report: dict = {
        "dataset": dataset, "n_train": n_train, "n_test": n_test, "n_select": n_select, "timesteps": timesteps,
        "taps": taps, "seed": seed, "world_size": distributed.world_size(),
        "cost": {"select_wall_s": round(select_s, 3), "select_forward_samples": selection.meta["samples"],
                 "grid_wall_s": round(grid.wall_s, 3), "grid_forward_samples": grid.forward_samples,
                 "wall_ratio": grid.wall_s / select_s,
                 "forward_ratio": grid.forward_samples / selection.meta["samples"],
                 "candidates_wall_s": round(candidates_s, 3)},
        "classification": {"grid": grid.to_dict(), **compare(selection, grid, _tap_sets(selection.taps))},
    }
    dgrid = None
    if dense:
        (dtr, dytr), (dte, dyte) = (utr[:n_dense_train], ytr[:n_dense_train]), (ute[:n_dense_test], yte[:n_dense_test])
        dgrid = dense_probe_grid(model, (_model_input(dtr, device), dtr, dytr), (_model_input(dte, device), dte, dyte),
                                 timesteps, dense_taps, k, seed=seed, progress=progress)
        report["dense"] = {"grid": dgrid.to_dict(), "n_train": n_dense_train, "n_test": n_dense_test,
                           **compare(selection, dgrid, {"dense_taps": dgrid.taps})}
    return report, selection, grid, dgrid


def check_dense_taps(model: nn.Module, taps: str | Sequence[str], dense_taps: str | Sequence[str] | None
                     ) -> list[str]:
    """The dense probe's taps, checked to be among the selection's ``taps`` (its gaps are read from the selection);
    ``None`` takes the block outputs among ``taps``, or all of ``taps`` when there are none."""
    from .taps import resolve_taps

    scored = [s.name for s in resolve_taps(model, taps)]
    if dense_taps is None:
        blocks = _tap_sets(scored).get("block_out", [])
        return blocks or scored
    wanted = [s.name for s in resolve_taps(model, dense_taps)]
    missing = [t for t in wanted if t not in scored]
    if missing:
        raise ValueError(f"the dense probe's taps {missing[:3]}{' ...' if len(missing) > 3 else ''} are not among "
                         f"the scored taps {taps!r}: add them to the taps, or skip the dense probe")
    return wanted


def _tap_sets(taps: list[str]) -> dict[str, list[str]]:
    """``all`` plus one set per tap kind (query / attention-out / MLP-out / MLP-hidden / block-out) when they can be
    told apart."""
    sets = {"all": list(taps)}
    kinds = {"query": lambda t: t.endswith(("to_q", "[q]")), "attn_out": lambda t: t.endswith(("attn1", "attn")),
             "mlp_out": lambda t: t.endswith(("ff", "mlp")),
             "mlp_hidden": lambda t: t.endswith(("ff.net.0", "mlp.1", "mlp.act")),
             "block_out": lambda t: re.search(r"(^|\.)(transformer_blocks|blocks)\.\d+(@\d+)?$", t) is not None}
    for kind, test in kinds.items():
        members = [t for t in taps if test(t)]
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
