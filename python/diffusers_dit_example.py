"""Drop the scorer into a diffusers DiT: pick (t, tap) for your images, then extract features there.

Run: ``python python/diffusers_dit_example.py`` (offline: it uses the embedded Fashion-MNIST DiT; replace
``load_embedded()`` with ``DiTTransformer2DModel.from_pretrained(...)`` or any diffusers transformer of yours).
"""

from __future__ import annotations

import torch

from aselect_kernels import Conditioning, extract_features, select_timestep
from aselect_kernels.embedded.data import load_embedded_images
from aselect_kernels.embedded.model import load_embedded
from aselect_kernels.images import to_model_range


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_embedded(device=device)  # any diffusers DiTTransformer2DModel / PixArt / SD3 transformer
    images, _ = load_embedded_images("test")
    x = to_model_range(images[:32]).to(device)
    if x.dim() == 3:
        x = x[:, None]
    # Score every block's query projection at 10 timesteps, unconditionally (the DiT null class).
    result = select_timestep(
        model, x, timesteps="0:1000:100", taps="query", scorer="sf", noise="ddpm",
        conditioning=Conditioning(class_labels=None), progress=False,
    )
    print(result.table(max_taps=4))
    t, tap = result.best()
    pooled, grid = extract_features(model, x, t, tap, progress=False)
    print(f"features at (t={t}, {tap}): pooled {tuple(pooled.shape)}, grid {tuple(grid.shape)}")


if __name__ == "__main__":
    main()
