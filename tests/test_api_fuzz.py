"""API fuzz: the public functions' arguments drawn from well-formed and malformed values (hypothesis, bounded and
derandomized).  Every draw ends in a result or in one ``TypeError``/``ValueError`` whose message names an argument;
never another exception, a hook left on the model, or a file left behind."""

from __future__ import annotations

import inspect
import os
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aselect_kernels import Conditioning, StatsConfig, extract_features, load_images, select_timestep
from aselect_kernels.result import SelectionResult
from aselect_kernels.select import capture_features

from tiny_models import PlainDiT

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
#: Words that name an argument in a message beside the parameter names themselves.
ALIASES = {"timestep": ("timesteps", "t"), "class label": ("conditioning",), "class_labels": ("conditioning",),
           "memory budget": ("memory_budget",)}

torch.manual_seed(1)
MODEL = PlainDiT().eval()
GEN = torch.Generator().manual_seed(0)
GOOD = torch.randn(3, 1, 12, 12, generator=GEN)


def _mixed(valid: list, invalid: list) -> st.SearchStrategy:
    """Mostly well-formed values, sometimes a malformed one."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(invalid))


IMAGES = _mixed([GOOD, GOOD[:2]], [GOOD[:1], torch.randn(2, 1, 13, 13), torch.randn(2, 1, 1, 1), GOOD.numpy(),
                                   GOOD.long(), GOOD[:, 0], torch.full((2, 1, 12, 12), float("nan")),
                                   torch.zeros(2, 1, 12, 12), [GOOD[0], GOOD[1]], torch.randn(2, 3, 12, 12)])
COMMON = {
    "images": IMAGES,
    "noise": _mixed(["ddpm", "flow"], ["gauss", 3, None]),
    "conditioning": _mixed([None, Conditioning(), Conditioning(class_labels=torch.tensor([4]))],
                           [{}, Conditioning(class_labels=[1]), Conditioning(class_labels=torch.tensor([99])),
                            Conditioning(model_kwargs=[1]), Conditioning(class_labels=torch.tensor([1.5]))]),
    "seed": _mixed([0, 7, np.int64(3)], [-1, 2**70, 1.5, "1", True]),
    "chunk_size": _mixed([None, 1, 4], [0, 2.5, "4", -3]),
    "memory_budget": _mixed([None, 10**7], [0, -1, "1", float("nan")]),
    "progress": _mixed([False], ["no", None]),
    "call": _mixed([None], [3, "f"]),
}
TIMESTEPS = _mixed([[0, 500], "0:1000:500", [999], (10, 20)], ["x", [1.5], [-1], [5000], None, [True], [0, 0], []])
TAPS = _mixed(["block_out:0", ["blocks.1"], "mlp_hidden:1", "query:0,1"],
              [MODEL.blocks[0], MODEL.blocks, 3, [], ["no.such"], "block_out:9", None, [MODEL.blocks[1]]])
SELECT = {
    **COMMON, "timesteps": TIMESTEPS, "taps": TAPS,
    "scorer": _mixed(["hfr", "sf", "token_var"], [3, "nope", None, ["hfr"]]),
    "direction": _mixed([None, "max", "min"], ["up", 1]),
    "extra_scorers": _mixed([None, [], ["hfr"], ("chan_entropy",)], ["hfr", [3], 3]),
    "config": _mixed([StatsConfig()], [{}, None, {"cutoff": 0.2}]),
    "backend": _mixed(["auto", "matmul", "torch"], ["cuda", "fast", 1]),
    "shared_noise": _mixed([True, False], ["no"]),
    "overlap": _mixed([False], ["yes"]),
}
CAPTURE = {**COMMON, "timesteps": TIMESTEPS, "taps": TAPS, "pool": _mixed([True, False], ["no"])}
EXTRACT = {**COMMON, "t": _mixed([0, 500, 999.0], [2.5, "ten", 5000, True, None]),
           "tap": _mixed(["block_out:1", "blocks.0.attn"], ["block_out", ["block_out:1"], MODEL.blocks[0], 3]),
           "grid": _mixed([None, (6, 6), (4, 9)], [(-6, -6), (6.0, 6.0), 6, (5, 5), (1, 2, 3)])}


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _check_draw(fn, kwargs: dict, tmp: str) -> object:
    """Call ``fn(MODEL, **kwargs)`` in the folder ``tmp``; check the outcome and what it leaves."""
    names = {n for n in inspect.signature(fn).parameters if len(n) > 1}
    before = sorted(os.listdir(tmp))
    here = os.getcwd()
    os.chdir(tmp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(MODEL, **kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        params = set(inspect.signature(fn).parameters)
        named = [n for n in names if re.search(rf"\b{n}\b", message)] + [
            a for a, of in ALIASES.items() if a in message and params & set(of)]
        assert named, f"{type(exc).__name__} names no argument: {message}"
        assert "\n" not in message, f"more than one line: {message}"
        out = exc
    finally:
        os.chdir(here)
        assert _hooks(MODEL) == 0, "a hook was left on the model"
        assert sorted(os.listdir(tmp)) == before, "a file was left behind"
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cwd"))


@FUZZ
@given(kwargs=st.fixed_dictionaries(SELECT))
def test_select_timestep_ends_in_a_result_or_one_clear_error(folder, kwargs):
    out = _check_draw(select_timestep, kwargs, folder)
    if isinstance(out, SelectionResult):
        assert out.timesteps == sorted(out.timesteps) and len(set(out.timesteps)) == len(out.timesteps)
        assert out.mean.shape == (len(out.timesteps), len(out.taps), len(out.scorers))


@FUZZ
@given(kwargs=st.fixed_dictionaries(CAPTURE))
def test_capture_features_ends_in_a_result_or_one_clear_error(folder, kwargs):
    out = _check_draw(capture_features, kwargs, folder)
    if isinstance(out, tuple):
        feats, info = out
        n = kwargs["images"].shape[0]
        assert all(f.shape[0] == n and torch.isfinite(f).all() for f in feats.values()) and info.samples > 0


@FUZZ
@given(kwargs=st.fixed_dictionaries(EXTRACT))
def test_extract_features_ends_in_a_result_or_one_clear_error(folder, kwargs):
    out = _check_draw(extract_features, kwargs, folder)
    if isinstance(out, tuple):
        pooled, grid = out
        assert pooled.shape[0] == kwargs["images"].shape[0] and grid.shape[0] == pooled.shape[0]
        assert grid.shape[2] * grid.shape[3] == 36  # 12 x 12 images in 2 x 2 patches


ARRAYS = st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 3, 4, 8]), st.sampled_from([1, 3, 4, 8]),
                   st.sampled_from([1, 3, 4, 6]), _mixed(["uint8", "uint16", "float32"], ["int64", "bool"]),
                   st.sampled_from([3, 4]), _mixed(["auto"], ["NCHW", "NHWC", "NHW", "nchw", 3]))


@settings(FUZZ, max_examples=80)
@given(spec=ARRAYS)
def test_load_images_reads_an_array_exactly_or_refuses_it_by_name(tmp_path_factory, spec):
    """An array is read with the layout it has (asked or unambiguous) and scaled from its full depth, against
    numpy; or refused with an error that names the file or the ``layout`` option."""
    n, a, b, c, dtype, rank, layout = spec
    rng = np.random.default_rng(0)
    shape = (n, a, b, c)[:rank]
    top = {"uint8": 255, "uint16": 65535, "float32": 1, "int64": 255, "bool": 1}[dtype]
    arr = (rng.random(shape) * top).astype(dtype)
    path = tmp_path_factory.mktemp("arr") / "x.npy"
    np.save(path, arr)
    try:
        x, labels = load_images(path) if layout == "auto" else load_images(path, layout=layout)
    except (TypeError, ValueError) as exc:
        assert str(path) in str(exc) or "layout" in str(exc), str(exc)
        return
    assert labels is None and x.dtype == torch.float32 and x.dim() == 4
    nchw = {"NCHW": arr, "NHWC": arr.transpose(0, 3, 1, 2) if rank == 4 else None, "NHW": arr[:, None]}
    want = [v for v in nchw.values() if v is not None and v.shape == tuple(x.shape)]
    scaled = [2 * w.astype(np.float64) / top - 1 for w in want]
    assert any(np.allclose(x.numpy(), s, atol=1e-6) for s in scaled), (spec, x.shape)
    if layout == "auto" and rank == 4:  # the loader never guesses: a shape both ways round is refused
        assert not (a in (1, 3, 4) and c in (1, 3, 4))
