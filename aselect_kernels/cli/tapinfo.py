"""What a model offers to tap: every preset tap's name, kind, shape and the presets that reach it.

The shapes come from one forward of one sample (a hook per tap records the ``[N, L, C]`` tensor it would score);
nothing else runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..forward import Conditioning, default_call, model_device_dtype
from ..taps import DEFAULT_TAPS, GROUPS, KINDS, TapSpec, resolve_taps


@dataclass(frozen=True)
class TapInfo:
    """One tap: its ``name``, preset ``kind``, scored shape ``(L, C)`` (``None`` when unknown) and ``presets``."""

    name: str
    kind: str
    shape: tuple[int, int] | None
    presets: tuple[str, ...]


def sample_input(model: nn.Module) -> torch.Tensor | None:
    """One clean input ``[1, C, H, W]`` of the model's size, from its config (``in_channels``, ``sample_size``) or a
    plain DiT's patch embedding; ``None`` when the size cannot be read."""
    cfg = getattr(model, "config", None)
    channels, size = getattr(cfg, "in_channels", None), getattr(cfg, "sample_size", None)
    if channels is None or size is None:
        embed = getattr(model, "x_embedder", None)
        conv = getattr(embed, "proj", embed)
        channels = getattr(conv, "in_channels", None)
        size = getattr(embed, "img_size", None)
        size = size[0] if isinstance(size, (tuple, list)) else size
    if not isinstance(channels, int) or not isinstance(size, int):
        return None
    device, dtype = model_device_dtype(model)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, size, size, generator=gen).to(device, dtype)


def tap_shapes(model: nn.Module, specs: list[TapSpec], sample: torch.Tensor) -> dict[str, tuple[int, int]]:
    """``(L, C)`` of each tap's scored tensor in one forward of ``sample`` at t = 0 (unconditional)."""
    shapes: dict[str, tuple[int, int]] = {}
    handles = []
    for spec in specs:
        def hook(module: nn.Module, args: object, output: object, spec: TapSpec = spec) -> None:
            x = spec.select(output)
            shapes[spec.name] = (int(x.shape[1]), int(x.shape[2]))

        handles.append(model.get_submodule(spec.path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            index = torch.zeros(sample.shape[0], dtype=torch.long, device=sample.device)
            default_call(model, sample, index.clone(), index, Conditioning(), sample.shape[0])
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def list_taps(model: nn.Module, sample: torch.Tensor | None = None, text_tokens: int | None = None
              ) -> tuple[list[TapInfo], str | None]:
    """Every tap the presets reach, in block order, and why the shapes are missing (``None`` when they are known).

    ``sample``: one clean input ``[1, ...]`` (default: :func:`sample_input`)."""
    groups = {kind: [name for name, kinds in GROUPS.items() if kind in kinds] for kind in KINDS}
    found: dict[str, str] = {}
    for kind in KINDS:
        for spec in resolve_taps(model, kind, text_tokens=text_tokens):
            found.setdefault(spec.name, kind)
    order = [s.name for s in resolve_taps(model, "all", text_tokens=text_tokens)]  # block by block
    specs = resolve_taps(model, sorted(found, key=order.index), text_tokens=text_tokens)
    sample = sample_input(model) if sample is None else sample
    shapes: dict[str, tuple[int, int]] = {}
    why = None
    if sample is None:
        why = "the model's input size is not in its config"
    else:
        try:
            shapes = tap_shapes(model, specs, sample)
        except Exception as exc:  # e.g. a text-conditioned model called without its text
            why = f"one unconditional forward failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    rows = []
    for spec in specs:
        kind = found[spec.name]
        marks = (kind, *groups[kind]) + (("default",) if kind == DEFAULT_TAPS else ())
        rows.append(TapInfo(spec.name, kind, shapes.get(spec.name), marks))
    return rows, why


def taps_table(rows: list[TapInfo]) -> list[str]:
    """The rows as aligned text lines (tap, kind, shape ``L x C``, presets)."""
    width = max([len("tap")] + [len(r.name) for r in rows])
    lines = [f"{'tap':<{width}}  {'kind':<10}  {'shape L x C':<12}  presets"]
    for r in rows:
        shape = f"{r.shape[0]} x {r.shape[1]}" if r.shape else "?"
        lines.append(f"{r.name:<{width}}  {r.kind:<10}  {shape:<12}  {', '.join(r.presets)}")
    return lines
