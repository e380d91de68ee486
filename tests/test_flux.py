"""Flux on its real module tree: a tiny random-weight diffusers FluxTransformer2DModel, built locally.

The oracle runs the model by hand (noise with Flux's shifted sigma written out, 2 x 2 packing and ids by loops)
and reads each preset kind's intended tensor with hooks placed on other submodules than the preset's where the
tree allows it (the next block's input for block outputs, the output projection for attention outputs, the last
MLP layer's input for hidden activations), keeping image tokens and slicing text off by hand.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from aselect_kernels.flux import image_ids, pack_latents
from aselect_kernels.forward import Conditioning
from aselect_kernels.noise import Noiser, flux_shift
from aselect_kernels.select import capture_features, extract_features, select_timestep
from aselect_kernels.taps import KINDS, TapSpec, resolve_taps

from tiny_models import tiny_flux

S, GUIDANCE = 5, 3.5  # text tokens; 8 x 8 latents give 16 image tokens


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.fixture(scope="module")
def latents():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def cond():
    gen = torch.Generator().manual_seed(4)
    return Conditioning(encoder_hidden_states=torch.randn(1, S, 12, generator=gen),
                        pooled_projections=torch.randn(2, 10, generator=gen),
                        model_kwargs={"guidance": torch.tensor([GUIDANCE])})


def _sigma(t: int, tokens: int) -> float:
    """Flux's shifted sigma, from its formula: mu linear in the token count, sigma' = e^mu / (e^mu + 1/u - 1)."""
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
    u = t / 1000
    return 0.0 if t == 0 else math.exp(mu) / (math.exp(mu) + 1 / u - 1)


def _packed_by_hand(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    tokens = torch.empty(b, (h // 2) * (w // 2), c * 4)
    ids = torch.empty((h // 2) * (w // 2), 3)
    for r in range(h // 2):
        for q in range(w // 2):
            ids[r * (w // 2) + q] = torch.tensor([0.0, r, q])
            for ch in range(c):
                for dy in range(2):
                    for dx in range(2):
                        tokens[:, r * (w // 2) + q, ch * 4 + dy * 2 + dx] = x[:, ch, 2 * r + dy, 2 * q + dx]
    return tokens, ids


def _intended(model, x, t: int, cond: Conditioning, seed: int = 0) -> dict[tuple[int, str], torch.Tensor]:
    """Each preset kind's intended image-token tensor at every block, from a hand-run forward."""
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    sigma = _sigma(t, 16)
    tokens, ids = _packed_by_hand(sigma * eps + (1 - sigma) * x)
    n, doubles, singles = x.shape[0], list(model.transformer_blocks), list(model.single_transformer_blocks)
    seen: dict = {}
    hooks = []

    def put(key, value):
        seen[key] = value.detach().clone()

    for i, blk in enumerate(doubles):
        hooks += [
            blk.attn.register_forward_pre_hook(
                lambda m, a, k, i=i: put((i, "query"), m.to_q(k["hidden_states"])), with_kwargs=True),
            blk.attn.to_out[0].register_forward_hook(lambda m, a, o, i=i: put((i, "attn_out"), o)),
            blk.ff.net[2].register_forward_pre_hook(lambda m, a, i=i: put((i, "mlp_hidden"), a[0])),
            blk.ff.net[2].register_forward_hook(lambda m, a, o, i=i: put((i, "mlp_out"), o)),
        ]
    following = doubles[1:] + singles  # block i's output is block i + 1's image input
    for i, blk in enumerate(following):
        hooks.append(blk.register_forward_pre_hook(
            lambda m, a, k, i=i: put((i, "block_out"), k["hidden_states"]), with_kwargs=True))
    hooks.append(model.norm_out.register_forward_pre_hook(
        lambda m, a: put((len(following), "block_out"), a[0])))
    for j, blk in enumerate(singles):
        i = len(doubles) + j
        hooks += [
            blk.register_forward_pre_hook(
                lambda m, a, k, i=i: put((i, "text"), k["encoder_hidden_states"]), with_kwargs=True),
            blk.attn.to_q.register_forward_hook(lambda m, a, o, i=i: put((i, "query"), o)),
            blk.attn.register_forward_hook(lambda m, a, o, i=i: put((i, "attn_out"), o)),
            blk.act_mlp.register_forward_hook(lambda m, a, o, i=i: put((i, "mlp_hidden"), o)),
            blk.proj_out.register_forward_hook(lambda m, a, o, i=i: put((i, "mlp_out"), o)),
        ]
    try:
        with torch.no_grad():
            model(hidden_states=tokens, encoder_hidden_states=cond.encoder_hidden_states.expand(n, -1, -1),
                  pooled_projections=cond.pooled_projections, timestep=torch.full((n,), sigma),
                  img_ids=ids, txt_ids=torch.zeros(S, 3), guidance=torch.full((n,), GUIDANCE))
    finally:
        for h in hooks:
            h.remove()
    for j in range(len(singles)):  # the joint stream: text tokens first, cut off by hand
        i = len(doubles) + j
        text = seen.pop((i, "text")).shape[1]
        for kind in ("query", "attn_out", "mlp_hidden", "mlp_out"):
            assert seen[(i, kind)].shape[1] == text + 16
            seen[(i, kind)] = seen[(i, kind)][:, text:]
    return seen


def test_flux_preset_resolves_every_kind(flux):
    specs = resolve_taps(flux, "all", text_tokens=S)
    assert len(specs) == 5 * len(KINDS)  # 2 double-stream + 3 single-stream blocks
    names = [s.name for s in specs]
    assert names[:5] == ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn@0",
                         "transformer_blocks.0.ff.net.0", "transformer_blocks.0.ff", "transformer_blocks.0@1"]
    assert names[-5:] == ["single_transformer_blocks.2.attn.to_q[5:]", "single_transformer_blocks.2.attn[5:]",
                          "single_transformer_blocks.2.act_mlp[5:]", "single_transformer_blocks.2.proj_out[5:]",
                          "single_transformer_blocks.2@1"]
    for kind in KINDS:  # every kind resolves on both block types
        assert len(resolve_taps(flux, f"{kind}:1,2", text_tokens=S)) == 2
    assert resolve_taps(flux, "query:0")[0].name == "transformer_blocks.0.attn.to_q"  # no text length needed
    with pytest.raises(ValueError, match="text_tokens"):
        resolve_taps(flux, "query:2")
    with pytest.raises(ValueError, match=r"block 5 does not exist, FluxTransformer2DModel has 5 blocks \(0\.\.4\)"):
        resolve_taps(flux, "query:5", text_tokens=S)


def test_flux_taps_see_the_image_tokens_they_document(flux, latents, cond):
    t = 600
    expected = _intended(flux, latents, t, cond)
    feats, _ = capture_features(flux, latents, [t], "all", pool=False, noise="flux", conditioning=cond,
                                progress=False)
    specs = resolve_taps(flux, "all", text_tokens=S)
    assert sorted(feats) == sorted(s.name for s in specs)
    for k, name in enumerate(s.name for s in specs):
        block, kind = divmod(k, len(KINDS))
        want = expected[(block, KINDS[kind])]
        got = feats[name][:, 0]  # [B, L, C]
        assert got.shape == want.shape and got.shape[1] == 16, name  # image tokens only, never the 5 text ones
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_flux_select_and_extract_end_to_end(flux, latents, cond):
    ts = [0, 250, 600, 1000]
    res = select_timestep(flux, latents, ts, taps="all", noise="flux", conditioning=cond, progress=False)
    assert res.meta["noise"] == "flow" and res.meta["flow_shift"] == pytest.approx(flux_shift(16))
    assert np.isfinite(res.mean).all() and res.n_flagged == 0
    t, tap = res.best()
    assert t in ts and tap in res.taps
    tap = "single_transformer_blocks.2.attn.to_q[5:]"
    pooled, grid = extract_features(flux, latents, 250, tap, noise="flux", conditioning=cond, progress=False)
    want = _intended(flux, latents, 250, cond)[(4, "query")]  # [B, 16, C] in row-major order of the 4 x 4 grid
    assert grid.shape == (2, want.shape[2], 4, 4)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, want.mean(1), rtol=1e-5, atol=1e-5)


def test_flux_conditioning_passes_per_image(flux, latents):
    gen = torch.Generator().manual_seed(8)
    ehs, pooled = torch.randn(2, S, 12, generator=gen), torch.randn(2, 10, generator=gen)
    guidance = torch.tensor([2.0, 6.0])
    # a per-image scorer: one image runs alone (sf, the default, compares two images at least)
    kw = dict(taps="block_out:0,3", noise="flux", backend="torch", progress=False, scorer="hfr")

    def run(x, e, p, g):
        cond = Conditioning(encoder_hidden_states=e, pooled_projections=p, model_kwargs={"guidance": g})
        return select_timestep(flux, x, [0], conditioning=cond, **kw).per_sample

    both = run(latents, ehs, pooled, guidance)  # t = 0: the noise plays no part, images can run alone
    for k in range(2):  # image k with its own text, pooled text and guidance
        np.testing.assert_allclose(run(latents[k:k + 1], ehs[k:k + 1], pooled[k:k + 1], guidance[k:k + 1])[0],
                                   both[k], rtol=1e-5, atol=1e-6)
    for other in [(ehs.flip(0), pooled, guidance), (ehs, pooled.flip(0), guidance), (ehs, pooled, guidance.flip(0))]:
        assert not np.allclose(run(latents, *other), both, rtol=1e-4)  # each part reaches the model


def test_flux_packing_and_clean_packed_inputs(flux, latents, cond):
    tokens, ids = _packed_by_hand(latents)
    torch.testing.assert_close(pack_latents(latents), tokens, rtol=0, atol=0)
    torch.testing.assert_close(image_ids(8, 8), ids, rtol=0, atol=0)
    # at t = 0 nothing is noised: packed inputs with their ids give the latents' statistics
    kw = dict(taps="all:1,4", backend="torch", progress=False)
    packed_cond = replace(cond, model_kwargs={**cond.model_kwargs, "img_ids": ids})
    a = select_timestep(flux, latents, [0], noise="flux", conditioning=cond, **kw)
    b = select_timestep(flux, tokens, [0], noise="flux", conditioning=packed_cond, **kw)
    np.testing.assert_allclose(b.per_sample, a.per_sample, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, err", [
    ({"model_kwargs": {}}, "guidance"),
    ({"pooled_projections": None}, "pooled_projections"),
    ({"model_kwargs": {"guidance": torch.ones(3)}}, "guidance has 3 values"),
])
def test_flux_missing_conditioning_is_named(flux, latents, cond, change, err):
    with pytest.raises(ValueError, match=err):
        select_timestep(flux, latents, [500], taps="query:0", noise="flux", conditioning=replace(cond, **change),
                        progress=False)


def test_flux_bad_inputs_are_named(flux, latents, cond):
    with pytest.raises(ValueError, match="even"):
        select_timestep(flux, latents[..., :7], [500], taps="query:0", noise="flux", conditioning=cond,
                        progress=False)
    with pytest.raises(ValueError, match="img_ids"):
        select_timestep(flux, pack_latents(latents), [500], taps="query:0", noise="flux", conditioning=cond,
                        progress=False)


def test_flux_shift_matches_its_formula_and_the_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ts = torch.tensor([0, 1, 10, 250, 500, 999, 1000])
    for tokens in (16, 256, 1000, 4096, 6000):
        mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
        assert flux_shift(tokens) == pytest.approx(math.exp(mu), rel=1e-12)
        noiser = Noiser("flow", shift=flux_shift(tokens))
        got = noiser.sigma(ts).double().numpy()
        want = np.array([_sigma(int(t), tokens) for t in ts])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        u = ts[1:].double() / 1000
        np.testing.assert_allclose(got[1:], dynamic.time_shift(mu, 1.0, u).numpy(), rtol=1e-5)
        np.testing.assert_allclose(noiser.model_timestep(ts).double().numpy(), 1000 * want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="image_tokens"):
        flux_shift(0)


def test_token_slice_syntax():
    x = torch.randn(3, 10, 12)
    assert TapSpec.parse("a.b[5:]").tokens == (5, None)
    torch.testing.assert_close(TapSpec.parse("a[2:-1]").select(x), x[:, 2:-1])
    torch.testing.assert_close(TapSpec.parse("a@1[:4]").select((x[:, :1], x)), x[:, :4])
    torch.testing.assert_close(TapSpec.parse("a[3:][k]").select(x), x[:, 3:, 4:8])  # tokens, then qkv part
    grid = torch.randn(2, 6, 3, 4)  # [N, C, H, W] is read as [N, H*W, C] before slicing
    torch.testing.assert_close(TapSpec.parse("a[-5:]").select(grid), grid.flatten(2).transpose(1, 2)[:, -5:])
    with pytest.raises(ValueError, match="leaves no token"):
        TapSpec.parse("a[8:2]").select(x)
    for bad in ("a[x:]", "a[-:]", "a[1:2:3]", "a[q][1:]"):
        with pytest.raises(ValueError, match="bad tap"):
            TapSpec.parse(bad)


def test_validation_groups_flux_taps_by_kind(flux):
    """The validation report's per-kind tap sets recognise Flux's names (token slices, ``attn@0``, ``act_mlp``,
    single-stream ``proj_out``), so each set is exactly what that preset kind resolves to."""
    from aselect_kernels.validation.compare import tap_sets

    sets = tap_sets([s.name for s in resolve_taps(flux, "all", text_tokens=S)])
    for kind in KINDS:
        assert set(sets[kind]) == {s.name for s in resolve_taps(flux, kind, text_tokens=S)}, kind
