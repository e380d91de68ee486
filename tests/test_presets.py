"""Every tap preset taps the tensor its docs describe, in every block of every model family.

The oracle is a hook placed by hand on the module the docs name, found in the model's own module tree (never
through the preset table): the query projection of the image stream (the first third of a fused qkv), the attention
output projection (before the adaLN gate and the residual add), the MLP's hidden activation (what its output layer
reads), the MLP's output layer (before its gate), and the block's output (the image hidden states the next block, or
the final norm, receives).  The tensors the taps see must equal the hand-captured ones exactly, and the statistics a
:class:`TapSet` stores must equal the fp64 reference on the hand-captured tensors.

A model family is one entry of :data:`FAMILIES`: a builder of a tiny random model with its inputs, and where each
kind is read by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import nn

from aselect_kernels.forward import Conditioning, run_multi_timestep
from aselect_kernels.noise import Noiser
from aselect_kernels.reference import StatsConfig, reference_stats
from aselect_kernels.taps import TapSet, TapSpec, resolve_taps

from tiny_models import PlainDiT, tiny_dit, tiny_pixart, tiny_sd3

TS = [10, 900]
CHUNK = 3  # 2 images x 2 timesteps = 4 samples: chunks of 3 and 1
KIND_NAMES = ("query", "attn_out", "mlp_hidden", "mlp_out", "block_out")
#: The groups as the docs define them.
GROUP_KINDS = {"all": KIND_NAMES, "attn_mlp": ("attn_out", "mlp_out")}

Locate = Callable[[nn.Module, int], nn.Module]  # (model, block index) -> module


@dataclass(frozen=True)
class Where:
    """Where block ``i``'s tensor of one kind is read by hand: the output of ``module(model, i)`` (its first third
    of channels with ``first_third``), or with ``consumed`` the hidden states passed into it."""

    module: Locate
    consumed: bool = False
    first_third: bool = False


@dataclass(frozen=True, eq=False)  # hashed by identity: one build per family
class Family:
    """A tiny model with its inputs (``build``), where each preset kind is read by hand, and the number of image
    tokens (every hand-read tensor has them: no text tokens)."""

    build: Callable[[], tuple[nn.Module, torch.Tensor, Conditioning]]
    where: dict[str, Where]
    tokens: int
    blocks: Callable[[nn.Module], int] = lambda model: len(_blocks(model))  # blocks each kind expands to


def _blocks(model: nn.Module) -> nn.ModuleList:
    return model.transformer_blocks if hasattr(model, "transformer_blocks") else model.blocks


def _after(final: str) -> Locate:
    """The module that receives block ``i``'s output: block ``i + 1``, or ``final`` after the last block."""
    def locate(model: nn.Module, i: int) -> nn.Module:
        blocks = _blocks(model)
        return blocks[i + 1] if i + 1 < len(blocks) else model.get_submodule(final)
    return locate


def _in_block(*names: str | int) -> Locate:
    """The submodule reached from ``transformer_blocks[i]`` by attribute names and list indices."""
    def locate(model: nn.Module, i: int) -> nn.Module:
        module = model.transformer_blocks[i]
        for name in names:
            module = module[name] if isinstance(name, int) else getattr(module, name)
        return module
    return locate


def _diffusers(attn: str) -> dict[str, Where]:
    """Diffusers blocks: ``attn`` is the image stream's attention (SD3's text stream uses ``add_q_proj``,
    ``to_add_out`` and ``ff_context``); ``ff.net`` is (GELU with its projection, Dropout, output Linear)."""
    return {
        "query": Where(_in_block(attn, "to_q")),
        "attn_out": Where(_in_block(attn, "to_out", 0)),
        "mlp_hidden": Where(_in_block("ff", "net", 2), consumed=True),
        "mlp_out": Where(_in_block("ff", "net", 2)),
        "block_out": Where(_after("norm_out"), consumed=True),
    }


def _plain(out_layer: Callable[[nn.Module], nn.Module]) -> dict[str, Where]:
    """A facebookresearch-style DiT: fused ``attn.qkv`` (q first), ``attn.proj``, an MLP whose output Linear is
    ``out_layer(mlp)``, and ``final`` after the last block."""
    return {
        "query": Where(lambda m, i: m.blocks[i].attn.qkv, first_third=True),
        "attn_out": Where(lambda m, i: m.blocks[i].attn.proj),
        "mlp_hidden": Where(lambda m, i: out_layer(m.blocks[i].mlp), consumed=True),
        "mlp_out": Where(lambda m, i: out_layer(m.blocks[i].mlp)),
        "block_out": Where(_after("final"), consumed=True),
    }


def _randn(*shape: int) -> torch.Tensor:
    """Seeded inputs, the same for every run."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


LABELS = Conditioning(class_labels=torch.tensor([3, 7]))

FAMILIES: dict[str, Family] = {
    "dit": Family(lambda: (tiny_dit(layers=3), _randn(2, 1, 12, 12), LABELS), _diffusers("attn1"), 36),
    "pixart": Family(lambda: (tiny_pixart(), _randn(2, 4, 8, 8), Conditioning(
        encoder_hidden_states=_randn(2, 5, 16),
        model_kwargs={"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}})), _diffusers("attn1"), 16),
    "sd3": Family(lambda: (tiny_sd3(), _randn(2, 4, 8, 8), Conditioning(
        encoder_hidden_states=_randn(1, 5, 16), pooled_projections=_randn(2, 16))), _diffusers("attn"), 16),
    "plain-sequential": Family(lambda: (PlainDiT("sequential").eval(), _randn(2, 1, 12, 12), LABELS),
                               _plain(lambda mlp: mlp[2]), 36),
    "plain-timm": Family(lambda: (PlainDiT("timm").eval(), _randn(2, 1, 12, 12), LABELS),
                         _plain(lambda mlp: mlp.fc2), 36),
}


@cache
def _built(family: Family) -> tuple[nn.Module, torch.Tensor, Conditioning]:
    """The family's model and inputs, built once (the tests only hook them, and remove their hooks)."""
    return family.build()


def _ref(x: torch.Tensor) -> torch.Tensor:
    return reference_stats(x, StatsConfig(), torch.float64).float()


def _hand_hooks(model: nn.Module, family: Family, seen: dict[tuple[str, int], list[torch.Tensor]]) -> list:
    """Hooks that record every (kind, block) tensor per chunk into ``seen``; returns their handles."""
    handles = []
    for kind, where in family.where.items():
        for i in range(family.blocks(model)):
            store = seen[kind, i]
            module = where.module(model, i)
            if where.consumed:
                def pre(mod, args, kwargs, store=store):
                    store.append((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).clone())
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod, args, out, store=store, third=where.first_third):
                    store.append((out[..., : out.shape[-1] // 3] if third else out).clone())
                handles.append(module.register_forward_hook(post))
    return handles


def _run(family: Family, specs: list[TapSpec]) -> tuple[list[list[torch.Tensor]], dict, dict]:
    """One scored run with every hand hook, one TapSet per spec that keeps its raw tensors, and one TapSet of all
    specs that keeps the statistics (as the selection does).  Returns (raw per spec, hand-captured, statistics)."""
    model, images, cond = _built(family)
    seen: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
    raw: list[list[torch.Tensor]] = [[] for _ in specs]

    def keeper(store: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def stat_fn(x: torch.Tensor) -> torch.Tensor:
            store.append(x.clone())
            return x.new_zeros(x.shape[0], 1)  # its statistics are not needed: the TapSet of all specs has them
        return stat_fn

    total = images.shape[0] * len(TS)
    handles = _hand_hooks(model, family, seen)
    try:
        with ExitStack() as stack:
            sets = [stack.enter_context(TapSet(model, [s], total, stat_fn=keeper(r)))
                    for s, r in zip(specs, raw, strict=True)]
            together = stack.enter_context(TapSet(model, specs, total, stat_fn=_ref))
            sets.append(together)
            run_multi_timestep(model, images, TS, Noiser(), on_chunk=lambda rows: [setattr(t, "rows", rows)
                                                                                    for t in sets],
                               conditioning=cond, chunk_size=CHUNK, progress=False)
            stats = together.collect()
    finally:
        for h in handles:
            h.remove()
    assert all(len(chunks) == -(-total // CHUNK) for chunks in seen.values()), "a hand hook fired too often"
    assert all(x.shape[1] == family.tokens for chunks in seen.values() for x in chunks), "a hand hook saw text tokens"
    return raw, dict(seen), stats


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _check(spec: TapSpec, got: list[torch.Tensor], key: tuple[str, int], seen: dict, stats: dict) -> None:
    want = seen[key]
    shapes = [tuple(x.shape) for x in got], [tuple(x.shape) for x in want]
    assert _same(got, want), f"{spec.name} does not tap {key[0]} of block {key[1]} (shapes {shapes})"
    torch.testing.assert_close(stats[spec.name], torch.cat([_ref(x) for x in want]), rtol=0, atol=0,
                               equal_nan=True, msg=f"statistics of {spec.name}")


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


def _taps_of(specs: list[TapSpec], family: Family) -> list[tuple[str, int]]:
    """The (kind, block) each spec taps, checked to be exactly one documented tensor, statistics included."""
    raw, seen, stats = _run(family, specs)
    keys = []
    for spec, got in zip(specs, raw, strict=True):
        hits = [k for k in seen if _same(got, seen[k])]
        assert len(hits) == 1, f"{spec.name} taps {hits or 'no documented tensor'}"
        _check(spec, got, hits[0], seen, stats)
        keys.append(hits[0])
    return keys


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_each_kind_taps_its_tensor_in_every_block(family, kind):
    model = _built(family)[0]
    specs = resolve_taps(model, kind)
    assert sorted(_taps_of(specs, family)) == [(kind, i) for i in range(family.blocks(model))]


@pytest.mark.parametrize("group", list(GROUP_KINDS))
def test_groups_tap_each_of_their_kinds_once(family, group):
    model = _built(family)[0]
    keys = _taps_of(resolve_taps(model, group), family)
    assert sorted(keys) == sorted((k, i) for i in range(family.blocks(model)) for k in GROUP_KINDS[group])


def test_a_block_suffix_taps_that_block(family):
    model = _built(family)[0]
    keys = [(k, i) for k in KIND_NAMES for i in range(family.blocks(model))]
    specs = [spec for k, i in keys for spec in resolve_taps(model, f"{k}:{i}")]
    assert len(specs) == len(keys)
    raw, seen, stats = _run(family, specs)
    for spec, got, key in zip(specs, raw, keys, strict=True):
        _check(spec, got, key, seen, stats)
