"""The ``aselect`` recipe against a hand computation: flow noise with the pipeline's own shift, the query projection
in numpy, and the high-frequency ratio from numpy's FFT at the recipe's cutoff."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aselect_kernels.cli import main
from aselect_kernels.constants import RECIPE_NAMES
from aselect_kernels.forward import Conditioning
from aselect_kernels.models import load_model
from aselect_kernels.noise import Noiser
from aselect_kernels.recipes import RECIPES, RecipeWarning
from aselect_kernels.reference import StatsConfig
from aselect_kernels.result import SelectionResult
from aselect_kernels.select import select_timestep

from tiny_models import PlainDiT, tiny_dit, tiny_sd3

SIDE, PATCH, CHANNELS = 16, 2, 4  # an 8 x 8 grid: 64 tokens, so the two cutoff readings differ


def _sd3(seed: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=SIDE, patch_size=PATCH, in_channels=CHANNELS, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        out_channels=CHANNELS).eval()


@pytest.fixture(scope="module", params=[3.0, 1.7])
def pipeline(request, tmp_path_factory):
    """A diffusers pipeline folder: ``transformer/`` and ``scheduler/scheduler_config.json`` with its shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    root = tmp_path_factory.mktemp("pipe")
    _sd3(int(request.param * 10)).save_pretrained(root / "transformer")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=request.param).save_config(root / "scheduler")
    return root, request.param


def _hfr_numpy(q: np.ndarray, cutoff_cycles: float) -> np.ndarray:
    """E_high / E_total along the tokens of ``q`` ``[n, L, C]``, high = |fftfreq| > cutoff (cycles per token)."""
    spectrum = np.abs(np.fft.fft(q, axis=1)) ** 2
    high = np.abs(np.fft.fftfreq(q.shape[1])) > cutoff_cycles
    return spectrum[:, high].sum((1, 2)) / spectrum.sum((1, 2))


@pytest.mark.parametrize("name,cycles", [("aselect", 0.15), ("aselect-nyquist", 0.075)])
def test_recipe_matches_a_hand_computation(pipeline, name, cycles):
    root, shift = pipeline
    model = load_model(str(root))  # the pipeline root: the transformer inside, the scheduler beside it
    rng = np.random.default_rng(int(shift * 100) + len(name))
    n, seed = 4, int(rng.integers(0, 1000))
    ts = sorted(int(t) for t in rng.choice(np.arange(1, 1001), 4, replace=False))
    x0 = torch.from_numpy(rng.standard_normal((n, CHANNELS, SIDE, SIDE))).float()
    cond = Conditioning(encoder_hidden_states=torch.randn(1, 3, 16), pooled_projections=torch.randn(n, 16))
    seen = {"x": [], "t": [], "q_in": {0: [], 1: []}}

    def inputs(module, args, kwargs) -> None:
        seen["x"].append(kwargs["hidden_states"].clone())
        seen["t"].append(kwargs["timestep"].clone())

    hooks = [model.register_forward_pre_hook(inputs, with_kwargs=True)]
    for i in (0, 1):
        hooks.append(model.transformer_blocks[i].attn.to_q.register_forward_pre_hook(
            lambda m, a, i=i: seen["q_in"][i].append(a[0].clone())))
    try:
        res = select_timestep(model, x0, ts, recipe=name, conditioning=cond, seed=seed, chunk_size=n * len(ts),
                              progress=False)
    finally:
        for h in hooks:
            h.remove()
    # flow noise with the pipeline's shift: sigma = s u / (1 + (s - 1) u), u = t / 1000; one eps per image
    u = np.asarray(ts, dtype=np.float64) / 1000
    sigma = shift * u / (1 + (shift - 1) * u)
    eps = torch.randn((n, CHANNELS, SIDE, SIDE), generator=torch.Generator().manual_seed(seed)).double().numpy()
    x_t = sigma[None, :, None, None, None] * eps[:, None] + (1 - sigma[None, :, None, None, None]) * x0.double(
        ).numpy()[:, None]
    np.testing.assert_allclose(torch.cat(seen["x"]).numpy(), x_t.reshape(n * len(ts), CHANNELS, SIDE, SIDE),
                               atol=1e-5)
    np.testing.assert_allclose(torch.cat(seen["t"]).numpy(), np.tile(1000 * sigma, n), rtol=1e-5)
    # the query projection by hand, then the ratio from numpy's FFT
    hfr = res.scorers.index("hfr")
    hand = []
    for i in (0, 1):
        lin = model.transformer_blocks[i].attn.to_q
        w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
        q = torch.cat(seen["q_in"][i]).double().numpy() @ w.T + b  # [n * T, 64 tokens, C]
        hand.append(_hfr_numpy(q, cycles).reshape(n, len(ts)).mean(0))
        np.testing.assert_allclose(res.mean[:, i, hfr], hand[-1], atol=3e-4)
    hand = np.stack(hand, axis=1)
    ti, p = np.unravel_index(np.argmax(hand), hand.shape)
    if np.sort(hand.ravel())[-1] - np.sort(hand.ravel())[-2] > 1e-3:  # a clear winner: the same choice
        assert res.best() == (ts[ti], f"transformer_blocks.{p}.attn.to_q")
    r = res.meta["recipe"]
    assert res.primary == "hfr" and res.directions["hfr"] == "max" and res.meta["hfr_dims"] == 1
    assert r["flow_shift"] == pytest.approx(shift) and r["shift_source"].endswith("scheduler_config.json")
    assert res.meta["cutoff"] == pytest.approx(2 * cycles) and r["paper_cutoff"] == 0.15
    assert res.meta["paper_timesteps"] == [1000 - t for t in ts]
    assert "paper t" in res.table() and f"paper t = {1000 - res.best()[0]}" in res.table()


def test_paper_timestep_is_the_schedulers_table_index():
    """The official count "1000 - t" indexes the scheduler's noisy-to-clean training table: its sigma there is ours."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    rng = np.random.default_rng(7)
    for shift in (1.0, 3.0, float(rng.uniform(1.2, 5.0))):
        table = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).sigmas.double().numpy()
        ts = rng.integers(1, 1001, 16)
        ours = Noiser("flow", shift=shift).sigma(torch.from_numpy(ts)).double().numpy()
        np.testing.assert_allclose(ours, table[1000 - ts], rtol=1e-6)
        u = ts / 1000
        np.testing.assert_allclose(ours, shift * u / (1 + (shift - 1) * u), rtol=1e-5)


def test_recipe_arguments_that_agree_are_kept_and_those_that_clash_are_errors(pipeline):
    root, shift = pipeline
    model = load_model(str(root / "transformer"))
    x = torch.randn(2, CHANNELS, SIDE, SIDE)
    cond = Conditioning(encoder_hidden_states=torch.randn(1, 3, 16), pooled_projections=torch.randn(2, 16))
    run = dict(conditioning=cond, progress=False, recipe="aselect")
    for clash, word in ((dict(taps="mlp_hidden"), "taps"), (dict(scorer="sf"), "scorer"),
                        (dict(direction="min"), "direction"), (dict(noise="flow"), "noise"),
                        (dict(config=StatsConfig(cutoff=0.15)), "aselect-nyquist")):
        with pytest.raises(ValueError, match=word):
            select_timestep(model, x, [0, 500], **run, **clash)
    res = select_timestep(model, x, [0, 500], taps="query:1", scorer="hfr", direction="max",
                          config=RECIPES["aselect"].config, **run)
    assert res.taps == ["transformer_blocks.1.attn.to_q"] and res.meta["recipe"]["flow_shift"] == pytest.approx(shift)
    given = select_timestep(model, x, [0, 500], noise=Noiser("flow", shift=2.5), **run)
    assert given.meta["recipe"]["shift_source"] == "given" and given.meta["flow_shift"] == 2.5
    with pytest.raises(ValueError, match="unknown recipe"):
        select_timestep(model, x, [0, 500], conditioning=cond, recipe="paper")


def test_recipe_without_a_scheduler_config_says_what_it_assumed():
    sd3 = tiny_sd3()  # built in memory: no folder, no scheduler config
    cond = Conditioning(encoder_hidden_states=torch.randn(1, 3, 16), pooled_projections=torch.randn(2, 16))
    with pytest.warns(RecipeWarning, match="3.0"):
        res = select_timestep(sd3, torch.randn(2, 4, 8, 8), [0, 900], recipe="aselect", conditioning=cond,
                              progress=False)
    assert res.meta["flow_shift"] == 3.0 and "no scheduler config" in res.meta["recipe"]["shift_source"]
    with pytest.warns(RecipeWarning, match="DDPM"):
        plain = select_timestep(PlainDiT(), torch.randn(2, 1, 12, 12), [0, 999], recipe="aselect", progress=False)
    assert plain.meta["noise"] == "ddpm" and plain.meta["paper_timesteps"] == [999, 0]
    assert plain.taps == ["blocks.0.attn.qkv[q]", "blocks.1.attn.qkv[q]"]


def test_cli_recipe_equals_the_library(tmp_path, capsys):
    """``--recipe`` on a pipeline folder (a tiny DiT beside a flow scheduler with a random shift): the same result
    as the library's recipe; clashing options fail before the model loads."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert RECIPE_NAMES == tuple(RECIPES)
    rng = np.random.default_rng(11)
    shift = float(rng.uniform(1.5, 4.0))
    tiny_dit(sample=12).save_pretrained(tmp_path / "pipe" / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=shift).save_config(tmp_path / "pipe" / "scheduler")
    np.save(tmp_path / "x.npy", rng.uniform(-1, 1, (3, 1, 12, 12)).astype(np.float32))
    base = ["select", "--model", str(tmp_path / "pipe"), "--images", str(tmp_path / "x.npy"), "--timesteps",
            "0,400,1000", "--recipe", "aselect", "--no-progress", "--out"]
    for flag in (["--scorer", "sf"], ["--noise", "flow"], ["--cutoff", "0.15"]):
        assert main([*base, str(tmp_path / "bad"), *flag]) == 2
        assert " ".join(flag) in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*base, str(tmp_path / "out"), "--taps", "query:1"]) == 0
    printed = capsys.readouterr().out
    assert "recipe aselect" in printed and f"shift {shift:g}" in printed and "paper t = " in printed
    direct = select_timestep(load_model(str(tmp_path / "pipe")), torch.from_numpy(np.load(tmp_path / "x.npy")),
                             "0,400,1000", taps="query:1", recipe="aselect", progress=False)
    back = SelectionResult.from_json(tmp_path / "out" / "result.json")
    np.testing.assert_array_equal(back.moments.total, direct.moments.total)
    assert back.best() == direct.best() and back.meta["recipe"] == json.loads(json.dumps(direct.meta["recipe"]))
    assert back.meta["paper_timesteps"] == [1000, 600, 0] and back.meta["flow_shift"] == pytest.approx(shift)
