"""Taps, the batched multi-timestep forward, scorers, selection and extraction on tiny real models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aselect_kernels.forward import Conditioning, run_multi_timestep
from aselect_kernels.noise import Noiser
from aselect_kernels.reference import STAT_NAMES, StatsConfig, reference_stats
from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments, Scorer, get_scorer, pick, register_scorer
from aselect_kernels.select import extract_features, select_timestep
from aselect_kernels.taps import TapSet, resolve_taps

from tiny_models import PlainDiT, tiny_dit, tiny_pixart, tiny_sd3

TS = [0, 250, 600, 999]


@pytest.fixture(scope="module")
def dit():
    return tiny_dit()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(5))


def _manual_features(model, images, ts, path, seed=0):
    """Oracle: noise each (image, t) pair by hand with the scheduler and capture the tap, one sample at a time."""
    noiser = Noiser("ddpm")
    noise = torch.randn((images.shape[0], *images.shape[1:]), generator=torch.Generator().manual_seed(seed))
    feats = []
    module = model.get_submodule(path)
    box = {}
    h = module.register_forward_hook(lambda m, a, o: box.__setitem__("x", o))
    try:
        for b in range(images.shape[0]):
            for t in ts:
                tt = torch.tensor([t])
                x_t = noiser.scheduler.add_noise(images[b:b + 1], noise[b:b + 1], tt)
                with torch.no_grad():
                    model(hidden_states=x_t, timestep=tt, class_labels=torch.tensor([10]))
                feats.append(box["x"])
    finally:
        h.remove()
    return torch.cat(feats)


def test_scores_equal_reference_on_manually_noised_features(dit, images):
    path = "transformer_blocks.1.attn1.to_q"
    res = select_timestep(dit, images, TS, taps=[path], backend="torch", progress=False)
    feats = _manual_features(dit, images, TS, path)
    expected = reference_stats(feats.double(), StatsConfig(), torch.float64).numpy().reshape(3, len(TS), -1)
    got = res.per_sample[:, :, 0, :]
    for s, name in enumerate(res.scorers):
        if name in STAT_NAMES:  # the per-sample scorers (sf is taken across images: no per-sample value)
            np.testing.assert_allclose(got[..., s], expected[..., STAT_NAMES.index(name)], rtol=2e-4, atol=2e-5)
        else:
            assert name == "sf" and np.isnan(got[..., s]).all()
    # the table's mean/std are over images, ddof=1
    h = res.scorers.index("hfr")
    np.testing.assert_allclose(res.mean[:, 0, h], expected[..., STAT_NAMES.index("hfr")].mean(0), rtol=2e-4)
    np.testing.assert_allclose(res.std[:, 0, h], expected[..., STAT_NAMES.index("hfr")].std(0, ddof=1),
                               rtol=2e-3, atol=1e-6)


def test_mlp_hidden_tap_scores_the_gelu_activation(dit, images):
    (spec,) = resolve_taps(dit, "mlp_hidden:1")
    assert spec.name == "transformer_blocks.1.ff.net.0"
    res = select_timestep(dit, images, TS, taps="mlp_hidden:1", backend="torch", progress=False)
    pre = _manual_features(dit, images, TS, "transformer_blocks.1.ff.net.0.proj")  # the Linear before the GELU
    hidden = torch.nn.functional.gelu(pre.double(), approximate="tanh")
    assert hidden.shape[-1] == 4 * dit.config.num_attention_heads * dit.config.attention_head_dim
    expected = reference_stats(hidden, StatsConfig(), torch.float64).numpy().reshape(3, len(TS), -1)
    for s, name in enumerate(res.scorers):
        if name in STAT_NAMES:
            np.testing.assert_allclose(res.per_sample[:, :, 0, s], expected[..., STAT_NAMES.index(name)],
                                       rtol=2e-4, atol=2e-5)
    assert [t.name for t in resolve_taps(PlainDiT(), "mlp_hidden:0")] == ["blocks.0.mlp.1"]
    assert [t.name for t in resolve_taps(tiny_sd3(), "mlp_hidden:0")] == ["transformer_blocks.0.ff.net.0"]


@pytest.mark.parametrize("chunk", [1, 5, 12])
def test_chunking_does_not_change_scores(dit, images, chunk):
    one = select_timestep(dit, images, TS, taps="all", backend="torch", chunk_size=12, progress=False)
    many = select_timestep(dit, images, TS, taps="all", backend="torch", chunk_size=chunk, progress=False)
    np.testing.assert_allclose(many.per_sample, one.per_sample, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.mean, one.mean, rtol=1e-5, atol=1e-6)  # sf too: from per-sample means
    assert many.meta["chunks"] == 2 * -(-12 // chunk)  # the default sf runs the samples twice (two noise draws)


def test_memory_budget_sets_chunks(dit, images):
    res = select_timestep(dit, images, TS, taps="query:0", backend="torch", memory_budget=200_000, progress=False)
    assert 1 <= res.meta["chunk_size"] < 12 and res.meta["chunks"] > 1


def test_presets_expand_per_family(dit):
    names = [s.name for s in resolve_taps(dit, "all")]
    assert names[:5] == ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1",
                         "transformer_blocks.0.ff.net.0", "transformer_blocks.0.ff", "transformer_blocks.0"]
    assert len(names) == 10
    assert [s.name for s in resolve_taps(dit, "query:1")] == ["transformer_blocks.1.attn1.to_q"]
    assert [s.name for s in resolve_taps(tiny_sd3(), "block_out:0")] == ["transformer_blocks.0@1"]
    assert [s.name for s in resolve_taps(PlainDiT(), "query:1")] == ["blocks.1.attn.qkv[q]"]


def test_sd3_scores_only_image_tokens():
    model = tiny_sd3()
    x = torch.randn(2, 4, 8, 8)
    cond = Conditioning(encoder_hidden_states=torch.randn(1, 5, 16), pooled_projections=torch.randn(2, 16))
    res = select_timestep(model, x, [0, 500], taps=["transformer_blocks.0.attn", "transformer_blocks.0@1"],
                          noise="flow", conditioning=cond, backend="torch", progress=False)
    assert res.meta["noise"] == "flow"
    # capture the same outputs by hand: image tokens are 16 (8x8 latents, patch 2), the context has 5
    seen = {}
    h1 = model.transformer_blocks[0].attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o))
    h2 = model.transformer_blocks[0].register_forward_hook(lambda m, a, o: seen.__setitem__("block", o))
    noiser = Noiser("flow")
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    with torch.no_grad():
        model(hidden_states=noiser.add_noise(x, eps, t), timestep=noiser.model_timestep(t),
              encoder_hidden_states=cond.encoder_hidden_states.expand(2, -1, -1),
              pooled_projections=cond.pooled_projections)
    h1.remove()
    h2.remove()
    assert seen["attn"][0].shape[1] == 16 and seen["block"][1].shape[1] == 16
    for p, key, idx in [(0, "attn", 0), (1, "block", 1)]:
        ref = reference_stats(seen[key][idx].double(), compute_dtype=torch.float64).numpy()
        h = res.scorers.index("hfr")
        np.testing.assert_allclose(res.per_sample[:, 1, p, h], ref[:, STAT_NAMES.index("hfr")], rtol=1e-4)


def test_pixart_and_plain_dit_run():
    px = tiny_pixart()
    cond = Conditioning(encoder_hidden_states=torch.randn(2, 5, 16),
                        model_kwargs={"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}})
    res = select_timestep(px, torch.randn(2, 4, 8, 8), [10, 900], taps="all", conditioning=cond,
                          backend="torch", progress=False)
    assert len(res.taps) == 10 and np.isfinite(res.mean).all()
    plain = PlainDiT().eval()
    res = select_timestep(plain, torch.randn(2, 1, 12, 12), [10, 900], taps="all", backend="torch", progress=False,
                          conditioning=Conditioning(class_labels=torch.tensor([1, 2])))
    assert len(res.taps) == 10 and np.isfinite(res.mean).all()
    # [q] is the first third of the fused qkv projection
    q_col = res.taps.index("blocks.0.attn.qkv[q]")
    assert np.isfinite(res.mean[:, q_col]).all()


def test_hooks_removed_even_on_error(dit, images):
    before = sum(len(m._forward_hooks) for m in dit.modules())
    boom = Scorer("boom", "max", feature_fn=lambda x: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        select_timestep(dit, images, TS, taps="all", extra_scorers=[boom], backend="torch", progress=False)
    assert sum(len(m._forward_hooks) for m in dit.modules()) == before


def test_taps_keep_only_statistics(dit, images):
    specs = resolve_taps(dit, "all")
    with TapSet(dit, specs, 12, backend="torch") as ts:
        run_multi_timestep(dit, images, TS, Noiser(), on_chunk=lambda r: setattr(ts, "rows", r), chunk_size=4,
                           progress=False)
        held = list(ts.buffers.values())
    assert all(b.shape == (12, len(STAT_NAMES)) for b in held)
    assert not any(len(m._forward_hooks) for m in dit.modules())


def test_user_scorer_and_direction_override(dit, images):
    def peak(x):
        return x.float().abs().amax(dim=(1, 2))

    scorer = register_scorer(Scorer("test_peak", "min", feature_fn=peak), overwrite=True)
    res = select_timestep(dit, images, TS, taps="query", scorer="test_peak", backend="torch", progress=False)
    assert res.primary == "test_peak" and res.directions["test_peak"] == "min"
    t_min = res.best_t_per_tap()
    t_max = res.best_t_per_tap(direction="max")
    for p, tap in enumerate(res.taps):
        assert t_min[tap] == TS[int(np.argmin(res.mean[:, p, 0]))]
        assert t_max[tap] == TS[int(np.argmax(res.mean[:, p, 0]))]
    flipped = select_timestep(dit, images, TS, taps="query", scorer=scorer, direction="max", backend="torch",
                              progress=False)
    assert flipped.best() == res.best(direction="max")


def test_moments_merge_is_exact_and_matches_numpy():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((10, 4, 3))
    v[2, 1, 0] = np.nan
    whole = Moments.from_samples(v)
    parts = Moments.from_samples(v[:3]).merge(Moments.from_samples(v[3:7])).merge(Moments.from_samples(v[7:]))
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-14)
    ok = np.where(np.isfinite(v), v, np.nan)
    np.testing.assert_allclose(whole.mean, np.nanmean(ok, 0), rtol=1e-12)
    np.testing.assert_allclose(whole.std, np.nanstd(ok, 0, ddof=1), rtol=1e-10)
    assert whole.flagged[1, 0] == 1 and whole.count[1, 0] == 9


def test_pick_and_unknown_scorer():
    assert pick(np.array([1.0, np.nan, 3.0]), "max") == 2
    assert pick(np.array([1.0, np.nan, 3.0]), "min") == 0
    with pytest.raises(ValueError, match="flagged"):
        pick(np.array([np.nan, np.inf]), "max")
    with pytest.raises(ValueError, match="unknown scorer"):
        get_scorer("nope")


def test_nan_feature_is_flagged_and_excluded(dit, images):
    def poison(module, args, out):
        out = out.clone()
        out[0] = float("nan")  # first sample of each chunk of 5: rows 0, 5, 10 = (image b, timestep b)
        return out

    h = dit.transformer_blocks[0].attn1.to_q.register_forward_hook(poison)
    try:
        res = select_timestep(dit, images, TS, taps="query", backend="torch", chunk_size=5, progress=False)
    finally:
        h.remove()
    p = res.taps.index("transformer_blocks.0.attn1.to_q")
    s = res.scorers.index("token_var")
    assert res.flagged[:, p, s].sum() == 3 and res.n_flagged >= 3
    assert res.count[:3, p, s].tolist() == [2, 2, 2] and res.count[3, p, s] == 3
    assert "flagged" in res.table("token_var")
    clean = res.per_sample[1:, 0, p, s].mean()
    assert res.mean[0, p, s] == pytest.approx(clean)
    # sf drops an image poisoned in either draw (the same rows here): 2 images left where one was poisoned
    f = res.scorers.index("sf")
    assert res.count[:, p, f].tolist() == res.count[:, p, s].tolist() and np.isfinite(res.mean[:, p, f]).all()


def test_result_json_roundtrip_table_and_plot(dit, images, tmp_path):
    res = select_timestep(dit, images, TS, taps="all", backend="torch", progress=False)
    path = tmp_path / "r.json"
    res.to_json(path)
    back = SelectionResult.from_json(path)
    np.testing.assert_array_equal(back.mean, res.mean)
    np.testing.assert_array_equal(back.std, res.std)
    assert back.best() == res.best() and back.best_t_per_tap() == res.best_t_per_tap()
    d = json.loads(path.read_text())
    assert d["best"]["t"] == res.best()[0] and d["meta"]["samples"] == 24  # 3 images x 4 t x 2 draws (sf)
    assert d["meta"]["pair_scorers"] == ["sf"] and d["meta"]["pair_seed"] == 1
    text = res.table()
    assert "best (t, tap)" in text and str(res.best()[0]) in text
    png = res.plot(tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_extract_features_matches_manual_capture(dit, images):
    path = "transformer_blocks.1.ff"
    pooled, grid = extract_features(dit, images, 250, path, chunk_size=2, progress=False)
    manual = _manual_features(dit, images, [250], path)
    assert pooled.shape == (3, 16) and grid.shape == (3, 16, 6, 6)
    torch.testing.assert_close(pooled, manual.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid[:, :, 1, 2], manual[:, 1 * 6 + 2, :], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,err", [
    ({"timesteps": []}, "empty"),
    ({"timesteps": [0, 1000]}, "out of range"),
    ({"timesteps": "5:1"}, "empty"),
    ({"timesteps": "a:b"}, "cannot parse"),
    ({"taps": ["transformer_blocks.7.attn1"]}, "unknown tap path"),
    ({"taps": "query:x"}, "bad block list"),
    ({"scorer": "nope"}, "scorer must be a registered scorer name .* got str .nope."),
    ({"direction": "up"}, "direction"),
    ({"config": StatsConfig(hfr_dims=2, grid=(4, 8))}, "h\\*w must equal"),
    ({"noise": "vp"}, "noise must be one of .ddpm., .flow., .flux. or a Noiser, got str .vp."),
])
def test_bad_selection_arguments(dit, images, kwargs, err):
    args = {"timesteps": TS, "taps": "query", "backend": "torch", "progress": False, **kwargs}
    with pytest.raises((ValueError, TypeError), match=err):
        select_timestep(dit, images, **args)


def test_bad_images(dit, images):
    with pytest.raises(ValueError, match="model is on"):
        select_timestep(dit, images.to("meta"), TS, backend="torch", progress=False)
    with pytest.raises(TypeError, match="floating point"):
        select_timestep(dit, images.to(torch.uint8), TS, backend="torch", progress=False)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        select_timestep(dit, bad, TS, backend="torch", progress=False)
    with pytest.raises(ValueError, match="batch 2"):
        select_timestep(dit, images, TS, conditioning=Conditioning(class_labels=torch.tensor([1, 2])),
                        backend="torch", progress=False)


def test_compiled_model_with_taps_has_no_graph_break():
    """A torch.compile(fullgraph=True) model with taps on every attention and MLP output: the tap's statistics are
    one opaque custom op, and the compiled run records the same statistics as the eager one."""
    model = PlainDiT().eval()
    specs = resolve_taps(model, "attn_mlp")
    x, t, y = torch.randn(4, 1, 12, 12), torch.tensor([1, 50, 300, 900]), torch.tensor([1, 2, 3, 4])
    with TapSet(model, specs, 4) as eager:
        eager.rows = torch.arange(4)
        with torch.no_grad():
            model(x, t, y)
        ref = {k: v.clone() for k, v in eager.buffers.items()}
    with TapSet(model, specs, 4) as taps:
        taps.rows = torch.arange(4)
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(x, t, y)
            taps.rows = torch.arange(4)  # a new forward over the same rows
            torch.compile(model, fullgraph=True, backend="aot_eager")(x, t, y)
        compiled = taps.collect()
    assert explained.graph_break_count == 0, explained.break_reasons
    for name, value in ref.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-5, atol=1e-6)
