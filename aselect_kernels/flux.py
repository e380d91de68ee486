"""Flux (diffusers ``FluxTransformer2DModel``): packed latents, position ids, the model call and its noise.

Flux does not take latents ``[B, C, H, W]`` as they are.  Its pipeline packs each 2 x 2 patch of latent pixels
into one token: ``[B, C, H, W] -> [B, (H/2)(W/2), 4C]``, tokens in row-major order of the ``H/2 x W/2`` grid,
channels ordered ``(c, dy, dx)``; it gives the model the tokens' positions as ``img_ids`` ``[(H/2)(W/2), 3]`` =
``(0, row, col)`` and the text tokens' as ``txt_ids`` ``[S, 3]`` (zeros).  Its ``timestep`` is sigma in
``[0, 1]`` (the model multiplies by 1000 itself), and guidance-distilled models (``guidance_embeds``) also take
the guidance scale.

Here the user passes clean latents ``[B, C, H, W]``: they are noised as they are (noise is element-wise, so
packing before or after is the same) and :func:`flux_call` packs them and builds the ids for every chunk.
Latents already packed ``[B, L, 4C]`` are accepted too; their ``img_ids`` must then be given in
``Conditioning.model_kwargs``.  The text (``encoder_hidden_states`` ``[B or 1, S, D]``, ``pooled_projections``)
and, for guidance-distilled models, ``model_kwargs["guidance"]`` (one value, or one per image) are required.

``noise="flux"`` is rectified flow with the resolution-dependent shift of Flux's scheduler
(:func:`~aselect_kernels.noise.flux_shift` of the image token count).
"""

from __future__ import annotations

import torch
from torch import nn

from .conditioning import Conditioning, per_image
from .noise import Noiser, flux_shift

#: Side of the latent patch Flux packs into one token.
PACK = 2


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/2)(W/2), 4C]``: each 2 x 2 patch one token, channels ``(c, dy, dx)``."""
    b, c, h, w = latents.shape
    if h % PACK or w % PACK:
        raise ValueError(f"Flux packs 2x2 latent patches: height and width must be even, got {h}x{w}")
    x = latents.reshape(b, c, h // PACK, PACK, w // PACK, PACK).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PACK) * (w // PACK), c * PACK * PACK)


def image_ids(height: int, width: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids ``[(H/2)(W/2), 3]`` = ``(0, row, col)`` of the packed tokens of ``H x W`` latents."""
    rows = torch.arange(height // PACK, device=device, dtype=dtype)
    cols = torch.arange(width // PACK, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat([torch.zeros_like(grid[:, :1]), grid], dim=1)


def image_tokens(images: torch.Tensor) -> int:
    """Image tokens Flux sees for ``images``: ``(H/2)(W/2)`` of latents ``[B, C, H, W]``, ``L`` of packed ones."""
    if images.dim() == 4:
        return (images.shape[2] // PACK) * (images.shape[3] // PACK)
    if images.dim() == 3:
        return images.shape[1]
    raise ValueError(f"Flux inputs are latents [B, C, H, W] or packed tokens [B, L, C], got {tuple(images.shape)}")


def flux_noiser(images: torch.Tensor) -> Noiser:
    """Rectified-flow noise with Flux's shift for the resolution of ``images`` (see :func:`image_tokens`)."""
    return Noiser("flow", shift=flux_shift(image_tokens(images)))


def _per_chunk(value: torch.Tensor | float, b: torch.Tensor, n_images: int, name: str) -> torch.Tensor:
    value = torch.as_tensor(value, device=b.device).reshape(-1)
    if value.numel() == 1:
        return value.expand(b.shape[0])
    if value.numel() != n_images:
        raise ValueError(f"{name} has {value.numel()} values, expected 1 or the number of images {n_images}")
    return value[b.to(value.device)]


def flux_call(model: nn.Module, x_t: torch.Tensor, t_model: torch.Tensor, b: torch.Tensor, cond: Conditioning,
              n_images: int) -> object:
    """Call a ``FluxTransformer2DModel`` on one chunk (the ``call`` of :func:`~aselect_kernels.forward.
    run_multi_timestep`): pack, build the ids, pass the text, pooled text, guidance and sigma."""
    kwargs = dict(cond.model_kwargs)
    ehs = per_image(cond.encoder_hidden_states, b, "encoder_hidden_states", n_images)
    pooled = per_image(cond.pooled_projections, b, "pooled_projections", n_images)
    if ehs is None or pooled is None:
        raise ValueError("Flux needs text conditioning: Conditioning(encoder_hidden_states=[B or 1, S, D], "
                         "pooled_projections=[B or 1, D])")
    if x_t.dim() == 4:
        kwargs.setdefault("img_ids", image_ids(x_t.shape[2], x_t.shape[3], x_t.device, x_t.dtype))
        x_t = pack_latents(x_t)
    elif "img_ids" not in kwargs:
        raise ValueError("packed Flux inputs [B, L, C] need their img_ids in Conditioning.model_kwargs "
                         "(or pass latents [B, C, H, W] and they are built)")
    kwargs.setdefault("txt_ids", torch.zeros(ehs.shape[1], 3, device=x_t.device, dtype=x_t.dtype))
    guided = bool(getattr(getattr(model, "config", None), "guidance_embeds", False))
    if guided and kwargs.get("guidance") is None:
        raise ValueError("this Flux model is guidance-distilled: pass Conditioning(model_kwargs={'guidance': g}) "
                         "with one scale, or one per image")
    if kwargs.get("guidance") is not None:
        kwargs["guidance"] = _per_chunk(kwargs["guidance"], b, n_images, "guidance").to(x_t.dtype)
    timestep = (t_model / 1000.0).to(x_t.dtype)  # sigma: the model multiplies by 1000 itself
    return model(hidden_states=x_t, encoder_hidden_states=ehs, pooled_projections=pooled, timestep=timestep,
                 **kwargs)
