"""Batched multi-timestep forward: B images x T timesteps through the model in memory-bounded chunks.

Sample ``j`` of the flattened run is image ``j // T`` noised at timestep ``timesteps[j % T]``.  Each chunk is
noised on the device, run under ``torch.no_grad()`` in the model's dtype, and the taps record their statistics
into rows ``j`` of their buffers, so the result does not depend on how the run is chunked.
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .conditioning import Conditioning, per_image
from .noise import Noiser, sample_noise
from .plan import RunPlan, run_watchers

#: CPU default memory budget for one chunk's activations.
CPU_BUDGET_BYTES = 2 << 30
#: Fraction of free device memory a chunk may use when no budget is given.
CUDA_BUDGET_FRACTION = 0.5


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU/float32 for a parameterless module)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


#: Where :func:`null_class` looks for the class count of a class-conditional model, in order.
NULL_CLASS_SOURCES = ("config.num_embeds_ada_norm", "config.num_classes", "y_embedder.num_classes", "num_classes")


def null_class(model: nn.Module) -> int | None:
    """The null (unconditional) class id: the class count, whose extra row is the CFG null class. Read from the
    first of :data:`NULL_CLASS_SOURCES` the model has: ``num_embeds_ada_norm`` of a diffusers class-conditional
    DiT, ``y_embedder.num_classes`` of a facebookresearch-style DiT, or a ``num_classes`` attribute."""
    for source in NULL_CLASS_SOURCES:
        value: object = model
        for name in source.split("."):
            value = getattr(value, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_class_labels(model: nn.Module, labels: torch.Tensor | None, n_images: int) -> None:
    """Raise a clear error for class labels the model cannot embed: not an integer tensor ``[B]`` or ``[1]``, or
    outside ``[0, null class]`` when the null class is known."""
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"class_labels must be an integer tensor [B], got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool or labels.dim() != 1:
        raise TypeError(f"class_labels must be an integer tensor [B], got {labels.dtype} of shape "
                        f"{tuple(labels.shape)}")
    if labels.shape[0] not in (1, n_images):
        raise ValueError(f"class_labels has batch {labels.shape[0]}, expected 1 or the number of images {n_images}")
    nc = null_class(model)
    if nc is not None and labels.numel() and not labels.is_meta:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > nc:
            bad = lo if lo < 0 else hi
            raise ValueError(f"class label {bad} out of range: {type(model).__name__} has classes 0..{nc - 1} "
                             f"and the null class {nc}")


def default_call(model: nn.Module, x_t: torch.Tensor, t_model: torch.Tensor, b: torch.Tensor,
                 cond: Conditioning, n_images: int) -> object:
    """Call a diffusers transformer (keyword ``hidden_states``; Flux through :func:`~aselect_kernels.flux.flux_call`)
    or a plain ``forward(x, t[, y])`` DiT."""
    params = inspect.signature(model.forward).parameters
    if "img_ids" in params and "txt_ids" in params:  # Flux: packed latents, position ids, sigma as timestep
        from .flux import flux_call

        return flux_call(model, x_t, t_model, b, cond, n_images)
    labels = per_image(cond.class_labels, b, "class_labels", n_images)
    if labels is None and ("class_labels" in params or "y" in params):
        nc = null_class(model)
        if nc is None:
            raise ValueError(
                f"{type(model).__name__} takes class labels but none were given and no null class was found (looked "
                f"for {', '.join(NULL_CLASS_SOURCES)}): pass Conditioning(class_labels=torch.full((B,), k)) with "
                "your model's null (unconditional) class id k, or real labels")
        labels = torch.full((x_t.shape[0],), nc, dtype=torch.long, device=x_t.device)
    kwargs = dict(cond.model_kwargs)
    if "hidden_states" in params:
        kwargs.update(hidden_states=x_t, timestep=t_model)
        if "class_labels" in params:
            kwargs["class_labels"] = labels
        ehs = per_image(cond.encoder_hidden_states, b, "encoder_hidden_states", n_images)
        if ehs is not None:
            kwargs["encoder_hidden_states"] = ehs
        pooled = per_image(cond.pooled_projections, b, "pooled_projections", n_images)
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


def check_chunk_size(chunk_size: object) -> int | None:
    """``chunk_size`` as a positive int (integral floats such as ``64.0`` accepted), or ``None``."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Real) or (
            not math.isfinite(chunk_size) or chunk_size != int(chunk_size)):
        raise TypeError(f"chunk_size must be a whole number of samples, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def check_memory_budget(memory_budget: object) -> int | None:
    """``memory_budget`` in bytes as a positive int (a float such as ``2.5e5`` is floored), or ``None`` (the
    default budget).  0 and negative budgets are refused."""
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real) or not math.isfinite(
            memory_budget):
        raise TypeError(f"memory_budget must be a number of bytes, got {memory_budget!r}")
    if memory_budget < 1:
        raise ValueError(f"memory budget must be at least 1 byte, got {memory_budget}")
    return int(memory_budget)


#: Input range of a model, set by the loader of a model with a fixed input contract (the embedded DiT: [-1, 1]).
INPUT_RANGE_ATTR = "aselect_input_range"
#: How far outside the declared input range an image may reach before a warning (noise and resizing overshoot).
INPUT_RANGE_SLACK = 0.1


def expected_channels(model: nn.Module) -> int | None:
    """Input channels of an image model: ``config.in_channels`` of a diffusers model with a ``sample_size``, or the
    patch embedding convolution of a plain DiT (``x_embedder`` or ``x_embedder.proj``)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "sample_size", None) is not None:
        c = getattr(cfg, "in_channels", None)
        return int(c) if isinstance(c, int) else None
    embed = getattr(model, "x_embedder", None)
    conv = embed if isinstance(embed, nn.Conv2d) else getattr(embed, "proj", None)
    return conv.in_channels if isinstance(conv, nn.Conv2d) else None


def check_images(model: nn.Module, images: object, device: torch.device, warn_range: bool = True) -> None:
    """Raise an error naming the problem if ``images`` cannot be the clean inputs of ``model``; warn when they lie
    visibly outside the model's declared input range (:data:`INPUT_RANGE_ATTR`)."""
    if not isinstance(images, torch.Tensor):
        hint = " (stack them: torch.stack(list) or torch.as_tensor(array))" if isinstance(images, (list, tuple)) else ""
        raise TypeError(f"images must be a torch.Tensor [B, ...] of clean model inputs, got {type(images).__name__}"
                        f"{hint}")
    if images.dim() < 2:
        raise ValueError(f"images must be a batch [B, ...] of clean model inputs, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"images is an empty batch (shape {tuple(images.shape)}): give at least one image")
    if device.type == "meta":
        raise ValueError(f"{type(model).__name__}'s parameters are on the meta device (no weights loaded): load or "
                         "materialize the model first (e.g. model.to_empty(device='cpu') and load its weights)")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (scaled to the model's range), got {images.dtype}")
    if images.is_meta:
        raise ValueError(f"images are meta tensors (shape only, no data) but the model is on {device}: give real "
                         "images")
    if images.device != device:
        raise ValueError(f"images are on {images.device} but the model is on {device}: move one of them")
    channels = expected_channels(model)
    if channels is not None and (images.dim() != 4 or images.shape[1] != channels):
        hint = " (add the channel axis: images[:, None])" if images.dim() == 3 and channels == 1 else ""
        raise ValueError(f"{type(model).__name__} takes images [B, {channels}, H, W], got shape "
                         f"{tuple(images.shape)}{hint}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    bounds = getattr(model, INPUT_RANGE_ATTR, None)
    if warn_range and bounds is not None:
        lo, hi = float(images.min()), float(images.max())
        if lo < bounds[0] - INPUT_RANGE_SLACK or hi > bounds[1] + INPUT_RANGE_SLACK:
            warnings.warn(f"images span [{lo:.3g}, {hi:.3g}] but {type(model).__name__} takes inputs in "
                          f"[{bounds[0]:g}, {bounds[1]:g}] (uint8 pixels map there with "
                          "aselect_kernels.to_model_range)", UserWarning, stacklevel=3)


@dataclass
class RunInfo:
    """What a multi-timestep run did: samples of the whole run, and this process's chunks, chunk size and wall
    time (a rank runs only its shard of the samples, :mod:`.distributed`)."""

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
    on_chunk_end: Callable[[], object] | None = None,
    rows: range | None = None,
    label: str = "scored forward",
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
        on_chunk_end: called after each chunk's forward (overlapped taps join their side stream there:
            :meth:`~aselect_kernels.taps.TapSet.join`).
        rows: the contiguous range of samples to run (a rank's shard, :mod:`.distributed`); all when ``None``.
        label: the run's name on its progress bar and in its plan (:func:`watch_runs`).
    """
    device, dtype = model_device_dtype(model)
    check_images(model, images, device)
    chunk_size = check_chunk_size(chunk_size)
    memory_budget = check_memory_budget(memory_budget)
    ts = noiser.check(timesteps)
    cond = conditioning or Conditioning()
    check_class_labels(model, cond.class_labels, images.shape[0])
    call = call or default_call
    n_img, n_t = images.shape[0], len(ts)
    total = n_img * n_t
    rows = range(total) if rows is None else rows
    if rows.step != 1 or rows.start < 0 or rows.stop > max(total, rows.start):
        raise ValueError(f"rows must be a contiguous range within [0, {total}), got {rows}")
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

    if chunk_size is None and len(rows):
        probe = torch.tensor([rows.start], dtype=torch.long, device=device)
        sample_bytes = estimate_sample_bytes(model, probe, forward)
        chunk_size = plan_chunk_size(len(rows), sample_bytes, device, memory_budget)
    chunk_size = 1 if chunk_size is None else chunk_size
    starts = range(rows.start, rows.stop, chunk_size)
    plan, watchers = _announce(RunPlan(label, total, len(rows), chunk_size, len(starts), _world_size()))
    bar = _ChunkProgress(model, len(rows), label) if progress else None
    nvtx = torch.cuda.nvtx.range if device.type == "cuda" else (lambda name: nullcontext())
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for k, s in enumerate(starts):
                chunk = torch.arange(s, min(s + chunk_size, rows.stop), device=device)
                if on_chunk is not None:
                    on_chunk(chunk)
                if bar is not None:
                    bar.start_chunk(chunk.numel())
                with nvtx(f"aselect.chunk{k}"):
                    forward(chunk)
                    if on_chunk_end is not None:
                        on_chunk_end()
                if bar is not None:
                    bar.end_chunk()
                for watcher in watchers:
                    watcher.chunk_done(plan, k + 1, time.perf_counter() - start)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        if bar is not None:
            bar.close()
    return RunInfo(total, len(starts), chunk_size, time.perf_counter() - start)


def _announce(plan: RunPlan) -> tuple[RunPlan, tuple]:
    """Tell the watchers (:func:`~aselect_kernels.plan.watch_runs`) the run's plan; returns it and them."""
    watchers = run_watchers()
    for watcher in watchers:
        watcher.planned(plan)
    return plan, watchers


def _world_size() -> int:
    from . import distributed

    return distributed.world_size()


class _ChunkProgress:
    """A progress bar over samples that also moves inside a chunk.

    A chunk can take minutes, so each call of a transformer block (a member of the model's longest
    ``nn.ModuleList``) advances the bar by that block's share of the chunk.  The hooks are removed by :meth:`close`.
    """

    def __init__(self, model: nn.Module, total: int, label: str = "scored forward") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="sample", desc=label, leave=False)
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
