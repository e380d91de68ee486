"""Tiny models for the tests: diffusers DiT / PixArt / SD3 and a plain facebookresearch-style DiT module."""

from __future__ import annotations

import math

import torch
from torch import nn


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


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(n, length, c))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ada = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        g1, g2 = self.ada(c).unsqueeze(1).chunk(2, dim=-1)
        x = x + g1 * self.attn(self.norm1(x))
        return x + g2 * self.mlp(self.norm2(x))


class PlainDiT(nn.Module):
    """A minimal plain DiT with ``forward(x, t, y)``: patchify, blocks with fused qkv, unpatchify."""

    def __init__(self, dim: int = 24, depth: int = 2, patch: int = 2, size: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.patch, self.size = patch, size
        self.x_embedder = nn.Conv2d(1, dim, patch, patch)
        self.y_embedder = nn.Embedding(classes + 1, dim)
        self.t_freq = dim
        self.t_embedder = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(_Block(dim, 2) for _ in range(depth))
        self.final = nn.Linear(dim, patch * patch)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(x).flatten(2).transpose(1, 2)
        half = self.t_freq // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=x.device) / half)
        temb = torch.cat([torch.cos(t[:, None].float() * freqs), torch.sin(t[:, None].float() * freqs)], dim=1)
        c = self.t_embedder(temb) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        g = self.size // self.patch
        out = self.final(h).reshape(x.shape[0], g, g, self.patch, self.patch)
        return out.permute(0, 1, 3, 2, 4).reshape(x.shape[0], 1, self.size, self.size)
