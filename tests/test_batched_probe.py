"""Batched probe fits against one-at-a-time fits, a Newton oracle and scikit-learn, on the same cells.

Each cell's objective (mean cross-entropy + L2 on W) is strictly convex on the subspace both fitters move in, so
its optimum is unique and the two fitters may differ only by where they stop.  Tolerances:

* against Newton's method run to machine precision, with L-BFGS run until its gradient is below 1e-11: weights
  within 1e-7 (strong convexity, modulus >= 2 * l2 = 2e-3 in W, turns a gradient of 1e-11 into at most ~1e-8 of
  distance per coordinate, plus round-off);
* batched vs one-at-a-time at the production stopping rule (largest gradient entry 1e-9, or a loss change below
  1e-12): class probabilities within 2e-4, as the one-at-a-time fit is held to scikit-learn.  There both stop
  near gradient 1e-7, i.e. within ~1e-4 of the optimum, on a loss surface whose curvature in W is 2e-3;
* zero-padding a cell to a wider batch: the real coordinates follow the same iterates, so within 1e-10, and the
  padded weights are exactly 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from aselect_kernels.validation.grids import probe_grid
from aselect_kernels.validation.logistic import cell_bytes, fit_padded, lbfgs_logistic, plan_batches
from aselect_kernels.validation.probe import fit_logistic, probe_logits, standardize

from tiny_models import tiny_dit

L2 = 1e-3


def _cells(widths: list[int], n: int, k: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Standardized float64 features of a class mixture per width (overlapping classes), shared labels."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=gen)
    y[: min(n, k)] = torch.arange(min(n, k))  # every class present (when n allows)
    cells = []
    for d in widths:
        centers = torch.randn(k, d, generator=gen, dtype=torch.float64)
        x = centers[y] + 1.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
        cells.append(standardize(x)[0])
    return cells, y


def _newton(x: torch.Tensor, y: torch.Tensor, k: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimum by Newton's method with the exact Hessian, written out independently of the fitters:
    ``H = mean_n (diag p_n - p_n p_n^T) (x) x~_n x~_n^T + 2 l2 (I_W (x) I_K)`` over ``x~ = [x, 1]``; a
    pseudo-inverse, as the bias is free along all-ones (both fitters stay at sum b = 0, as does this)."""
    n, d = x.shape
    xa = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    onehot = torch.nn.functional.one_hot(y, k).double()
    penalty = torch.ones(d + 1, k, dtype=torch.float64)
    penalty[-1] = 0.0
    theta = torch.zeros(d + 1, k, dtype=torch.float64)
    for _ in range(40):
        p = torch.softmax(xa @ theta, 1)
        g = xa.t() @ (p - onehot) / n + 2 * l2 * penalty * theta
        curv = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # [N, K, K]
        h = torch.einsum("ni,nab,nj->iajb", xa, curv, xa) / n
        h = h.reshape((d + 1) * k, (d + 1) * k) + torch.diag(2 * l2 * penalty.reshape(-1))
        theta = theta - torch.linalg.lstsq(h, g.reshape(-1, 1), rcond=1e-13).solution.reshape(d + 1, k)
    return theta[:-1], theta[-1]


def test_batched_reaches_the_newton_optimum_of_every_cell():
    k = 3
    cells, y = _cells([3, 7, 5, 1], n=90, k=k, seed=0)
    width = max(c.shape[1] for c in cells)
    x = torch.zeros(len(cells), 90, width, dtype=torch.float64)
    for j, c in enumerate(cells):
        x[j, :, : c.shape[1]] = c
    fit = lbfgs_logistic(x, y, k, L2, max_iter=500, tolerance_grad=1e-11, tolerance_change=0.0)
    assert (fit.grad_max <= 1e-10).all(), fit.grad_max
    for j, c in enumerate(cells):
        w, b = _newton(c, y, k, L2)
        np.testing.assert_allclose(fit.w[j, : c.shape[1]].numpy(), w.numpy(), atol=1e-7)
        np.testing.assert_allclose(fit.b[j].numpy(), b.numpy(), atol=1e-7)
        assert torch.count_nonzero(fit.w[j, c.shape[1]:]) == 0  # padded weights stay exactly zero


@pytest.mark.parametrize("n,k,widths", [(2, 2, [4]), (37, 5, [3, 11, 6, 11]), (200, 10, [96, 17])])
def test_batched_matches_one_at_a_time(n, k, widths):
    cells, y = _cells(widths, n, k, seed=n)
    batched = fit_padded(cells, y, k, L2, max_iter=200)
    for c, (w, b) in zip(cells, batched, strict=True):
        w1, b1 = fit_logistic(c, y, k, L2)
        assert w.shape == w1.shape and b.shape == b1.shape
        np.testing.assert_allclose(torch.softmax(c @ w + b, 1).numpy(), torch.softmax(c @ w1 + b1, 1).numpy(),
                                   atol=2e-4)


def test_batched_matches_sklearn_on_one_cell():
    cells, y = _cells([13], n=240, k=4, seed=5)
    (w, b), = fit_padded(cells, y, 4, L2, max_iter=200)
    x = cells[0].numpy()
    # scikit-learn minimises 0.5 ||W||^2 + C sum CE  <=>  mean CE + ||W||^2 / (2 C n):  C = 1 / (2 n l2)
    sk = LogisticRegression(C=1 / (2 * len(x) * L2), tol=1e-10, max_iter=5000).fit(x, y.numpy())
    np.testing.assert_allclose(torch.softmax(cells[0] @ w + b, 1).numpy(), sk.predict_proba(x), atol=2e-4)


def test_padding_leaves_a_cell_unchanged():
    cells, y = _cells([5, 23], n=64, k=3, seed=7)
    alone = fit_padded(cells[:1], y, 3, L2, max_iter=200)[0]
    padded = fit_padded(cells, y, 3, L2, max_iter=200)[0]  # cell 0 padded to width 23
    np.testing.assert_allclose(padded[0].numpy(), alone[0].numpy(), atol=1e-10)
    np.testing.assert_allclose(padded[1].numpy(), alone[1].numpy(), atol=1e-10)


def test_non_contiguous_features_and_a_separable_cell():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(50, 12, generator=gen, dtype=torch.float64)
    x = standardize(base[:, ::2])[0].t().contiguous().t()  # column-major storage
    assert not x.is_contiguous()
    y = (x[:, 0] > 0).long()  # separable: only the L2 term keeps W finite
    (w, b), = fit_padded([x], y, 2, L2, max_iter=200)
    w1, b1 = fit_logistic(x, y, 2, L2)
    np.testing.assert_allclose(torch.softmax(x @ w + b, 1).numpy(), torch.softmax(x @ w1 + b1, 1).numpy(),
                               atol=2e-4)
    assert ((x @ w + b).argmax(1) == y).all()


def test_batches_respect_the_memory_budget():
    widths = [96, 384, 96, 17, 384, 96]
    per = {d: cell_bytes(100, d, 10) for d in set(widths)}
    budget = 3 * per[96]
    batches = plan_batches(widths, 100, 10, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(widths)))
    for b in batches:
        widest = max(widths[i] for i in b)
        assert len(b) == 1 or len(b) * per[widest] <= budget
        assert [widths[i] for i in b] == sorted(widths[i] for i in b) and widest <= 1.25 * widths[b[0]]
    assert plan_batches(widths, 100, 10, 10**12) == [[3], [0, 2, 5], [1, 4]]  # widths never mix 17, 96, 384
    assert plan_batches(widths, 100, 10, 1) == [[i] for i in sorted(range(6), key=lambda i: widths[i])]


def test_probe_logits_both_paths_yield_every_cell():
    cells, y = _cells([4, 9, 4], n=60, k=3, seed=11)
    tests = [c[:1] * 0.5 for c in cells]  # a test split of one image
    loaders = [lambda i=i: (cells[i], tests[i]) for i in range(3)]
    out = {mode: dict(probe_logits(loaders, [4, 9, 4], 61, y, 3, batched=mode)) for mode in (True, False)}
    assert sorted(out[True]) == sorted(out[False]) == [0, 1, 2]
    for i in range(3):
        np.testing.assert_allclose(torch.softmax(out[True][i], 1).numpy(), torch.softmax(out[False][i], 1).numpy(),
                                   atol=2e-4)


def test_probe_grid_batched_equals_one_at_a_time_on_a_tiny_dit():
    model = tiny_dit(sample=8)
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(30) % 3
    x = torch.rand(30, 1, 8, 8, generator=gen) * 0.4 - 0.8
    x[labels == 1, :, :4] += 0.9
    x[labels == 2, :, :, 4:] += 0.9
    args = ((x[:20], labels[:20]), (x[20:], labels[20:]), [0, 900], ["transformer_blocks.0",
                                                                      "transformer_blocks.0.ff.net.0"], 3)
    a = probe_grid(model, *args, progress=False, batched=True)
    b = probe_grid(model, *args, progress=False, batched=False)
    assert a.metric.shape == (2, 2) and a.extra["fit"] == "batched" and b.extra["fit"] == "one_at_a_time"
    np.testing.assert_array_equal(a.correct, b.correct)
    assert a.floor == b.floor
