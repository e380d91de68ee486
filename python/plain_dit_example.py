"""Drop the scorer into a plain facebookresearch-style DiT ``nn.Module`` (``forward(x, t, y)``).

The model below follows the layout of the original DiT code (``x_embedder``, ``t_embedder``, ``y_embedder`` with a
null class, ``blocks[i].attn.qkv`` fused, ``blocks[i].mlp``), with random weights so it runs anywhere.  Its MLP is
either an ``nn.Sequential`` (Linear, GELU, Linear) or, with ``mlp="timm"``, laid out as timm's ``Mlp`` that the
original code uses (children ``fc1``, ``act``, ``drop1``, ``norm``, ``fc2``, ``drop2``).  Taps use the
``plain-dit`` presets: ``blocks.{i}.attn.qkv[q]`` (query third of the fused projection), ``blocks.{i}.attn``,
``blocks.{i}.mlp``, the MLP's activation (``blocks.{i}.mlp.1`` or ``blocks.{i}.mlp.act``, found by structure) and
``blocks.{i}``.  Run: ``python python/plain_dit_example.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aselect_kernels import select_timestep


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, c))


class Mlp(nn.Module):
    """The module layout of timm's ``Mlp`` (``fc1 -> act -> drop1 -> norm -> fc2 -> drop2``), dropout 0."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    """adaLN-Zero block: the taps see attn/mlp outputs before their gates."""

    def __init__(self, dim: int, heads: int, mlp: str = "sequential") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        if mlp == "timm":
            self.mlp: nn.Module = Mlp(dim, 4 * dim)
        elif mlp == "sequential":
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        else:
            raise ValueError(f"mlp must be 'sequential' or 'timm', got {mlp!r}")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)
        x = x + g1 * self.attn(self.norm1(x) * (1 + s1) + b1)
        return x + g2 * self.mlp(self.norm2(x) * (1 + s2) + b2)


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes  # index num_classes is the null (unconditional) class
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class DiT(nn.Module):
    def __init__(self, size: int = 32, patch: int = 2, channels: int = 4, dim: int = 192, depth: int = 4,
                 heads: int = 3, num_classes: int = 1000, mlp: str = "sequential") -> None:
        super().__init__()
        self.patch, self.size, self.channels, self.dim = patch, size, channels, dim
        self.x_embedder = nn.Conv2d(channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
        self.t_embedder = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embedder = LabelEmbedder(num_classes, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(depth))
        self.final = nn.Linear(dim, patch * patch * channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos
        freqs = torch.exp(-math.log(10000) * torch.arange(128, device=x.device) / 128)
        args = t[:, None].float() * freqs
        c = self.t_embedder(torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(h.dtype)) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        g, p = self.size // self.patch, self.patch
        out = self.final(h).reshape(x.shape[0], g, g, p, p, self.channels)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], self.channels, self.size, self.size)


def main() -> None:
    torch.manual_seed(0)
    model = DiT().eval()
    latents = torch.randn(8, 4, 32, 32)  # your VAE latents (x0) go here
    # y is left out: the scorer passes the null class (y_embedder.num_classes) for unconditional features
    result = select_timestep(model, latents, timesteps="0:1000:125", taps="all", progress=False)
    print(result.table(max_taps=4))
    print("best (t, tap):", result.best(), "| best t per tap:", result.best_t_per_tap())


if __name__ == "__main__":
    main()
