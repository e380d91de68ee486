"""Labelled data checked against the model and split: a seeded stratified test split, labels mapped to 0..K-1."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..constants import DEFAULT_TEST_FRACTION
from ..forward import model_device_dtype


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
    """Raise if ``images [N, C, H, W]`` are not inputs ``model`` takes (:func:`~aselect_kernels.geometry.
    check_model_inputs`: channels, patch and sample size)."""
    from ..arguments import wrong_type
    from ..geometry import check_model_inputs

    if not isinstance(images, torch.Tensor):
        raise wrong_type(what, "a torch.Tensor [N, C, H, W]", images)
    if images.dim() != 4:
        raise ValueError(f"{what} must be [N, C, H, W], got shape {tuple(images.shape)}")
    check_model_inputs(model, images, what)


@dataclass
class Split:
    """Model-range images, class indices ``0..K-1``, optional pixel targets, and the labels as given (what class
    conditioning feeds the model)."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    given: torch.Tensor


def prepare_splits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor | None,
                   test_labels: torch.Tensor | None, masks: torch.Tensor | None = None,
                   test_masks: torch.Tensor | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
                   seed: int = 0, n_train: int | None = None, n_test: int | None = None
                   ) -> tuple[Split, Split, list[int], int]:
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

    def split(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor | None) -> Split:
        idx = torch.tensor([lookup[int(v)] for v in y.tolist()], dtype=torch.long)
        return Split(x.to(device, torch.float32), idx, m.to(torch.int64) if m is not None else None, y.long())

    dense_classes = 0
    if masks is not None:
        assert test_masks is not None
        if min(int(masks.min()), int(test_masks.min())) < 0:
            raise ValueError("masks hold negative pixel labels")
        dense_classes = max(int(masks.max()), int(test_masks.max())) + 1
        if dense_classes < 2:
            raise ValueError("masks hold a single pixel label; the dense probe needs at least 2")
    return split(images, labels, masks), split(test_images, test_labels, test_masks), classes, dense_classes
