"""Taps: per-sample statistics of any module's output, computed inside the forward.

A tap is named by a dotted module path with optional selectors:

* ``path@k``: element ``k`` of a tuple output (SD3's ``JointTransformerBlock`` returns
  ``(context, image)``: its image tokens are ``transformer_blocks.9@1``);
* ``path[q]`` / ``[k]`` / ``[v]``: the first / second / third part of a fused qkv projection's channels
  (facebookresearch DiT's ``blocks.9.attn.qkv[q]``);
* ``path[a:b]``: tokens ``a`` to ``b`` of the token axis, as a Python slice (either bound may be left out or
  negative; before ``[q|k|v]`` when both are given).  Flux's single-stream blocks run text and image tokens
  concatenated, text first: their image tokens are ``single_transformer_blocks.3.attn.to_q[S:]``, ``S`` the
  number of text tokens.

Without ``@k`` a tuple output gives its first tensor (SD3's joint attention returns ``(image, context)``: only image
tokens are scored).  A 4-D output ``[N, C, H, W]`` is read as ``[N, H*W, C]``.

What each diffusers tap sees: ``attn1.to_q`` the query projection of the adaLN-modulated tokens; ``attn1``
(``attn`` in SD3) the attention output after ``to_out``, **before** the adaLN-Zero gate and the residual add;
``ff`` the MLP output, also before its gate; ``ff.net.0`` the MLP's hidden activation (GELU output, 4x wider);
the block path the block's output, i.e. the residual stream after the
block.  In a plain DiT (``blocks.i.attn`` / ``blocks.i.mlp``) the same holds for its gates.

Flux (``FluxTransformer2DModel``): the preset's block ``i`` counts its double-stream ``transformer_blocks`` first,
then its single-stream ``single_transformer_blocks``; every tap sees **image tokens only**.  Double-stream blocks
keep text and image apart: ``attn.to_q`` and ``ff`` / ``ff.net.0`` are the image stream's (the text has
``add_q_proj`` and ``ff_context``), the attention returns ``(image, text)`` (``attn@0``) and the block
``(text, image)`` (``@1``).  A single-stream block returns ``(text, image)`` too (``@1``), but inside it
``attn.to_q``, ``attn`` (attention output, no output projection), ``act_mlp`` (the MLP's GELU activation) and
``proj_out`` (the joint output projection of attention and MLP, before the gate and the residual add: its
``mlp_out``) carry ``S`` text tokens and then the image tokens, so their presets score ``[S:]``;
:func:`resolve_taps` needs ``text_tokens = S`` (selection takes it from the conditioning).

:class:`TapSet` is a context manager: hooks are removed when it exits, even on error, and keep nothing but the
statistics (``[n, 6]`` per tap and chunk, written into a device buffer: no host synchronisation).

With ``overlap=True`` the statistics of CUDA taps run on a side stream, beside the layers that follow the tap: the
hook records an event on the current stream, the side stream waits on it and scores the tensor
(``record_stream`` keeps it alive until then), and :meth:`TapSet.join` makes the current stream wait for the side
stream at the end of each chunk.  Results are bitwise those of ``overlap=False`` (same kernels, same inputs).  It
needs a model that does not modify a tapped output in place after its hook: :meth:`TapSet.join` raises when it
sees that happen to a tapped tensor that is still alive (outside ``torch.inference_mode``).  On CPU tensors, and
while ``torch.compile`` traces, the option does nothing.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .constants import DEFAULT_TAPS as DEFAULT_TAPS  # the default preset, also read here
from .reference import STAT_NAMES, StatsConfig

_SPEC = re.compile(r"^(?P<path>[A-Za-z0-9_.]+?)(?:@(?P<index>\d+))?"
                   r"(?P<slice>\[(?P<start>-?\d+)?:(?P<stop>-?\d+)?\])?(?:\[(?P<part>[qkv])\])?$")

#: Per-block tap templates of each model family (``{i}`` is the block index).
PRESETS: dict[str, dict[str, str]] = {
    "diffusers-dit": {  # DiTTransformer2DModel and PixArtTransformer2DModel (BasicTransformerBlock)
        "query": "transformer_blocks.{i}.attn1.to_q",
        "attn_out": "transformer_blocks.{i}.attn1",
        "mlp_out": "transformer_blocks.{i}.ff",
        "mlp_hidden": "transformer_blocks.{i}.ff.net.0",
        "block_out": "transformer_blocks.{i}",
    },
    "sd3": {  # SD3Transformer2DModel (JointTransformerBlock)
        "query": "transformer_blocks.{i}.attn.to_q",
        "attn_out": "transformer_blocks.{i}.attn",
        "mlp_out": "transformer_blocks.{i}.ff",
        "mlp_hidden": "transformer_blocks.{i}.ff.net.0",
        "block_out": "transformer_blocks.{i}@1",
    },
    "plain-dit": {  # facebookresearch-style DiT: blocks[i].attn (fused qkv) and blocks[i].mlp
        "query": "blocks.{i}.attn.qkv[q]",
        "attn_out": "blocks.{i}.attn",
        "mlp_out": "blocks.{i}.mlp",
        "mlp_hidden": "blocks.{i}.mlp.{act}",  # {act}: the activation child found in the MLP (plain_mlp_activation)
        "block_out": "blocks.{i}",
    },
    "flux": {  # FluxTransformer2DModel's double-stream blocks (FluxTransformerBlock): the image stream
        "query": "transformer_blocks.{i}.attn.to_q",
        "attn_out": "transformer_blocks.{i}.attn@0",
        "mlp_out": "transformer_blocks.{i}.ff",
        "mlp_hidden": "transformer_blocks.{i}.ff.net.0",
        "block_out": "transformer_blocks.{i}@1",
    },
}
#: Flux's single-stream blocks (FluxSingleTransformerBlock), numbered after the double-stream ones: the image
#: tokens follow ``{txt}`` text tokens on the token axis.
FLUX_SINGLE: dict[str, str] = {
    "query": "single_transformer_blocks.{i}.attn.to_q[{txt}:]",
    "attn_out": "single_transformer_blocks.{i}.attn[{txt}:]",
    "mlp_out": "single_transformer_blocks.{i}.proj_out[{txt}:]",
    "mlp_hidden": "single_transformer_blocks.{i}.act_mlp[{txt}:]",
    "block_out": "single_transformer_blocks.{i}@1",
}
#: Preset names that expand to several kinds per block.
GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("query", "attn_out", "mlp_hidden", "mlp_out", "block_out"),
    "attn_mlp": ("attn_out", "mlp_out"),
}
KINDS = ("query", "attn_out", "mlp_hidden", "mlp_out", "block_out")


@dataclass(frozen=True)
class TapSpec:
    """A parsed tap: module ``path``, tuple ``index``, token slice ``tokens`` and fused-qkv ``part``; ``name`` is
    the string given."""

    name: str
    path: str
    index: int | None = None
    part: str | None = None
    tokens: tuple[int | None, int | None] | None = None

    @classmethod
    def parse(cls, text: str) -> TapSpec:
        m = _SPEC.match(text.strip())
        if not m:
            raise ValueError(f"bad tap {text!r}: use a preset ({', '.join(preset_names())}, optionally with :blocks) "
                             "or a dotted module path, optionally with @k, [a:b] or [q|k|v]")
        index = m.group("index")
        tokens = None
        if m.group("slice"):
            tokens = tuple(int(v) if v is not None else None for v in (m.group("start"), m.group("stop")))
        return cls(text.strip(), m.group("path"), int(index) if index is not None else None, m.group("part"),
                   tokens)

    def select(self, output: object) -> torch.Tensor:
        """The ``[N, L, C]`` tensor this tap scores, taken from a module's output."""
        x = output
        if isinstance(output, (tuple, list)):
            if self.index is not None:
                if self.index >= len(output):
                    raise ValueError(f"tap {self.name!r}: output has {len(output)} elements, no @{self.index}")
                x = output[self.index]
            else:
                x = next((o for o in output if isinstance(o, torch.Tensor)), None)
        elif self.index is not None:
            raise ValueError(f"tap {self.name!r}: @{self.index} given but the module returns a single tensor")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"tap {self.name!r}: module output is {type(x).__name__}, not a tensor")
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)
        if x.dim() != 3:
            raise ValueError(f"tap {self.name!r}: output has rank {x.dim()} (shape {tuple(x.shape)}), need [N, L, C]")
        if self.tokens is not None:
            length = x.shape[1]
            x = x[:, slice(*self.tokens)]
            if x.shape[1] == 0:
                raise ValueError(f"tap {self.name!r}: the token slice leaves no token of {length}")
        if self.part is not None:
            c = x.shape[-1]
            if c % 3:
                raise ValueError(f"tap {self.name!r}: [{self.part}] needs a fused qkv with 3*C channels, got {c}")
            k = "qkv".index(self.part)
            x = x[..., k * c // 3: (k + 1) * c // 3]
        return x


def model_family(model: nn.Module) -> str:
    """The preset family of ``model``: ``diffusers-dit``, ``sd3``, ``flux`` or ``plain-dit``."""
    name = type(model).__name__
    if hasattr(model, "single_transformer_blocks") and hasattr(model, "transformer_blocks"):
        return "flux"
    if name.startswith("SD3") or (hasattr(model, "transformer_blocks") and "Joint" in type(
            model.transformer_blocks[0]).__name__):
        return "sd3"
    if hasattr(model, "transformer_blocks"):
        return "diffusers-dit"
    if hasattr(model, "blocks"):
        return "plain-dit"
    raise ValueError(f"no tap preset for {name}: pass module paths (see model.named_modules())")


def num_blocks(model: nn.Module) -> int:
    blocks = getattr(model, "transformer_blocks", None) or getattr(model, "blocks", None)
    single = getattr(model, "single_transformer_blocks", None)  # Flux: numbered after the double-stream blocks
    return (len(blocks) if blocks is not None else 0) + (len(single) if single is not None else 0)


#: Module types of an MLP's hidden activation (the child that ``mlp_hidden`` taps in a plain DiT).
_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.ReLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.LeakyReLU, nn.ELU)


def plain_mlp_activation(mlp: nn.Module, where: str) -> str:
    """The child name of a plain DiT MLP's hidden activation: ``act`` in timm's ``Mlp`` (children ``fc1``, ``act``,
    ``fc2``), the index of the first activation in an ``nn.Sequential`` (``1`` for Linear-GELU-Linear)."""
    children = dict(mlp.named_children())
    if "act" in children:
        return "act"
    for name, child in children.items():
        if isinstance(child, _ACTIVATIONS):
            return name
    raise ValueError(
        f"preset mlp_hidden: cannot find the hidden activation of {where} ({type(mlp).__name__} with children "
        f"{list(children)}): expected timm's Mlp (fc1, act, fc2) or an nn.Sequential with an activation; tap it "
        f"by path instead, e.g. '{where}.<child>'"
    )


def preset_names() -> list[str]:
    """Every preset name :func:`resolve_taps` expands."""
    return list(KINDS) + list(GROUPS)


def _split_items(taps: str | Sequence[str]) -> list[str]:
    """Tap items from a string or a sequence: ``"mlp_hidden,block_out"`` is two items, while ``"query:0,4"`` keeps
    its block list (a bare integer after a comma continues the previous item's blocks)."""
    if not isinstance(taps, str) and not all(isinstance(t, str) for t in taps):
        raise TypeError(f"taps must be a string or a sequence of strings, got {taps!r}")
    items: list[str] = []
    for part in (p.strip() for text in ([taps] if isinstance(taps, str) else taps) for p in text.split(",")):
        if not part:
            continue
        if part.isdigit() and items and ":" in items[-1]:
            items[-1] += "," + part
        else:
            items.append(part)
    return items


def _preset_tap(model: nn.Module, family: str, kind: str, i: int, text_tokens: int | None) -> str:
    """The tap of preset ``kind`` at block ``i``; Flux's single-stream blocks follow its double-stream ones."""
    n_double = len(getattr(model, "transformer_blocks", ()))
    if family == "flux" and i >= n_double:
        template = FLUX_SINGLE[kind]
        if "{txt}" in template and text_tokens is None:
            raise ValueError(f"Flux's single-stream taps ({kind}) score the image tokens after the text tokens: "
                             "pass text_tokens (the length of encoder_hidden_states)")
        return template.format(i=i - n_double, txt=text_tokens)
    template = PRESETS[family][kind]
    if "{act}" in template:
        where = template.split(".{act}")[0].format(i=i)
        template = template.replace("{act}", plain_mlp_activation(model.get_submodule(where), where))
    return template.format(i=i)


def _expand_preset(model: nn.Module, item: str, kinds: tuple[str, ...], blocks: str,
                   text_tokens: int | None) -> list[TapSpec]:
    family = model_family(model)
    count = num_blocks(model)
    try:
        idx = [int(b) for b in blocks.split(",")] if blocks else list(range(count))
    except ValueError:
        raise ValueError(f"bad block list in tap preset {item!r}: use e.g. query:9 or all:0,4") from None
    bad = [i for i in idx if not 0 <= i < count]
    if bad:
        raise ValueError(f"tap preset {item!r}: block {bad[0]} does not exist, {type(model).__name__} has {count} "
                         f"blocks (0..{count - 1})")
    return [TapSpec.parse(_preset_tap(model, family, k, i, text_tokens)) for i in idx for k in kinds]


def _check_qkv(model: nn.Module, spec: TapSpec) -> None:
    """``[q]``/``[k]``/``[v]`` split a fused qkv projection: refuse any other module."""
    module = model.get_submodule(spec.path)
    fused = isinstance(module, nn.Linear) and module.out_features % 3 == 0 and (
        "qkv" in spec.path.rsplit(".", 1)[-1].lower() or module.out_features == 3 * module.in_features)
    if not fused:
        shape = f"Linear({module.in_features} -> {module.out_features})" if isinstance(module, nn.Linear) else (
            type(module).__name__)
        raise ValueError(
            f"tap {spec.name!r}: [{spec.part}] takes a third of a fused qkv projection's channels, but "
            f"{spec.path} is {shape}, not a fused qkv (an nn.Linear named *qkv* or with 3x its input width)"
        )


def resolve_taps(model: nn.Module, taps: str | Sequence[str], text_tokens: int | None = None) -> list[TapSpec]:
    """Expand preset names (``query``, ``attn_out``, ``mlp_out``, ``mlp_hidden``, ``block_out``, ``all``,
    ``attn_mlp``; a suffix ``:i,j`` limits the blocks, e.g. ``query:9``; comma-separated presets and paths
    combine, e.g. ``"mlp_hidden,block_out"``) and check every path exists in ``model``.

    ``text_tokens``: the text tokens in front of the image tokens of Flux's single-stream blocks (needed only
    for those presets)."""
    items = _split_items(taps)
    if not items:
        raise ValueError("no taps given")
    specs: list[TapSpec] = []
    for item in items:
        base, _, blocks = item.partition(":")
        kinds = GROUPS.get(base, (base,) if base in KINDS else None)
        if kinds is None:
            specs.append(TapSpec.parse(item))
        else:
            specs += _expand_preset(model, item, kinds, blocks, text_tokens)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate taps in {names}")
    for spec in specs:
        try:
            model.get_submodule(spec.path)
        except AttributeError:
            raise ValueError(
                f"unknown tap path {spec.path!r}: {type(model).__name__} has no such submodule (list them with "
                f"model.named_modules()), and {spec.name!r} is not a preset ({', '.join(preset_names())}, "
                "optionally with :blocks)"
            ) from None
        if spec.part is not None:
            _check_qkv(model, spec)
    return specs


FeatureFn = Callable[[torch.Tensor], torch.Tensor]


class TapSet:
    """Hooks that compute statistics of tapped outputs while the model runs.

    Args:
        model: any ``nn.Module``.
        taps: :class:`TapSpec` list (see :func:`resolve_taps`).
        total: number of samples of the whole run (rows of the result buffers).
        stat_fn: ``x [n, L, C] -> [n, k]`` statistics of one tapped output (the fused kernel by default).
        feature_fns: extra per-sample scores computed from the raw tapped tensor (user scorers), name -> fn.
        overlap: score CUDA taps on a side stream (see the module docstring); ``stat_fn`` and ``feature_fns`` must
            then be free of host synchronisations.  A no-op on the CPU.
        means: also keep each sample's per-channel token means (the fused kernel returns them with the statistics;
            :func:`~aselect_kernels.reference.channel_means`), as the last C columns of the tap's buffer.

    Before each chunk the caller sets :attr:`rows` (a device ``long`` tensor: the rows of this chunk's samples),
    and after it calls :meth:`join` (:meth:`collect` joins too).
    """

    def __init__(
        self, model: nn.Module, taps: Sequence[TapSpec], total: int,
        stat_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        feature_fns: dict[str, FeatureFn] | None = None, config: StatsConfig = StatsConfig(), backend: str = "auto",
        nvtx: bool = False, overlap: bool = False, means: bool = False,
    ) -> None:
        from .stats import compute_stats

        self.model = model
        self.taps = list(taps)
        self.total = total
        if means and stat_fn is not None:
            raise ValueError("means=True takes the fused statistics; it cannot be combined with stat_fn")
        self.means = means
        self.stat_fn = stat_fn or (lambda x: compute_stats(x, config, backend, with_means=means))
        self.feature_fns = dict(feature_fns or {})
        self.columns = list(STAT_NAMES) + list(self.feature_fns)
        self.buffers: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, int]] = {}  # tap name -> (L, C) of its tapped tensor
        self._rows: torch.Tensor | None = None
        self._fired: set[str] = set()  # taps recorded since rows was last set
        self.nvtx = nvtx
        if not isinstance(overlap, bool):
            raise TypeError(f"overlap must be True or False, got {overlap!r}")
        self.overlap = overlap
        self._side: dict[torch.device, torch.cuda.Stream] = {}  # device -> side stream (overlap)
        self._pending: list[tuple[str, weakref.ref, int]] = []  # (tap, tensor, version) scored on a side stream
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def rows(self) -> torch.Tensor | None:
        """The rows of the chunk being run (``None``: hooks record nothing)."""
        return self._rows

    @rows.setter
    def rows(self, value: torch.Tensor | None) -> None:
        self._rows = value
        self._fired = set()

    def _hook(self, spec: TapSpec) -> Callable:
        def hook(module: nn.Module, args: object, output: object) -> None:
            if self._rows is None:
                return
            if spec.name in self._fired:
                raise RuntimeError(
                    f"tap {spec.name!r}: {spec.path} ran twice in one forward (a module shared or reused): a tap "
                    "records one call per sample; tap a module that runs once, e.g. the caller of the shared one"
                )
            self._fired.add(spec.name)
            x = spec.select(output)
            if x.shape[0] != self.rows.shape[0]:
                raise ValueError(
                    f"tap {spec.name!r} saw batch {x.shape[0]} but the chunk has {self.rows.shape[0]} samples "
                    "(does the model duplicate the batch, e.g. for guidance?)"
                )
            self.shapes[spec.name] = (x.shape[1], x.shape[2])
            if self.overlap and x.is_cuda and not torch.compiler.is_compiling():
                self._score_on_side_stream(spec, x)
            else:
                self._score(spec, x)

        return hook

    def _score(self, spec: TapSpec, x: torch.Tensor) -> None:
        """Statistics of ``x`` into the rows of this chunk, on the current stream."""
        mark = self.nvtx and x.is_cuda and not torch.compiler.is_compiling()
        if mark:  # a constant outer range (for ncu --nvtx-include "aselect.tap/") around the tap's own name
            torch.cuda.nvtx.range_push("aselect.tap")
            torch.cuda.nvtx.range_push(spec.name)
        out = self.stat_fn(x)
        stats, means = out if self.means else (out, None)
        cols = [stats] + [fn(x).to(torch.float32).reshape(-1, 1) for fn in self.feature_fns.values()]
        if means is not None:
            cols.append(means)
        if mark:
            torch.cuda.nvtx.range_pop()
            torch.cuda.nvtx.range_pop()
        values = torch.cat(cols, dim=1) if len(cols) > 1 else cols[0]
        buf = self.buffers.get(spec.name)
        if buf is None:
            buf = torch.full((self.total, values.shape[1]), float("nan"), device=values.device)
            self.buffers[spec.name] = buf
        buf.index_copy_(0, self.rows.to(buf.device), values.to(torch.float32))

    def _score_on_side_stream(self, spec: TapSpec, x: torch.Tensor) -> None:
        """:meth:`_score` on the device's side stream, ordered after everything queued so far on the current one."""
        main = torch.cuda.current_stream(x.device)
        side = self._side.get(x.device)
        if side is None:
            side = self._side[x.device] = torch.cuda.Stream(x.device)
        ready = torch.cuda.Event()
        ready.record(main)
        side.wait_event(ready)
        x.record_stream(side)  # the allocator must not reuse x's memory before the side stream has read it
        if self.rows.is_cuda:
            self.rows.record_stream(side)
        base = x if x._base is None else x._base  # the module's output (x may be a view that dies with the hook)
        if not base.is_inference():  # inference tensors keep no version counter: nothing to check
            self._pending.append((spec.name, weakref.ref(base), base._version))
        with torch.cuda.stream(side):
            self._score(spec, x)

    def join(self) -> None:
        """Make the current stream wait for the statistics queued on side streams (a no-op without overlap).

        Raises ``RuntimeError`` if a tapped tensor scored on a side stream was modified in place after its hook
        (the side stream may have read the modified values): score that model with ``overlap=False``.
        """
        for device, side in self._side.items():
            done = torch.cuda.Event()
            done.record(side)
            torch.cuda.current_stream(device).wait_event(done)
        pending, self._pending = self._pending, []
        changed = sorted({name for name, ref, version in pending if (t := ref()) is not None and t._version != version})
        if changed:
            raise RuntimeError(
                f"taps {changed} were modified in place after their hook, so statistics computed beside the "
                "forward may have read the modified values: use overlap=False for this model"
            )

    def __enter__(self) -> TapSet:
        try:
            for spec in self.taps:
                module = self.model.get_submodule(spec.path)
                self._handles.append(module.register_forward_hook(self._hook(spec)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._rows = None

    def collect(self) -> dict[str, torch.Tensor]:
        """All statistics, moved to the host once: tap name -> ``[total, len(columns)]`` float32 (then the C
        channel means of the tap, with ``means=True``)."""
        self.join()
        missing = [s.name for s in self.taps if s.name not in self.buffers]
        if missing:
            raise RuntimeError(f"taps {missing} never fired: is the module used in the forward?")
        names = list(self.buffers)
        same = len({(b.shape, b.dtype, b.device) for b in self.buffers.values()}) == 1
        if same:  # one device-to-host transfer for the whole run
            return dict(zip(names, torch.stack([self.buffers[n] for n in names]).cpu().unbind(0), strict=True))
        return {name: buf.cpu() for name, buf in self.buffers.items()}
