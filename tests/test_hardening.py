"""Bad inputs and corner cases of the library: each gets a clear error naming the problem, or a correct answer
checked against an independent oracle (the fp64 reference, numpy, or the same run given well-formed input)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import aselect_kernels
from aselect_kernels import Conditioning, StatsConfig, compute_stats, extract_features, select_timestep
from aselect_kernels.forward import null_class
from aselect_kernels.frequency import CutoffWarning
from aselect_kernels.noise import Noiser, parse_timesteps
from aselect_kernels.reference import STAT_NAMES, reference_stats
from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments
from aselect_kernels.stats import triton_available
from aselect_kernels.taps import GROUPS, KINDS, resolve_taps
from aselect_kernels.validation.compare import compare
from aselect_kernels.validation.grids import ProbeGrid
from aselect_kernels.validation.report import summary_lines
from aselect_kernels.validation.run import check_dense_taps, run_validation

from tiny_models import PlainDiT, tiny_dit

TS = [0, 300, 900]


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(1)
    return PlainDiT().eval()


def _run(model, images, **kwargs):
    args = {"timesteps": TS, "taps": "block_out", "backend": "matmul", "progress": False, **kwargs}
    return select_timestep(model, images, **args)


# -- timesteps ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "err"), [
    (1.5, "integers, got 1.5"), ([0.5, 0.7], "integers, got 0.5"), ([True, False], "bool"), ("5_0", "at '5_0'"),
    (None, "got None"), ("1:2:3:4", "cannot parse"), ([[1, 2]], "got list"), (torch.tensor([2.5]), "got 2.5"),
])
def test_timesteps_are_never_rounded(spec, err):
    with pytest.raises((ValueError, TypeError), match=err):
        parse_timesteps(spec)
    with pytest.raises((ValueError, TypeError), match="integer|bool"):
        Noiser().check([True])


def test_timesteps_are_sorted_and_integral_values_accepted(plain, images):
    assert parse_timesteps([900, 0.0, np.int64(300)]) == TS
    assert parse_timesteps(np.array([300.0, 900.0, 0.0])) == TS
    shuffled = _run(plain, images, timesteps=[900, 0, 300])
    ordered = _run(plain, images)
    assert shuffled.timesteps == TS
    np.testing.assert_array_equal(shuffled.per_sample, ordered.per_sample)


def test_extract_features_rejects_a_fractional_t_and_a_multi_tap_preset(plain, images):
    with pytest.raises(ValueError, match="integers, got 2.5"):
        extract_features(plain, images, 2.5, "block_out:0", progress=False)
    with pytest.raises(TypeError, match="bool"):
        extract_features(plain, images, True, "block_out:0", progress=False)
    with pytest.raises(ValueError, match="expands to 2 taps .*'query:0'"):
        extract_features(plain, images, 2, "query", progress=False)
    pooled, _ = extract_features(plain, images, 2.0, "query:1", progress=False)  # 2.0 is the integer 2
    same, _ = extract_features(plain, images, 2, "blocks.1.attn.qkv[q]", progress=False)
    assert torch.equal(pooled, same)


# -- dead cells -----------------------------------------------------------------------------------------------------

def _result_with_a_dead_tap() -> tuple[SelectionResult, np.ndarray]:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((4, 3, 3, 2))  # [B, T, P, S]
    values[:, :, 1, :] = np.nan  # tap "b" dead at every t
    values[:, 2, 2, 0] = np.inf  # tap "c" dead at t=20 under s0 only
    res = SelectionResult([0, 10, 20], ["a", "b", "c"], ["s0", "s1"], {"s0": "max", "s1": "min"},
                          Moments.from_samples(values), "s0")
    return res, values


def test_dead_cells_are_named_and_the_live_ones_selected(tmp_path):
    res, values = _result_with_a_dead_tap()
    assert res.dead_cells() == [(0, "b"), (10, "b"), (20, "b"), (20, "c")]
    assert res.dead_cells("s1") == [(0, "b"), (10, "b"), (20, "b")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the dead tap's all-NaN slices
        mean = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0)  # numpy oracle over live samples
    live = np.where(np.isfinite(mean[:, :, 0]), mean[:, :, 0], -np.inf)
    ti, p = np.unravel_index(np.argmax(live), live.shape)
    assert res.best() == ([0, 10, 20][ti], ["a", "b", "c"][p])
    per_tap = res.best_t_per_tap()
    assert per_tap["b"] is None
    assert per_tap["a"] == [0, 10, 20][int(np.argmax(mean[:, 0, 0]))]
    assert per_tap["c"] == [0, 10][int(np.argmax(mean[:2, 2, 0]))]
    text = res.table()
    assert text.count("dead") >= 4 and "b at every t; c at t=20" in text and "4 of 9 cells are dead" in text
    d = json.loads(res.to_json(tmp_path / "r.json"))
    assert d["dead_cells"] == {"s0": [[0, "b"], [10, "b"], [20, "b"], [20, "c"]], "s1": [[0, "b"], [10, "b"],
                                                                                          [20, "b"]]}
    back = SelectionResult.from_json(tmp_path / "r.json")
    assert back.dead_cells() == res.dead_cells() and back.best() == res.best()
    assert res.plot(tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_result_with_every_cell_dead_still_prints_and_saves(tmp_path):
    values = np.full((2, 2, 1, 1), np.nan)
    res = SelectionResult([0, 10], ["a"], ["s"], {"s": "max"}, Moments.from_samples(values), "s")
    assert "every cell is dead" in res.table() and res.best_t_per_tap() == {"a": None}
    assert json.loads(res.to_json(tmp_path / "r.json"))["best"] is None
    res.plot(tmp_path / "p.png")
    with pytest.raises(ValueError, match="every cell is dead"):
        res.best()


def test_plot_follows_t_in_a_table_read_unsorted(tmp_path):
    res, _ = _result_with_a_dead_tap()
    d = res.to_dict()
    order = [2, 0, 1]
    d["timesteps"] = [res.timesteps[i] for i in order]
    for k in ("count", "total", "total_sq", "flagged"):
        d[k] = [d[k][i] for i in order]
    back = SelectionResult.from_json(json.dumps(d))
    assert back.best() == res.best()
    back.plot(tmp_path / "p.png")


# -- from_json ------------------------------------------------------------------------------------------------------

def test_from_json_checks_shapes_and_names_the_file(tmp_path):
    res, _ = _result_with_a_dead_tap()
    d = res.to_dict()
    d["taps"] = d["taps"][:2]  # one tap removed from the axes only
    (tmp_path / "short.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"short.json.*count has shape \[3, 3, 2\].*need \[3, 2, 2\]"):
        SelectionResult.from_json(tmp_path / "short.json")
    text = res.to_json()
    cases = {"trunc.json": text[: len(text) // 2], "empty.json": "", "schema.json": '{"a": 1}', "list.json": "[1]"}
    for name, body in cases.items():
        (tmp_path / name).write_text(body)
    for name, err in [("trunc.json", "not valid JSON"), ("empty.json", "is empty"),
                      ("schema.json", "not a selection result: missing timesteps"),
                      ("list.json", "not a selection result")]:
        with pytest.raises(ValueError, match=f"{name}.*{err}|{err}.*{name}"):
            SelectionResult.from_json(tmp_path / name)
    d = res.to_dict()
    d["primary"] = "nope"
    with pytest.raises(ValueError, match="primary scorer 'nope'"):
        SelectionResult.from_json(json.dumps(d))
    with pytest.raises(ValueError, match="empty string"):
        SelectionResult.from_json("")
    with pytest.raises(FileNotFoundError, match="a folder"):
        SelectionResult.from_json(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        SelectionResult.from_json(tmp_path / "missing.json")


# -- taps -----------------------------------------------------------------------------------------------------------

class SharedBlock(nn.Module):
    """One linear layer applied twice per forward (weight sharing): ``forward(x, t)`` on tokens ``[B, L, C]``."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(self.shared(x)))


def test_a_module_called_twice_per_forward_is_refused():
    model = SharedBlock()
    x = torch.randn(2, 40, 8)
    with pytest.raises(RuntimeError, match="'shared'.*ran twice in one forward"):
        select_timestep(model, x, TS, taps="shared", backend="matmul", progress=False)
    assert not any(m._forward_hooks for m in model.modules())
    res = select_timestep(model, x, TS, taps="out", backend="matmul", progress=False)  # called once: fine
    assert np.isfinite(res.mean).all()


def test_qkv_parts_only_on_a_fused_projection(plain):
    with pytest.raises(ValueError, match=r"\[q\].*blocks.0.mlp.0 is Linear\(24 -> 96\), not a fused qkv"):
        resolve_taps(plain, "blocks.0.mlp.0[q]")
    with pytest.raises(ValueError, match="not a fused qkv"):
        resolve_taps(tiny_dit(), "transformer_blocks.0.attn1.to_q[k]")
    assert [s.part for s in resolve_taps(plain, "blocks.0.attn.qkv[v]")] == ["v"]


def test_tap_messages_and_combined_presets(plain):
    with pytest.raises(ValueError, match="block 9 does not exist, DiT has 2 blocks"):
        resolve_taps(plain, "query:9")
    with pytest.raises(ValueError, match="not a preset \\(query, attn_out, mlp_hidden, mlp_out, block_out, all"):
        resolve_taps(plain, "querry")
    with pytest.raises(ValueError, match="use a preset \\(query"):
        resolve_taps(plain, "querry:1")
    names = [s.name for s in resolve_taps(plain, "mlp_hidden,block_out")]
    assert names == ["blocks.0.mlp.1", "blocks.1.mlp.1", "blocks.0", "blocks.1"]
    assert [s.name for s in resolve_taps(plain, "query:0,1,block_out:1")] == [
        "blocks.0.attn.qkv[q]", "blocks.1.attn.qkv[q]", "blocks.1"]
    assert [s.name for s in resolve_taps(plain, ["blocks.0.mlp", "query:1"])] == [
        "blocks.0.mlp", "blocks.1.attn.qkv[q]"]


# -- the plain DiT with either MLP layout ---------------------------------------------------------------------------

@pytest.mark.parametrize("mlp", ["sequential", "timm"])
def test_every_preset_runs_on_both_plain_layouts(mlp, images):
    torch.manual_seed(2)
    model = PlainDiT(mlp).eval()
    act = "act" if mlp == "timm" else "1"
    for preset in list(KINDS) + list(GROUPS):
        res = _run(model, images, taps=preset, timesteps=[0, 500])
        assert np.isfinite(res.mean).all() and len(res.taps) == 2 * len(GROUPS.get(preset, (preset,)))
    assert [s.name for s in resolve_taps(model, "mlp_hidden")] == [f"blocks.0.mlp.{act}", f"blocks.1.mlp.{act}"]
    # the mlp_hidden tap scores the GELU output, 4x wide: compare with the reference on a hand-captured output
    seen = {}
    hook = model.blocks[1].mlp.get_submodule(act).register_forward_hook(lambda m, a, o: seen.__setitem__("x", o))
    try:
        res = _run(model, images, taps="mlp_hidden:1", timesteps=[500], backend="torch", chunk_size=2,
                   scorer="token_var")  # one forward: the hook keeps the tap's output of this draw
    finally:
        hook.remove()
    assert seen["x"].shape[-1] == 96
    ref = reference_stats(seen["x"].double(), compute_dtype=torch.float64).numpy()
    s = res.scorers.index("token_var")
    np.testing.assert_allclose(res.per_sample[:, 0, 0, s], ref[:, STAT_NAMES.index("token_var")], rtol=1e-4)


def test_null_class_spellings_and_the_message_when_there_is_none(images):
    model = PlainDiT()
    assert null_class(model) == 10
    model.y_embedder.__dict__.pop("num_classes")
    assert null_class(model) is None
    with pytest.raises(ValueError, match="no null class was found .*y_embedder.num_classes.*class_labels="):
        _run(model, images)
    model.num_classes = 10
    assert null_class(model) == 10
    assert np.isfinite(_run(model, images).mean).all()


# -- images, labels, sizes, config ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "kind", "err"), [
    (lambda x: list(x), TypeError, "got list .*torch.stack"),
    (lambda x: torch.tensor(1.0), ValueError, "got shape \\(\\)"),
    (lambda x: x[:, 0], ValueError, "takes images \\[B, 1, H, W\\], got shape \\(2, 12, 12\\).*images\\[:, None\\]"),
    (lambda x: x[:0], ValueError, "empty batch"),
    (lambda x: x.to("meta"), ValueError, "meta tensors"),
])
def test_bad_images_are_named(plain, images, bad, kind, err):
    with pytest.raises(kind, match=err):
        _run(plain, bad(images))
    with pytest.raises(kind, match=err):
        extract_features(plain, bad(images), 10, "block_out:0", progress=False)


def test_a_model_on_the_meta_device(images):
    with torch.device("meta"):
        model = PlainDiT()
    with pytest.raises(ValueError, match="meta device"):
        _run(model, images.to("meta"))


def test_class_labels_are_checked(plain, images):
    with pytest.raises(ValueError, match="class label 12 out of range: DiT has classes 0..9 and the null class 10"):
        _run(plain, images, conditioning=Conditioning(class_labels=torch.tensor([3, 12])))
    with pytest.raises(ValueError, match="class label -1"):
        _run(plain, images, conditioning=Conditioning(class_labels=torch.tensor([-1, 0])))
    with pytest.raises(TypeError, match="integer tensor"):
        _run(plain, images, conditioning=Conditioning(class_labels=torch.tensor([1.0, 2.0])))
    ok = _run(plain, images, conditioning=Conditioning(class_labels=torch.tensor([9, 10])))
    assert np.isfinite(ok.mean).all()


def test_sizes(plain, images):
    base = _run(plain, images, chunk_size=2)
    for kwargs in ({"memory_budget": 2.5e5}, {"chunk_size": 2.0}, {"memory_budget": 1}):
        # another chunking changes the model's batched arithmetic, not the scores beyond fp32 rounding
        np.testing.assert_allclose(_run(plain, images, **kwargs).per_sample, base.per_sample, rtol=1e-5)
    assert _run(plain, images, memory_budget=1).meta["chunk_size"] == 1
    for kwargs, kind, err in [({"chunk_size": 2.5}, TypeError, "whole number"), ({"chunk_size": True}, TypeError,
                              "whole number"), ({"chunk_size": 0}, ValueError, ">= 1"),
                              ({"memory_budget": 0}, ValueError, "at least 1 byte"),
                              ({"memory_budget": -5.0}, ValueError, "at least 1 byte"),
                              ({"memory_budget": "1e6"}, TypeError, "number of bytes")]:
        with pytest.raises(kind, match=err):
            _run(plain, images, **kwargs)


def test_stats_config_is_checked():
    with pytest.raises(TypeError, match="got str '0.2'"):
        StatsConfig(cutoff="0.2")
    for cutoff in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="cutoff"):
            StatsConfig(cutoff=cutoff)
    with pytest.raises(ValueError, match="hfr_dims"):
        StatsConfig(hfr_dims=True)
    with pytest.raises(ValueError, match="positive ints, got \\(3.5, 4\\)"):
        StatsConfig(hfr_dims=2, grid=(3.5, 4))
    with pytest.raises(ValueError, match="only by 2-D frequencies"):
        StatsConfig(grid=(4, 10))
    assert StatsConfig(hfr_dims=2, grid=[np.int64(4), 10]).grid == (4, 10)


# -- numerics -------------------------------------------------------------------------------------------------------

BACKENDS = ["torch", "matmul"] + (["triton"] if triton_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_sample_is_flagged_on_every_backend(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 7, generator=g) * 3
    x[0] = 3.3  # every channel constant
    x[1] = (torch.randn(7, generator=g) * 5)[None, :]  # constant across tokens, channels differ
    out = compute_stats(x, backend=backend)
    assert torch.equal(out[:2, 2], torch.zeros(2)) and out[:2, 5].isnan().all()
    assert not out[2].isnan().any()
    assert torch.equal(out[:2, 4], torch.zeros(2))  # DC energy only: no high frequency


@pytest.mark.parametrize("backend", BACKENDS)
def test_hfr_is_never_negative_and_its_absolute_error_is_bounded(backend):
    length = 40
    tokens = torch.arange(length, dtype=torch.float64)
    noise = torch.randn(16, length, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = (10 * torch.cos(2 * math.pi * tokens / length)[None, :, None] + 1e-3 * noise).float()
    ref = reference_stats(x.double(), compute_dtype=torch.float64)
    out = compute_stats(x, backend=backend).double()
    assert (out[:, 4:] >= 0).all()
    # absolute accuracy of the ratios (docs/STATISTICS.md): 2 * the energies' relative error, here ~1e-5
    assert (out[:, 4:] - ref[:, 4:]).abs().max() < 1e-5


def test_reference_keeps_fp64_semantics():
    """The shifted mean changes nothing in exact arithmetic: fp64 reference against numpy's direct formulas."""
    x = np.random.default_rng(4).standard_normal((3, 33, 5)) * 2 + 7
    out = reference_stats(torch.from_numpy(x), compute_dtype=torch.float64).numpy()
    np.testing.assert_allclose(out[:, 2], x.var(axis=1, ddof=1).mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(out[:, 0], x.mean(axis=(1, 2)), rtol=1e-12)


# -- validation arguments -------------------------------------------------------------------------------------------

class Unrunnable(nn.Module):
    """A plain DiT whose forward must not run: argument errors come before any computation."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PlainDiT()
        self.blocks = self.inner.blocks

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the forward ran")


def test_validate_checks_arguments_before_any_forward():
    model = Unrunnable()
    with pytest.raises(ValueError, match="dense probe's taps .* not among the scored taps 'query'"):
        run_validation(model, taps="query", dense_taps="block_out", progress=False)
    with pytest.raises(ValueError, match="cannot parse timesteps"):
        run_validation(model, timesteps="0:x", progress=False)
    with pytest.raises(ValueError, match="block 7 does not exist"):
        run_validation(model, taps="query:7", progress=False)
    assert check_dense_taps(model, "query", None) == ["blocks.0.attn.qkv[q]", "blocks.1.attn.qkv[q]"]
    assert check_dense_taps(model, "all", None) == ["blocks.0", "blocks.1"]


def test_t100_rule_says_which_t_it_took():
    ts, taps = [0, 50, 500], ["a", "b"]
    acc = np.array([[0.5, 0.6], [0.7, 0.8], [0.4, 0.3]])
    grid = ProbeGrid(ts, taps, acc, "accuracy", 0.1, 10, 1.0)
    m = Moments(np.ones((3, 2, 1), dtype=np.int64), acc[..., None], acc[..., None] ** 2,
                np.zeros((3, 2, 1), dtype=np.int64))
    rep = compare(SelectionResult(ts, taps, ["s"], {"s": "max"}, m, "s"), grid)
    t100 = rep["tap_sets"]["all"]["trivial"]["t100"]
    assert t100["t"] == 50 and t100["mean_gap"] == pytest.approx(0.0)
    report = {"dataset": "toy", "n_select": 1, "n_train": 1, "n_test": 1,
              "cost": {"select_wall_s": 1.0, "grid_wall_s": 1.0, "select_forward_samples": 3, "grid_forward_samples": 3,
                       "wall_ratio": 1.0, "forward_ratio": 1.0}, "classification": {"grid": grid.to_dict(), **rep}}
    assert any("t100 (t=50: nearest grid t)" in line for line in summary_lines(report))


# -- the embedded model's input contract ----------------------------------------------------------------------------

def test_loaders_are_exported_and_out_of_range_inputs_warn():
    model = aselect_kernels.load_embedded()
    images, _ = aselect_kernels.load_embedded_images("test")
    x = aselect_kernels.to_model_range(images[:2])[:, None]  # sf, the default scorer, compares 2 images at least
    assert x.shape == (2, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    kwargs = {"timesteps": [100], "taps": "block_out:0", "backend": "matmul", "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", CutoffWarning)
        select_timestep(model, x, **kwargs)
    with pytest.warns(UserWarning, match=r"images span \[0, 255\] but DiTTransformer2DModel takes inputs in \[-1, 1\]"):
        select_timestep(model, torch.from_numpy(images[:2]).float()[:, None], **kwargs)
