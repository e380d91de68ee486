"""Linear probes: the exhaustive baseline that selection is validated against.

* **Classification**: multinomial logistic regression on standardized pooled features ``[N, C]``, fitted full-batch
  with L-BFGS in float64 on the features' device.  The L2 weight is fixed (:data:`L2`), chosen once and never
  tuned on the test split; the seed fixes nothing random (the fit is deterministic) but is kept for API symmetry.
* **Dense (segmentation)**: a per-token linear classifier on grid features ``[N, C, h, w]``, trained on per-patch
  labels (the majority pixel label of each patch) and scored by mIoU at pixel resolution with the patch logits
  upsampled bilinearly.

The dense target of Fashion-MNIST/MNIST-style images is semantic: class 0 is background, and a pixel whose value
exceeds :data:`FOREGROUND_THRESHOLD` (on the uint8 scale) gets its image's class + 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .logistic import fit_padded, plan_batches

#: L2 penalty on the probe weights (mean loss + L2 * ||W||^2), fixed a priori.
L2 = 1e-3
#: L-BFGS iterations of a probe fit (classification), and of a dense fit (tens of thousands of tokens).
MAX_ITER = 200
DENSE_MAX_ITER = 50
#: uint8 pixel value above which a pixel is foreground in the dense target.
FOREGROUND_THRESHOLD = 32


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale by the training split's per-feature mean and std (std floor 1e-6)."""
    mu = train.mean(0, keepdim=True)
    sd = train.std(0, keepdim=True).clamp_min(1e-6)
    return [(t - mu) / sd for t in (train, *others)]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = L2,
                 max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``softmax(x W + b)`` by full-batch L-BFGS; returns ``(W [D, K], b [K])``.

    Minimises ``mean cross-entropy + l2 * ||W||^2`` in float64.
    """
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"probe needs features [N, D] and labels [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.to(torch.float64)
    y = y.to(device=x.device, dtype=torch.long)
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def linear_probe_correct(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                         test_y: torch.Tensor, num_classes: int, l2: float = L2) -> torch.Tensor:
    """Whether a logistic-regression probe on standardized features gets each test sample right (bool, CPU)."""
    tr, te = standardize(train_x.to(torch.float64), test_x.to(torch.float64))
    w, b = fit_logistic(tr, train_y, num_classes, l2)
    return (te @ w + b).argmax(1).cpu() == test_y.cpu()


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, num_classes: int, l2: float = L2) -> float:
    """Test top-1 accuracy of a logistic-regression probe on standardized features."""
    return float(linear_probe_correct(train_x, train_y, test_x, test_y, num_classes, l2).to(torch.float64).mean())


def probe_logits(cells: Sequence[Callable[[], tuple[torch.Tensor, torch.Tensor]]], widths: Sequence[int],
                 n_rows: int, labels: torch.Tensor, num_classes: int, l2: float = L2, max_iter: int = MAX_ITER,
                 batched: bool = True, memory_budget: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Fit a probe per cell and yield ``(cell index, test logits [M, K])`` as fits finish.

    Each cell is a function returning its standardized float64 ``(train [N, D], test [M, D])`` features (widths
    ``widths``, ``n_rows = N + M``), called only when its fit is due, so memory holds one batch of cells.
    ``batched`` fits cells together (:mod:`~aselect_kernels.validation.logistic`, batches bounded by
    ``memory_budget`` bytes); otherwise one after another with
    :func:`fit_logistic`.  Both reach the same unique optimum per cell.
    """
    if not batched:
        for i, load in enumerate(cells):
            tr, te = load()
            w, b = fit_logistic(tr, labels, num_classes, l2, max_iter)
            yield i, te @ w + b
        return
    for batch in plan_batches(widths, n_rows, num_classes, memory_budget):
        loaded = [cells[i]() for i in batch]
        fits = fit_padded([tr for tr, _ in loaded], labels, num_classes, l2, max_iter)
        for i, (_, te), (w, b) in zip(batch, loaded, fits, strict=True):
            yield i, te @ w + b


def dense_target(images_u8: torch.Tensor, labels: torch.Tensor, threshold: int = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """Pixel labels ``[N, H, W]``: 0 background, ``label + 1`` where the pixel exceeds ``threshold``."""
    if images_u8.dim() == 4:
        images_u8 = images_u8[:, 0]
    fg = images_u8.to(torch.int64) > threshold
    return torch.where(fg, labels.reshape(-1, 1, 1).to(torch.int64) + 1, torch.zeros_like(fg, dtype=torch.int64))


def patch_labels(target: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """Majority pixel label of each patch: ``[N, H, W]`` -> ``[N, h, w]`` (ties go to the smaller label)."""
    n, height, width = target.shape
    ph, pw = height // grid[0], width // grid[1]
    onehot = F.one_hot(target[:, : grid[0] * ph, : grid[1] * pw], num_classes).to(torch.float32)
    counts = onehot.reshape(n, grid[0], ph, grid[1], pw, num_classes).sum(dim=(2, 4))
    return counts.argmax(-1)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean over classes present in prediction or target of |pred ∩ target| / |pred ∪ target|."""
    ious = []
    for k in range(num_classes):
        p, t = pred == k, target == k
        union = (p | t).sum()
        if union > 0:
            ious.append(float((p & t).sum()) / float(union))
    return sum(ious) / len(ious)


def dense_tokens(train_grid: torch.Tensor, test_grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid features ``[N, C, h, w]`` as standardized float64 tokens ``[N * h * w, C]`` (train statistics)."""
    c = train_grid.shape[1]
    tr_tokens = train_grid.permute(0, 2, 3, 1).reshape(-1, c).to(torch.float64)
    te_tokens = test_grid.permute(0, 2, 3, 1).reshape(-1, c).to(torch.float64)
    tr, te = standardize(tr_tokens, te_tokens)
    return tr, te


def dense_miou_from_logits(logits: torch.Tensor, test_target: torch.Tensor, grid: tuple[int, int],
                           num_classes: int) -> float:
    """mIoU of per-token logits ``[M * h * w, K]`` upsampled bilinearly to the pixel targets ``[M, H, W]``."""
    m = test_target.shape[0]
    logits = logits.reshape(m, grid[0], grid[1], num_classes).permute(0, 3, 1, 2)
    up = F.interpolate(logits, size=tuple(test_target.shape[1:]), mode="bilinear", align_corners=False)
    return mean_iou(up.argmax(1).cpu(), test_target.cpu(), num_classes)


def dense_probe_miou(train_grid: torch.Tensor, train_target: torch.Tensor, test_grid: torch.Tensor,
                     test_target: torch.Tensor, num_classes: int, l2: float = L2) -> float:
    """mIoU of a per-token linear classifier on grid features ``[N, C, h, w]`` against pixel targets
    ``[N, H, W]``: trained on per-patch majority labels, evaluated with logits upsampled to ``H x W``."""
    h, w = train_grid.shape[2:]
    tr_tokens, te_tokens = dense_tokens(train_grid, test_grid)
    tr_labels = patch_labels(train_target, (h, w), num_classes).reshape(-1)
    wt, b = fit_logistic(tr_tokens, tr_labels, num_classes, l2, max_iter=DENSE_MAX_ITER)
    return dense_miou_from_logits(te_tokens @ wt + b, test_target, (h, w), num_classes)
