"""``select --vae``: which VAE encodes the images of a latent DiT, and the encoding."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .checks import CliError


def vae_path(args: argparse.Namespace) -> Path | None:
    """The VAE to encode the images with: ``--vae PATH``, or with ``auto`` the ``vae/`` folder of a pipeline folder
    given as ``--model`` (``None``: no VAE, or ``--vae none``)."""
    if args.vae == "none":
        return None
    if args.vae == "auto":
        from ..latents import find_vae

        return find_vae(args.model) if args.model != "embedded" else None
    path = Path(args.vae).expanduser()
    if not path.is_dir():
        raise CliError(f"--vae {args.vae}: not a folder (give an AutoencoderKL folder, or a pipeline folder with vae/)")
    return path


def encode(path: Path, images: Any, device: Any, dtype: Any) -> Any:
    """The images' latents from the VAE at ``path`` (printed: which VAE and the latent shape)."""
    from ..latents import encode_images, load_vae
    from ..result import plural

    vae = load_vae(path, device=device, dtype=dtype)
    latents = encode_images(vae, images.to(device))
    print(f"encoded {plural(images.shape[0], 'image')} {tuple(images.shape[1:])} with the VAE in {path}: "
          f"latents {tuple(latents.shape[1:])}")
    return latents
