"""Batched multi-timestep forward: B images x T timesteps through the model in memory-bounded chunks.

Sample ``j`` of the flattened run is image ``j // T`` noised at timestep ``timesteps[j % T]``.  Each chunk is
noised on the device, run under ``torch.no_grad()`` in the model's dtype, and the taps record their statistics
into rows ``j`` of their buffers, so the result does not depend on how the run is chunked.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from .noise import Noiser, sample_noise

#: CPU default memory budget for one chunk's activations.
CPU_BUDGET_BYTES = 2 << 30
#: Fraction of free device memory a chunk may use when no budget is given.
CUDA_BUDGET_FRACTION = 0.5


@dataclass
class Conditioning:
    """What the model is conditioned on, per image (batch B) or shared (batch 1).

    Attributes:
        class_labels: ``[B]`` class ids; ``None`` uses the null class of a class-conditional diffusers DiT.
        encoder_hidden_states: text tokens for SD3 / PixArt / Flux-style models, ``[B or 1, S, D]``.
        pooled_projections: pooled text embedding for SD3 / Flux, ``[B or 1, D]``.
        model_kwargs: passed to the model as they are (e.g. PixArt's ``added_cond_kwargs``, Flux's ids).
    """

    class_labels: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    pooled_projections: torch.Tensor | None = None
    model_kwargs: dict = field(default_factory=dict)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU/float32 for a parameterless module)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def null_class(model: nn.Module) -> int | None:
    """DiT's null (unconditional) class id: ``num_embeds_ada_norm`` of a diffusers class-conditional DiT, or
    ``y_embedder.num_classes`` of a facebookresearch-style DiT (its extra CFG row)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_embeds_ada_norm", None) if cfg is not None else None
    if n is None:
        n = getattr(getattr(model, "y_embedder", None), "num_classes", None)
    return int(n) if n is not None else None


def _per_image(value: torch.Tensor | None, b: torch.Tensor, name: str, n_images: int) -> torch.Tensor | None:
    if value is None:
        return None
    if value.shape[0] == 1:
        return value.expand(b.shape[0], *value.shape[1:])
    if value.shape[0] != n_images:
        raise ValueError(f"{name} has batch {value.shape[0]}, expected 1 or the number of images {n_images}")
    return value[b.to(value.device)]


def default_call(model: nn.Module, x_t: torch.Tensor, t_model: torch.Tensor, b: torch.Tensor,
                 cond: Conditioning, n_images: int) -> object:
    """Call a diffusers transformer (keyword ``hidden_states``) or a plain ``forward(x, t[, y])`` DiT."""
    params = inspect.signature(model.forward).parameters
    labels = _per_image(cond.class_labels, b, "class_labels", n_images)
    if labels is None and ("class_labels" in params or "y" in params):
        nc = null_class(model)
        if nc is None:
            raise ValueError("the model takes class labels but none were given and it has no null class")
        labels = torch.full((x_t.shape[0],), nc, dtype=torch.long, device=x_t.device)
    kwargs = dict(cond.model_kwargs)
    if "hidden_states" in params:
        kwargs.update(hidden_states=x_t, timestep=t_model)
        if "class_labels" in params:
            kwargs["class_labels"] = labels
        ehs = _per_image(cond.encoder_hidden_states, b, "encoder_hidden_states", n_images)
        if ehs is not None:
            kwargs["encoder_hidden_states"] = ehs
        pooled = _per_image(cond.pooled_projections, b, "pooled_projections", n_images)
        if pooled is not None:
            kwargs["pooled_projections"] = pooled
        return model(**kwargs)
    if "y" in params:
        kwargs["y"] = labels
    return model(x_t, t_model, **kwargs)


def estimate_sample_bytes(model: nn.Module, sample: torch.Tensor, call: Callable[[torch.Tensor], object]) -> int:
    """Activation bytes one sample needs: a probe forward of one sample.

    On CUDA the measured peak allocation above the baseline; elsewhere 6x the largest module output (the few
    tensors alive at once in a transformer block under no_grad).
    """
    largest = [0]

    def hook(module: nn.Module, args: object, out: object) -> None:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor):
                largest[0] = max(largest[0], o.numel() * o.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    cuda = sample.device.type == "cuda"
    try:
        if cuda:
            torch.cuda.synchronize(sample.device)
            base = torch.cuda.memory_allocated(sample.device)
            torch.cuda.reset_peak_memory_stats(sample.device)
        with torch.no_grad():
            call(sample)
        if cuda:
            peak = torch.cuda.max_memory_allocated(sample.device) - base
            return max(int(peak), 6 * largest[0], 1)
    finally:
        for h in handles:
            h.remove()
    return max(6 * largest[0], 1)


def plan_chunk_size(total: int, sample_bytes: int, device: torch.device, memory_budget: int | None) -> int:
    """Samples per chunk: the budget (bytes; default half the free CUDA memory, or 2 GiB on the CPU) / sample."""
    if memory_budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget = int(free * CUDA_BUDGET_FRACTION)
        else:
            memory_budget = CPU_BUDGET_BYTES
    if memory_budget <= 0:
        raise ValueError(f"memory budget must be positive, got {memory_budget}")
    return max(1, min(total, memory_budget // max(sample_bytes, 1)))


@dataclass
class RunInfo:
    """What a multi-timestep run did: samples, chunks, chunk size and wall time."""

    samples: int
    chunks: int
    chunk_size: int
    wall_s: float


def run_multi_timestep(
    model: nn.Module,
    images: torch.Tensor,
    timesteps: Sequence[int],
    noiser: Noiser,
    on_chunk: Callable[[torch.Tensor], object] | None = None,
    conditioning: Conditioning | None = None,
    seed: int = 0,
    shared_noise: bool = True,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    call: Callable | None = None,
    progress: bool = True,
) -> RunInfo:
    """Run every (image, timestep) pair through ``model`` in chunks.

    Args:
        images: clean model inputs ``[B, ...]`` (pixels or latents), on the model's device.
        timesteps: candidate t (the package convention: t counts noise from clean, see :mod:`.noise`).
        on_chunk: called with the chunk's sample rows (a device ``long`` tensor) before its forward: taps use it.
        shared_noise: one seeded noise draw per image, shared by all t (scores then differ only by t);
            ``False`` draws one per (image, t).
        chunk_size: samples per forward; derived from ``memory_budget`` (bytes) when ``None``.
        call: ``call(model, x_t, t_model, image_index, conditioning, n_images)``, default :func:`default_call`.
    """
    device, dtype = model_device_dtype(model)
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError("images must be a tensor [B, ...] of clean model inputs")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (scaled to the model's range), got {images.dtype}")
    if images.device != device:
        raise ValueError(f"images are on {images.device} but the model is on {device}: move one of them")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    ts = noiser.check(timesteps)
    cond = conditioning or Conditioning()
    call = call or default_call
    n_img, n_t = images.shape[0], len(ts)
    total = n_img * n_t
    x0_all = images.to(dtype)
    t_all = torch.tensor(ts, device=device)
    noise_shape = (n_img,) if shared_noise else (n_img, n_t)
    noise = sample_noise((*noise_shape, *images.shape[1:]), seed, device, dtype)

    def make_chunk(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, ti = rows // n_t, rows % n_t
        t = t_all[ti]
        eps = noise[b] if shared_noise else noise[b, ti]
        x_t = noiser.add_noise(x0_all[b], eps, t).to(dtype)
        return x_t, noiser.model_timestep(t), b

    def forward(rows: torch.Tensor) -> object:
        x_t, t_model, b = make_chunk(rows)
        return call(model, x_t, t_model, b, cond, n_img)

    if chunk_size is None:
        probe = torch.zeros(1, dtype=torch.long, device=device)
        sample_bytes = estimate_sample_bytes(model, probe, forward)
        chunk_size = plan_chunk_size(total, sample_bytes, device, memory_budget)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    starts = range(0, total, chunk_size)
    bar = _ChunkProgress(model, total) if progress else None
    nvtx = torch.cuda.nvtx.range if device.type == "cuda" else (lambda name: nullcontext())
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for k, s in enumerate(starts):
                rows = torch.arange(s, min(s + chunk_size, total), device=device)
                if on_chunk is not None:
                    on_chunk(rows)
                if bar is not None:
                    bar.start_chunk(rows.numel())
                with nvtx(f"aselect.chunk{k}"):
                    forward(rows)
                if bar is not None:
                    bar.end_chunk()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        if bar is not None:
            bar.close()
    return RunInfo(total, len(starts), chunk_size, time.perf_counter() - start)


class _ChunkProgress:
    """A progress bar over samples that also moves inside a chunk.

    A chunk can take minutes, so each call of a transformer block (a member of the model's longest
    ``nn.ModuleList``) advances the bar by that block's share of the chunk.  The hooks are removed by :meth:`close`.
    """

    def __init__(self, model: nn.Module, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="sample", desc="scored forward", leave=False)
        blocks = max((m for m in model.modules() if isinstance(m, nn.ModuleList)), key=len, default=[])
        self.n_blocks = len(blocks)
        self.handles = [b.register_forward_hook(self._block_done) for b in blocks]
        self.base = self.rows = self.calls = 0

    def start_chunk(self, rows: int) -> None:
        self.base, self.rows, self.calls = self.bar.n, rows, 0

    def _block_done(self, *_: object) -> None:
        if torch.compiler.is_compiling():
            return
        self.calls += 1
        self._advance_to(self.base + min(self.rows, self.rows * self.calls // self.n_blocks))

    def end_chunk(self) -> None:
        self._advance_to(self.base + self.rows)

    def _advance_to(self, n: int) -> None:
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.bar.close()
