"""The two-view and two-draw criteria of validation.invariance, and the blurred benchmark, against direct numpy or
scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aselect_kernels.noise import Noiser
from aselect_kernels.validation.datasets import gaussian_blur
from aselect_kernels.validation.invariance import (
    bootstrap_interval,
    denoised,
    linear_cka,
    lodo_gaps,
    plateau_pick,
    retrieval,
    retrieval_pick,
    threshold_pick,
    x0_disagreement,
)


def _retrieval_loop(a, b):
    both = np.vstack([a, b])
    mu, sd = both.mean(0), both.std(0) + 1e-8
    za, zb = (a - mu) / sd, (b - mu) / sd
    hits, margins = 0, []
    for i in range(len(a)):
        cos = [za[i] @ zb[j] / (np.linalg.norm(za[i]) * np.linalg.norm(zb[j])) for j in range(len(b))]
        rival = max(c for j, c in enumerate(cos) if j != i)
        hits += cos[i] > rival
        margins.append(cos[i] - rival)
    return hits / len(a), float(np.mean(margins))


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_matches_a_loop_over_pairs(seed):
    rng = np.random.default_rng(seed)
    n, c = rng.integers(5, 30), rng.integers(2, 12)
    a = rng.normal(size=(n, c)) * rng.uniform(0.1, 5, size=c) + rng.normal(size=c)
    b = a + rng.uniform(0.2, 3) * rng.normal(size=(n, c))
    acc, margin = retrieval(a, b)
    want_acc, want_margin = _retrieval_loop(a, b)
    assert acc == pytest.approx(want_acc) and margin == pytest.approx(want_margin, abs=1e-10)


def test_retrieval_is_perfect_for_identical_views_and_near_chance_for_unrelated_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    assert retrieval(a, a.copy())[0] == 1.0
    acc = np.mean([retrieval(rng.normal(size=(50, 8)), rng.normal(size=(50, 8)))[0] for _ in range(40)])
    assert acc < 0.08  # chance is 1/50


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_pick_orders_by_accuracy_then_margin_then_position(seed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(0, 3, size=(rng.integers(2, 6), rng.integers(2, 6))) / 2.0
    mar = rng.integers(0, 2, size=acc.shape) / 4.0
    cells = [(i, p) for i in range(acc.shape[0]) for p in range(acc.shape[1])]
    want = min(cells, key=lambda ip: (-acc[ip], -mar[ip], ip[0], ip[1]))
    assert retrieval_pick(acc, mar) == want


@pytest.mark.parametrize("seed", range(4))
def test_linear_cka_matches_the_hsic_formula(seed):
    rng = np.random.default_rng(seed)
    n = rng.integers(6, 40)
    a = rng.normal(size=(n, rng.integers(2, 10)))
    b = a @ rng.normal(size=(a.shape[1], rng.integers(2, 10))) + rng.normal(size=(n, 1)) * rng.uniform(0, 3)
    h = np.eye(n) - 1.0 / n
    k, ell = h @ a @ a.T @ h, h @ b @ b.T @ h
    want = np.trace(k @ ell) / np.sqrt(np.trace(k @ k) * np.trace(ell @ ell))
    assert linear_cka(a, b) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_plateau_and_threshold_picks_match_loops(seed):
    rng = np.random.default_rng(seed)
    v = rng.uniform(size=rng.integers(2, 12))
    tol, limit = rng.uniform(0, 0.5), rng.uniform(0, 1)
    assert plateau_pick(v, tol) == max(i for i in range(len(v)) if v[i] >= v.max() - tol)
    below = [i for i in range(len(v)) if v[i] <= limit]
    assert threshold_pick(v, limit) == (below[-1] if below else 0)


def test_denoised_inverts_the_ddpm_forward_process():
    noiser = Noiser("ddpm")
    gen = torch.Generator().manual_seed(3)
    x0, eps = torch.rand(6, 1, 5, 5, generator=gen) * 2 - 1, torch.randn(6, 1, 5, 5, generator=gen)
    t = torch.randint(0, 1000, (6,), generator=gen)
    x_t = noiser.add_noise(x0, eps, t)
    abar = noiser.scheduler.alphas_cumprod.double().numpy()[t.numpy()]
    np.testing.assert_allclose(denoised(x_t.numpy(), eps.numpy(), abar), x0.numpy(), atol=2e-3 / np.sqrt(abar.min()))


def test_x0_disagreement_matches_its_formula_and_its_ends():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, 3, 4)), rng.normal(size=(12, 3, 4))
    num = sum(np.sum((a[i] - b[i]) ** 2) for i in range(12))
    den = sum(np.sum((a[i] - a.mean(0)) ** 2) + np.sum((b[i] - b.mean(0)) ** 2) for i in range(12))
    assert x0_disagreement(a, b) == pytest.approx(num / den)
    assert x0_disagreement(a, a) == 0.0
    big_a, big_b = rng.normal(size=(4000, 6)), rng.normal(size=(4000, 6))
    assert x0_disagreement(big_a, big_b) == pytest.approx(1.0, abs=0.05)  # independent draws, same spread


@pytest.mark.parametrize("seed", range(4))
def test_lodo_gaps_match_a_loop(seed):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 5, size=(rng.integers(2, 8), rng.integers(2, 8))).astype(float)
    chosen, gaps = lodo_gaps(g)
    for k in range(g.shape[1]):
        means = [np.mean([g[r, j] for j in range(g.shape[1]) if j != k]) for r in range(g.shape[0])]
        want = min(range(len(means)), key=lambda r: (means[r], r))
        assert chosen[k] == want and gaps[k] == g[want, k]


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(5)
    d = rng.normal(size=rng.integers(6, 15)) + 0.3
    lo, hi = bootstrap_interval(d, 0.95, n_boot=20000)
    ref = bootstrap((d,), np.mean, n_resamples=20000, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(9)).confidence_interval
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert abs(lo - ref.low) < 0.1 * se and abs(hi - ref.high) < 0.1 * se
    assert bootstrap_interval(np.full(5, 2.0), 0.9) == (2.0, 2.0)


@pytest.mark.parametrize("seed", range(3))
def test_gaussian_blur_matches_scipy(seed):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    u8 = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    sigma = float(rng.choice([0.5, 1.0, 1.5, 2.5]))  # scipy's radius int(3 sigma + 0.5) equals ceil(3 sigma) here
    got = gaussian_blur(u8, sigma).astype(int)
    want = np.stack([np.rint(gaussian_filter(im.astype(np.float64), sigma, mode="constant", truncate=3.0))
                     for im in u8]).astype(int)
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99  # rounding ties aside
    assert got.std() < u8.std()


def test_fashion_blur_uses_unseen_test_images_blurred():
    from aselect_kernels.embedded.data import DEFAULT_ROOT, load_embedded_images, load_fashion_mnist
    from aselect_kernels.validation.datasets import BLUR_SIGMA, load_dataset, unused_fashion_test

    try:
        raw, labels = load_fashion_mnist("test", DEFAULT_ROOT)
    except FileNotFoundError:
        pytest.skip("Debian's Fashion-MNIST files are not installed")
    shipped = {a.tobytes() for s in ("train", "test") for a in load_embedded_images(s)[0]}
    kept, kept_labels = unused_fashion_test(40)
    raw_index = {a.tobytes(): i for i, a in enumerate(raw)}
    idx = [raw_index[a.tobytes()] for a in kept]
    assert idx == sorted(idx) and not any(a.tobytes() in shipped for a in kept)
    assert all(raw[i].tobytes() in shipped for i in range(idx[-1]) if i not in idx)  # only shipped skipped
    (xtr, ytr), (xte, yte), k = load_dataset("fashion_blur", 15, 25)
    assert k == 10 and np.array_equal(ytr.numpy(), kept_labels[:15]) and np.array_equal(yte.numpy(), kept_labels[15:])
    np.testing.assert_array_equal(xte.numpy(), gaussian_blur(kept[15:], BLUR_SIGMA))


def test_perturbed_datasets_share_the_noisy_grid_and_sizes():
    from aselect_kernels.constants import DATASETS, NOISE_TIMESTEPS, PERTURBED_DATASETS
    from aselect_kernels.validation.datasets import DEFAULT_N_TEST, DEFAULT_N_TRAIN, DEFAULT_TIMESTEPS

    assert set(PERTURBED_DATASETS) <= set(DATASETS)
    assert set(DEFAULT_TIMESTEPS) == set(DEFAULT_N_TRAIN) == set(PERTURBED_DATASETS)
    assert all(DEFAULT_TIMESTEPS[d] == NOISE_TIMESTEPS and DEFAULT_N_TEST[d] == 500 for d in PERTURBED_DATASETS)
