"""Tiny models for the tests: diffusers DiT / PixArt / SD3 / Flux and a plain facebookresearch-style DiT module."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from plain_dit_example import DiT  # noqa: E402


def tiny_dit(layers: int = 2, sample: int = 12, seed: int = 0) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1, num_layers=layers,
        sample_size=sample, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1,
    ).eval()


def tiny_pixart(seed: int = 0) -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=16, norm_type="ada_norm_single",
        use_additional_conditions=False,
    ).eval()


def tiny_sd3(seed: int = 0) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
    ).eval()


def tiny_flux(seed: int = 0) -> nn.Module:
    """A guidance-distilled Flux: 2 double-stream and 3 single-stream blocks, 4-channel latents (16 packed)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, pooled_projection_dim=10, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    ).eval()


def PlainDiT(mlp: str = "sequential") -> nn.Module:  # noqa: N802 - reads as the class it builds
    """The facebookresearch-style plain DiT of ``python/plain_dit_example.py``, tiny: 1 x 12 x 12 inputs; ``mlp``
    is ``"sequential"`` (Linear, GELU, Linear) or ``"timm"`` (timm's ``Mlp`` layout: fc1, act, fc2)."""
    return DiT(size=12, patch=2, channels=1, dim=24, depth=2, heads=2, num_classes=10, mlp=mlp)


def select_folder(root: Path, **images: int) -> Path:
    """``root`` with a tiny DiT saved in ``dit/`` and 3 random 12 x 12 uint8 images in ``images.npz``; each keyword
    ``name=n`` adds ``name.npz`` with ``n`` images."""
    import numpy as np

    tiny_dit(sample=12).save_pretrained(root / "dit")
    rng = np.random.default_rng(0)
    for name, n in {"images": 3, **images}.items():
        np.savez(root / f"{name}.npz", images=rng.integers(0, 256, (n, 12, 12), dtype=np.uint8))
    return root
