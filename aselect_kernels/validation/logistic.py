"""Many independent logistic-regression probes fitted together: batched L-BFGS over stacked weights.

The probe grid fits one multinomial logistic regression per (timestep, tap) cell, all on the same labels.  Fitted
one after another, each fit is a few hundred tiny steps, bound by per-step overhead (Python, kernel launches).  Here
``G`` cells share every step: their standardized features are stacked into ``X [G, N, D + 1]`` (a trailing column of
ones carries the bias) and their weights into ``Theta [G, D + 1, K]``; the loss, gradient and L-BFGS two-loop
recursion are batched matrix products and reductions over ``G``, and each cell keeps its own step length, history
and stopping state.  A cell that has converged leaves the active batch.

Objective of each cell, as :func:`~aselect_kernels.validation.probe.fit_logistic`::

    f(W, b) = mean_n cross_entropy(softmax(x_n W + b), y_n) + l2 * ||W||^2        (bias not penalised)

with gradient ``X^T (softmax(X Theta) - onehot(y)) / N + 2 l2 [W; 0]``.  The L2 term makes ``f`` strongly convex in
``W``; ``b`` is determined up to adding one constant to every class, and both fitters start at zero and only move
within ``sum_k b_k = 0``, where the optimum is unique.  So this fit and the one-at-a-time fit converge to the same
point, which the tests check.

**Widths.**  Cells of different feature widths share a batch by zero-padding features to the widest.  A zero
feature column has zero gradient from the data term, so its weight starts at 0 and stays 0 (its only gradient is
``2 l2 w = 0``), and every inner product of the recursion is unchanged: the real coordinates follow exactly the
iterates they would follow alone.  :func:`plan_batches` groups cells by width, so padding stays small.

**Line search.**  Backtracking (Armijo) from a unit step, halving until the decrease condition holds, per cell.  In a
convex problem every step keeps ``s^T y > 0``, so the L-BFGS matrix stays positive definite; a pair with too little
curvature (round-off near the optimum) is given no weight.

**Stopping**, per cell, as ``torch.optim.LBFGS``: the largest gradient entry at most ``tolerance_grad``, or a change
of the loss or of the step below ``tolerance_change``, or ``max_iter`` iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Default memory a batch of cells may take (features, weights, history and per-step temporaries), in bytes, on
#: the CPU; on a GPU, :func:`default_memory_budget` allows up to 8 GiB.
DEFAULT_MEMORY_BUDGET = 1 << 30
_C1 = 1e-4  # Armijo sufficient-decrease constant
_MAX_HALVINGS = 40


@dataclass
class BatchedFit:
    """Weights ``W [G, D, K]`` and biases ``b [G, K]`` of every cell (D: the batch's padded width), and per cell
    the iterations taken, the final loss and the final largest gradient entry."""

    w: torch.Tensor
    b: torch.Tensor
    iterations: torch.Tensor
    loss: torch.Tensor
    grad_max: torch.Tensor


def _loss_grad(x: torch.Tensor, theta: torch.Tensor, onehot: torch.Tensor, l2: float,
               want_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-cell loss ``[G]`` and gradient ``[G, D + 1, K]`` (bias in the last row) at ``theta``."""
    n = x.shape[1]
    logits = torch.bmm(x, theta)  # [G, N, K]
    logp = torch.log_softmax(logits, dim=-1)
    w = theta[:, :-1]
    loss = -(logp * onehot).sum((1, 2)) / n + l2 * (w * w).sum((1, 2))
    if not want_grad:
        return loss, None
    resid = (logp.exp_() - onehot) / n
    grad = torch.bmm(x.transpose(1, 2), resid)
    grad[:, :-1] += 2.0 * l2 * w
    return loss, grad


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((-2, -1))


def _two_loop(grad: torch.Tensor, gamma: torch.Tensor, s_hist: list[torch.Tensor], y_hist: list[torch.Tensor],
              rho_hist: list[torch.Tensor]) -> torch.Tensor:
    """The L-BFGS two-loop recursion: the direction ``-H grad`` of every cell, with ``H0 = gamma I``."""
    q = -grad
    alphas = []
    for s, v, r in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
        a = r * _dot(s, q)
        q = q - a[:, None, None] * v
        alphas.append(a)
    q = q * gamma[:, None, None]
    for s, v, r, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
        beta = r * _dot(v, q)
        q = q + (a - beta)[:, None, None] * s
    return q


def _backtrack(xa: torch.Tensor, onehot: torch.Tensor, l2: float, theta: torch.Tensor, loss: torch.Tensor,
               direction: torch.Tensor, slope: torch.Tensor, step: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Armijo backtracking per cell from ``step``: halve until the decrease condition holds (at most
    :data:`_MAX_HALVINGS` times); returns the new weights, loss, gradient and whether each cell's step held."""
    new_theta = theta + step[:, None, None] * direction
    new_loss, new_grad = _loss_grad(xa, new_theta, onehot, l2)
    ok = new_loss <= loss + _C1 * step * slope
    halvings = 0
    while not bool(ok.all()) and halvings < _MAX_HALVINGS:
        halvings += 1
        pend = ~ok
        step = torch.where(pend, step * 0.5, step)
        cand = theta[pend] + step[pend][:, None, None] * direction[pend]
        c_loss, c_grad = _loss_grad(xa[pend], cand, onehot, l2)
        new_theta[pend], new_loss[pend], new_grad[pend] = cand, c_loss, c_grad
        ok[pend] = c_loss <= loss[pend] + _C1 * step[pend] * slope[pend]
    return new_theta, new_loss, new_grad, ok


def lbfgs_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int,
                   history_size: int = 20, tolerance_grad: float = 1e-9, tolerance_change: float = 1e-12
                   ) -> BatchedFit:
    """Fit ``G`` logistic regressions at once on ``x [G, N, D]`` (float64) and shared labels ``y [N]``."""
    if x.dim() != 3 or y.dim() != 1 or x.shape[1] != y.shape[0]:
        raise ValueError(f"batched probe needs features [G, N, D] and labels [N], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    g_all, n, d = x.shape
    dev, dt = x.device, torch.float64
    xa = torch.cat([x.to(dt), torch.ones(g_all, n, 1, dtype=dt, device=dev)], dim=2)
    onehot = torch.nn.functional.one_hot(y.to(device=dev, dtype=torch.long), num_classes).to(dt)[None]
    theta_out = torch.zeros(g_all, d + 1, num_classes, dtype=dt, device=dev)
    iters_out = torch.zeros(g_all, dtype=torch.long, device=dev)
    loss_out = torch.zeros(g_all, dtype=dt, device=dev)
    gmax_out = torch.zeros(g_all, dtype=dt, device=dev)

    active = torch.arange(g_all, device=dev)
    theta = theta_out.clone()
    loss, grad = _loss_grad(xa, theta, onehot, l2)
    s_hist: list[torch.Tensor] = []  # each [G_active, D + 1, K]
    y_hist: list[torch.Tensor] = []
    rho_hist: list[torch.Tensor] = []  # each [G_active]; 0 disables a pair
    gamma = torch.ones(g_all, dtype=dt, device=dev)
    gmax = grad.abs().amax((1, 2))
    done = gmax <= tolerance_grad
    it = 0
    while True:
        if bool(done.any()) or it >= max_iter:
            finished = done | (it >= max_iter)
            idx = active[finished]
            theta_out[idx], loss_out[idx], gmax_out[idx] = theta[finished], loss[finished], gmax[finished]
            iters_out[idx] = it
            keep = ~finished
            if not bool(keep.any()):
                break
            active, xa = active[keep], xa[keep]  # converged cells leave the batch (one copy per exit)
            theta, loss, grad, gamma, gmax = theta[keep], loss[keep], grad[keep], gamma[keep], gmax[keep]
            s_hist = [s[keep] for s in s_hist]
            y_hist = [v[keep] for v in y_hist]
            rho_hist = [r[keep] for r in rho_hist]
        it += 1
        direction = _two_loop(grad, gamma, s_hist, y_hist, rho_hist)
        slope = _dot(grad, direction)
        bad = slope >= 0  # not a descent direction (round-off): fall back to steepest descent
        if bool(bad.any()):
            direction = torch.where(bad[:, None, None], -grad, direction)
            slope = torch.where(bad, -_dot(grad, grad), slope)
        # First iteration: scale the step as torch's L-BFGS does (unit step once curvature is known).
        step = torch.ones_like(loss)
        if not s_hist:
            step = torch.clamp(1.0 / grad.abs().sum((1, 2)), max=1.0)
        new_theta, new_loss, new_grad, ok = _backtrack(xa, onehot, l2, theta, loss, direction, slope, step)
        s = new_theta - theta
        v = new_grad - grad
        sy = _dot(s, v)
        curv = sy > 1e-10 * _dot(v, v).sqrt() * _dot(s, s).sqrt()
        rho = torch.where(curv, 1.0 / torch.where(curv, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(curv, sy / _dot(v, v).clamp_min(1e-300), gamma)
        s_hist.append(s)
        y_hist.append(v)
        rho_hist.append(rho)
        if len(s_hist) > history_size:
            s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        change = (new_loss - loss).abs()
        step_size = s.abs().amax((1, 2))
        theta, grad = torch.where(ok[:, None, None], new_theta, theta), torch.where(ok[:, None, None], new_grad, grad)
        loss = torch.where(ok, new_loss, loss)
        gmax = grad.abs().amax((1, 2))
        done = (gmax <= tolerance_grad) | (change < tolerance_change) | (step_size <= tolerance_change) | ~ok
    return BatchedFit(theta_out[:, :-1], theta_out[:, -1], iters_out, loss_out, gmax_out)


def cell_bytes(n_rows: int, d: int, num_classes: int, history_size: int = 20) -> int:
    """Memory one cell takes while its batch is fitted (float64): its features (``n_rows``: train and test rows),
    two more copies of the training rows at most (the active batch and the line search's pending cells), ``~6``
    ``N x K`` temporaries, and weights, gradients and history."""
    return 8 * (3 * n_rows * (d + 1) + 6 * n_rows * num_classes + (2 * history_size + 8) * (d + 1) * num_classes)


def default_memory_budget(device: torch.device | str) -> int:
    """:data:`DEFAULT_MEMORY_BUDGET` on the CPU; on a CUDA device a quarter of its free memory, at most 8 GiB."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_MEMORY_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    return max(DEFAULT_MEMORY_BUDGET // 4, min(8 << 30, free // 4))


def plan_batches(widths: Sequence[int], n_rows: int, num_classes: int, memory_budget: int | None = None,
                 max_padding: float = 1.25) -> list[list[int]]:
    """Group cells (by index into ``widths``, their feature widths) into batches that each fit ``memory_budget``
    bytes (default :data:`DEFAULT_MEMORY_BUDGET`, counted at the batch's widest cell) and whose widest cell is at
    most ``max_padding`` times their narrowest, so padding wastes little; a cell too large for the budget gets a
    batch of its own."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if (last is not None and widths[i] <= max_padding * widths[last[0]]
                and (len(last) + 1) * cell_bytes(n_rows, widths[i], num_classes) <= budget):
            last.append(i)
        else:
            batches.append([i])
    return batches


def fit_padded(train: Sequence[torch.Tensor], y: torch.Tensor, num_classes: int, l2: float, max_iter: int
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fit one probe per feature matrix in ``train`` (each ``[N, D_i]`` on one device, same N, shared labels
    ``y``) in one batch, zero-padded to the widest; returns ``(W [D_i, K], b [K])`` per cell, in input order."""
    if not train:
        return []
    n = train[0].shape[0]
    for i, f in enumerate(train):
        if f.dim() != 2 or f.shape[0] != n:
            raise ValueError(f"cell {i}: features must be [N={n}, D], got {tuple(f.shape)}")
    width = max(f.shape[1] for f in train)
    x = torch.zeros(len(train), n, width, dtype=torch.float64, device=train[0].device)
    for j, f in enumerate(train):
        x[j, :, : f.shape[1]] = f
    fit = lbfgs_logistic(x, y, num_classes, l2, max_iter)
    return [(fit.w[j, : f.shape[1]], fit.b[j]) for j, f in enumerate(train)]
