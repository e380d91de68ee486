"""The label-free candidate criteria of aselect_kernels.validation.label_free against independent formulations."""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy

from aselect_kernels.validation import label_free


def _hsic_cka(a: np.ndarray, b: np.ndarray) -> float:
    """CKA through centred Gram matrices: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    n = a.shape[0]
    h = np.eye(n) - 1.0 / n
    k, lm = h @ a @ a.T @ h, h @ b @ b.T @ h
    return float(np.trace(k @ lm) / np.sqrt(np.trace(k @ k) * np.trace(lm @ lm)))


def test_linear_cka_matches_the_gram_matrix_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 5))
    b = a @ rng.standard_normal((5, 11)) + 0.5 * rng.standard_normal((37, 11))
    assert abs(label_free.linear_cka(a, b) - _hsic_cka(a, b)) < 1e-10
    assert abs(label_free.linear_cka(a, 3.0 * a + 2.0) - 1.0) < 1e-10  # invariant to scale and offset


def test_population_erank_matches_scipy_entropy():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((23, 7)) * np.array([5, 1, 1, 0.2, 3, 1, 1]) + 4.0
    z = (f - f.mean(0)) / (f.std(0) + 1e-6)
    eig = np.clip(np.linalg.eigvalsh(z.T @ z), 0, None)
    assert abs(label_free.population_erank(f) - np.exp(entropy(eig / eig.sum()))) < 1e-8
    rank_one = np.outer(rng.standard_normal(23), np.ones(4))
    assert abs(label_free.population_erank(rank_one) - 1.0) < 1e-6


def test_criteria_limits():
    """Two identical draws explain all variance (sf = 1); independent draws of pure noise explain none."""
    rng = np.random.default_rng(2)
    n, t, c = 400, 3, 6
    same = rng.standard_normal((n, t, c))
    pooled = {"0|a": same, "1|a": same.copy(), "0|b": rng.standard_normal((n, t, c)),
              "1|b": rng.standard_normal((n, t, c))}
    token_var = np.ones((t, 2))
    out = label_free.criteria(pooled, ["a", "b"], token_var)
    sf, bw = out[..., label_free.NAMES.index("sf")], out[..., label_free.NAMES.index("bw")]
    np.testing.assert_allclose(sf[:, 0], 1.0, atol=1e-12)
    assert np.all(np.abs(sf[:, 1]) < 0.15)
    np.testing.assert_allclose(bw[:, 0], same.var(0, ddof=1).mean(-1), rtol=1e-6)
    np.testing.assert_allclose(out[..., label_free.NAMES.index("sf_bw")], sf * bw, rtol=1e-12)
