"""Images to latents for latent DiTs (DiT-XL/2, PixArt, SD3), with the model's own ``diffusers.AutoencoderKL``.

``encode_images(vae, images)`` takes pixels in ``[-1, 1]`` and returns the latents the transformer was trained on:
the posterior mean, shifted by the VAE's ``shift_factor`` (0 when its config has none) and scaled by its
``scaling_factor``, as diffusers' pipelines do: ``(z - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: The subfolder of a diffusers pipeline folder that holds its VAE.
VAE_SUBFOLDER = "vae"


def find_vae(model: str | Path) -> Path | None:
    """The VAE folder that belongs to a model folder: ``vae/`` inside a pipeline folder, or beside its
    ``transformer/`` subfolder; ``None`` when there is none (or ``model`` is not a local folder)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    for candidate in (folder / VAE_SUBFOLDER, folder.parent / VAE_SUBFOLDER):
        if (candidate / "config.json").is_file() and candidate.resolve() != folder.resolve():
            return candidate
    return None


def load_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
             ) -> torch.nn.Module:
    """Load an ``AutoencoderKL`` from its folder (or from a pipeline folder's ``vae/``), in eval mode."""
    from diffusers import AutoencoderKL

    folder = Path(path).expanduser()
    if (folder / VAE_SUBFOLDER / "config.json").is_file():
        folder = folder / VAE_SUBFOLDER
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"no VAE at {path}: expected an AutoencoderKL folder with config.json (or a "
                                f"pipeline folder with {VAE_SUBFOLDER}/)")
    try:
        name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config}: not a readable JSON config ({exc})") from None
    if name != "AutoencoderKL":
        raise ValueError(f"{folder} holds {name or 'an unnamed model'}, not an AutoencoderKL")
    return AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype).to(device).eval()


def latent_factors(vae: torch.nn.Module) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` from the VAE's config (shift 0 when absent or null)."""
    cfg = vae.config
    scale = getattr(cfg, "scaling_factor", None)
    shift = getattr(cfg, "shift_factor", None)
    return float(1.0 if scale is None else scale), float(0.0 if shift is None else shift)


def encode_images(vae: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Latents ``[B, latent_channels, H / f, W / f]`` of ``images`` ``[B, C, H, W]`` in ``[-1, 1]`` (f: the VAE's
    downsampling factor), on the images' device, in the VAE's dtype: ``(posterior mean - shift) * scale``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor [B, C, H, W], got {getattr(images, 'shape', type(images))}")
    channels = int(vae.config.in_channels)
    if images.shape[1] != channels:
        raise ValueError(f"the VAE takes {channels}-channel images, got {images.shape[1]} channels")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if images.shape[2] % factor or images.shape[3] % factor:
        raise ValueError(f"the VAE downsamples by {factor}: image sides must be multiples of {factor}, got "
                         f"{images.shape[2]}x{images.shape[3]}")
    scale, shift = latent_factors(vae)
    param = next(vae.parameters())
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(param.device, param.dtype)
            out.append((vae.encode(x).latent_dist.mean - shift) * scale)
    return torch.cat(out).to(images.device)
