"""What a model can take, checked before the forward: the images' size against its patch and sample size, their
number against the scorers, their content, and class labels given with ``use_labels``.

Each check raises one ``ValueError`` naming the argument, what was given and what is accepted (messages as in
:mod:`.arguments`), or warns with :class:`NoSignalWarning`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: Fewest tokens a tap may have (``token_var`` takes a variance across tokens).
MIN_TOKENS = 2


class NoSignalWarning(UserWarning):
    """The images carry no signal (each is constant, or all are the same image): any selection is arbitrary."""


@dataclass(frozen=True)
class Geometry:
    """The input sizes a model takes: ``patch`` (height and width must be multiples of it), ``size`` (the one
    ``(H, W)`` it takes, when fixed), ``largest`` (the largest side, when its position table caps it), ``square``
    (it takes square inputs only), ``trained`` (the size it was trained at, where it takes others too); ``None``
    where unknown."""

    patch: int | None = None
    size: tuple[int, int] | None = None
    square: bool = False
    source: str = ""
    largest: int | None = None
    trained: tuple[int, int] | None = None


def _conv(model: nn.Module) -> nn.Conv2d | None:
    embed = getattr(model, "x_embedder", None)
    conv = embed if isinstance(embed, nn.Conv2d) else getattr(embed, "proj", None)
    return conv if isinstance(conv, nn.Conv2d) else None


def _pair(value: object) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def model_geometry(model: nn.Module) -> Geometry:
    """The sizes ``model`` takes: a diffusers transformer's ``config.patch_size`` and ``config.sample_size`` (Flux
    packs 2 x 2 latent patches; diffusers' DiT unpatchifies a square grid only; a ``pos_embed_max_size`` lets SD3
    take any size up to that many patches a side), or a plain DiT's patch convolution and its fixed position
    embedding (``pos_embed`` or ``pos``, ``[1, L, D]``)."""
    name = type(model).__name__
    cfg = getattr(model, "config", None)
    patch = _pair(getattr(cfg, "patch_size", None)) if cfg is not None else None
    if patch is not None:
        flux = "img_ids" in inspect.signature(model.forward).parameters
        p = patch[0] * (2 if flux else 1)
        cap = getattr(cfg, "pos_embed_max_size", None)
        largest = p * cap if isinstance(cap, int) else None
        trained = None if largest else _pair(getattr(cfg, "sample_size", None))
        if trained is not None and flux:  # Flux's sample_size counts latent pixels before the 2 x 2 packing
            trained = None
        return Geometry(p, None, name == "DiTTransformer2DModel",
                        f"{name} (patch {p}" + (", packed 2x2" if flux else "") + ")", largest, trained)
    conv = _conv(model)
    if conv is None or conv.kernel_size != conv.stride or conv.kernel_size[0] != conv.kernel_size[1]:
        return Geometry()
    p = int(conv.stride[0])
    pos = next((t for t in (getattr(model, "pos_embed", None), getattr(model, "pos", None))
                if isinstance(t, torch.Tensor) and t.dim() == 3 and t.shape[0] == 1), None)
    size = _pair(getattr(getattr(model, "x_embedder", None), "img_size", None))
    if size is None and pos is not None:
        side = int(round(pos.shape[1] ** 0.5))
        size = (side * p, side * p) if side * side == pos.shape[1] else None
    return Geometry(p, size, False, f"{name} (patch {p}, position embedding of {pos.shape[1]} tokens)"
                    if pos is not None else f"{name} (patch {p})")


def check_image_size(model: nn.Module, images: torch.Tensor, name: str = "images") -> None:
    """Refuse images ``[B, C, H, W]`` whose size ``model`` cannot take: not a multiple of its patch (the rest
    would be dropped without a word), other than its sample size, not square where it takes square inputs only,
    or fewer than :data:`MIN_TOKENS` patches."""
    if images.dim() != 4:
        return
    h, w = int(images.shape[2]), int(images.shape[3])
    geo = model_geometry(model)
    given = f"{h}x{w}"
    if geo.size is not None and (h, w) != geo.size:
        raise ValueError(f"{name} are {h}x{w}, but {geo.source} takes {geo.size[0]}x{geo.size[1]} inputs: resize "
                         "them (a model runs at the size it was trained at)")
    if geo.patch is not None:
        p = geo.patch
        if h % p or w % p:
            even = " (even)" if p == 2 else ""
            raise ValueError(f"{name} are {given}, but {geo.source} cuts them into {p}x{p} patches: height and "
                             f"width must be multiples of {p}{even} (the rest would be dropped), e.g. "
                             f"{max(p, h - h % p)}x{max(p, w - w % p)}")
        if (h // p) * (w // p) < MIN_TOKENS:
            raise ValueError(f"{name} are {given}: {geo.source} needs at least {MIN_TOKENS} patches of {p}x{p}")
    if geo.largest is not None and max(h, w) > geo.largest:
        raise ValueError(f"{name} are {given}, but {geo.source} takes sides of at most {geo.largest} "
                         "(config.pos_embed_max_size patches)")
    if geo.square and h != w:
        raise ValueError(f"{name} are {given}, but {geo.source} takes square inputs only")
    if geo.trained is not None and (h, w) != geo.trained:
        warnings.warn(f"{name} are {given}, but {geo.source} was trained at {geo.trained[0]}x{geo.trained[1]} "
                      "(config.sample_size): its position embedding is recomputed for the new size, and features "
                      "away from the trained size may differ", UserWarning, stacklevel=3)


def check_grid_tokens(model: nn.Module, images: torch.Tensor, grid: tuple[int, int], name: str = "grid") -> None:
    """Refuse a ``grid`` (h, w) whose h * w is not the patch count of ``images`` (the tokens of a preset's tap)."""
    geo = model_geometry(model)
    if geo.patch is None or images.dim() != 4:
        return
    h, w = images.shape[2] // geo.patch, images.shape[3] // geo.patch
    if grid[0] * grid[1] != h * w:
        raise ValueError(f"{name} must be a pair (h, w) with h * w = {h * w}, the tokens of "
                         f"{images.shape[2]}x{images.shape[3]} images in {geo.patch}x{geo.patch} patches (e.g. "
                         f"({h}, {w})), got {tuple(grid)}")


def check_channels(model: nn.Module, images: torch.Tensor, name: str = "images") -> None:
    """Refuse images whose channel count is not the model's ``in_channels`` (latent models need latents)."""
    from .forward import expected_channels

    want = expected_channels(model)
    if want is not None and images.dim() == 4 and images.shape[1] != want:
        raise ValueError(f"{name} have {images.shape[1]} channels, but {type(model).__name__} takes {want}-channel "
                         "inputs (a latent model takes latents: pass them as an .npy of shape [N, C, H, W])")


def check_model_inputs(model: nn.Module, images: torch.Tensor, name: str = "images") -> None:
    """Channels and size of ``images`` against ``model`` (:func:`check_channels`, :func:`check_image_size`)."""
    check_channels(model, images, name)
    check_image_size(model, images, name)


def check_image_count(n_images: int, scorers: Sequence, name: str = "images") -> None:
    """Refuse fewer than 2 images when a scorer compares images with one another (``pair_fn``, e.g. ``sf``)."""
    across = [s.name for s in scorers if getattr(s, "pair_fn", None) is not None]
    if across and n_images < 2:
        raise ValueError(f"{name}: {n_images} image given, but the scorer {across[0]!r} compares images with one "
                         "another and needs at least 2: give more images, or a per-image scorer (hfr, hfr_centered, "
                         "token_var, chan_entropy)")


def warn_if_no_signal(images: torch.Tensor, name: str = "images") -> None:
    """Warn (:class:`NoSignalWarning`) when every image is constant, or every image is the same: the scores then
    say nothing about the model's features of real images."""
    if images.dim() < 2 or images.is_meta or images.numel() == 0:
        return
    flat = images.reshape(images.shape[0], -1)
    if bool((flat == flat[:, :1]).all()):
        what = "every image is constant"
    elif images.shape[0] > 1 and bool((flat == flat[:1]).all()):
        what = f"all {images.shape[0]} images are the same image"
    else:
        return
    warnings.warn(f"the {name} carry no signal: {what}; is this the right array (a wrong .npz key, a blank "
                  "batch)? The selection would be arbitrary", NoSignalWarning, stacklevel=3)


def check_use_labels(model: nn.Module, labels: torch.Tensor | None, name: str = "use_labels") -> None:
    """Labels given to condition on (``use_labels``): the model takes class labels, and every label is one of its
    real classes ``0 .. n - 1`` (the null class ``n`` stands for no label, so it is refused here)."""
    from .forward import null_class

    params = inspect.signature(model.forward).parameters
    if "class_labels" not in params and "y" not in params:
        raise ValueError(f"{name} given but {type(model).__name__} takes no class labels")
    if labels is None:
        raise ValueError(f"{name} given but there are no labels")
    n = null_class(model)
    if n is None or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{name}: labels must be class ids in [0, {n - 1}] (the model has {n} classes), "
                         f"found [{lo}, {hi}]")
