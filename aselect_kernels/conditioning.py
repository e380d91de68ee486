"""What the model is conditioned on, and its per-image broadcast to the rows of one chunk.

Imports nothing else from the package, so that the forward (:mod:`.forward`) and the Flux call (:mod:`.flux`) can
both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Conditioning:
    """What the model is conditioned on, per image (batch B) or shared (batch 1).

    Attributes:
        class_labels: ``[B]`` class ids; ``None`` uses the null class of a class-conditional diffusers DiT.
        encoder_hidden_states: text tokens for SD3 / PixArt / Flux-style models, ``[B or 1, S, D]``.
        pooled_projections: pooled text embedding for SD3 / Flux, ``[B or 1, D]``.
        model_kwargs: passed to the model as they are (e.g. PixArt's ``added_cond_kwargs``); for Flux its
            ``guidance`` (one value or one per image, indexed per chunk) and, for packed inputs, ``img_ids``
            (:mod:`.flux` builds the ids of latents ``[B, C, H, W]``).
    """

    class_labels: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    pooled_projections: torch.Tensor | None = None
    model_kwargs: dict = field(default_factory=dict)


def per_image(value: torch.Tensor | None, b: torch.Tensor, name: str, n_images: int) -> torch.Tensor | None:
    """``value`` (batch B, or 1 shared by every image) for the images ``b`` of one chunk; ``None`` stays ``None``."""
    if value is None:
        return None
    if value.shape[0] == 1:
        return value.expand(b.shape[0], *value.shape[1:])
    if value.shape[0] != n_images:
        raise ValueError(f"{name} has batch {value.shape[0]}, expected 1 or the number of images {n_images}")
    return value[b.to(value.device)]
