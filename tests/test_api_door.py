"""Arguments checked at the door: each bad argument of a public function (or its command-line twin) is one
TypeError/ValueError naming it, raised before any forward; loaders never guess; a saved result is believed only
when its content is consistent."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from aselect_kernels import Conditioning, StatsConfig, extract_features, load_images, select_timestep
from aselect_kernels.cli import main
from aselect_kernels.geometry import NoSignalWarning
from aselect_kernels.images import to_model_range
from aselect_kernels.models import load_model
from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments
from aselect_kernels.select import capture_features
from aselect_kernels.validation.run import validation_parts

from tiny_models import PlainDiT, tiny_dit

FAST = {"timesteps": [0, 500], "taps": "block_out:0", "backend": "matmul", "progress": False}


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(1)
    return PlainDiT().eval()


@pytest.fixture(scope="module")
def dit():
    return tiny_dit()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))


class Forwards:
    """Counts the model's forward calls while active (to show an error came before any)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(lambda *a: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _refused_before_forward(model, exc_type, match, fn, *args, **kwargs):
    with Forwards(model) as seen, pytest.raises(exc_type, match=match):
        fn(model, *args, **kwargs)
    assert seen.calls == 0, "the error came after a forward"


# -- image geometry -------------------------------------------------------------------------------------------------

def test_13x13_on_a_patch_2_dit_is_refused_not_cropped(plain, images):
    odd = torch.randn(3, 1, 13, 13, generator=torch.Generator().manual_seed(1))
    _refused_before_forward(plain, ValueError, r"images are 13x13, but DiT .*takes 12x12", select_timestep, odd, **FAST)
    # the defect it closes: the 13th row and column never reached the model (scores unchanged when they change)
    edited = odd.clone()
    edited[:, :, 12, :] = 5.0
    assert torch.equal(plain.x_embedder(odd), plain.x_embedder(edited))


@pytest.mark.parametrize(("shape", "match"), [((3, 1, 1, 1), "multiples of 2"), ((3, 1, 2, 2), "at least 2 patches"),
                                               ((3, 1, 12, 16), "square inputs only"),
                                               ((3, 1, 13, 13), "multiples of 2")])
def test_sizes_the_diffusers_dit_cannot_take_are_refused_before_the_forward(dit, shape, match):
    x = torch.randn(*shape)
    pattern = rf"images are {shape[2]}x{shape[3]}\W+(but )?DiTTransformer2DModel .*{match}"
    _refused_before_forward(dit, ValueError, pattern, select_timestep, x, **FAST)
    with pytest.raises(ValueError, match="images are"):
        capture_features(dit, x, [0], "block_out:0", progress=False)


def test_a_square_size_other_than_the_trained_one_warns_and_runs(dit):
    """diffusers' DiT recomputes its sin-cos position table for another square size: the forward runs, and the
    capture says the size differs from config.sample_size."""
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match=r"16x16, but DiTTransformer2DModel .*trained at 12x12"):
        feats, _ = capture_features(dit, x, [0], "block_out:0", pool=False, progress=False)
    (tokens,) = feats.values()
    assert tokens.shape[:3] == (3, 1, 64) and torch.isfinite(tokens).all()  # 16x16 in 2x2 patches: 64 tokens


def test_one_image_with_an_across_image_scorer_is_refused_by_name(plain, images):
    _refused_before_forward(plain, ValueError, r"images: 1 image given, but the scorer 'sf' .* at least 2",
                            select_timestep, images[:1], **FAST)
    _refused_before_forward(plain, ValueError, "'sf'", select_timestep, images[:1], scorer="hfr",
                            extra_scorers=["sf"], **FAST)
    res = select_timestep(plain, images[:1], scorer="hfr", **FAST)  # a per-image scorer takes one image
    assert res.count[..., 0].min() == 1


# -- type confusions ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"taps": "MODULE"}, TypeError, r"taps must be .*got the module Block \(name it by its path: 'blocks.0'\)"),
    ({"taps": ["MODULE"]}, TypeError, r"taps\[0\] must be .*'blocks.0'"),
    ({"conditioning": {"class_labels": torch.tensor([1, 2, 3])}}, TypeError,
     r"conditioning must be a Conditioning or None, got dict .*Conditioning\(\*\*conditioning\)"),
    ({"conditioning": Conditioning(model_kwargs=[1])}, TypeError, "conditioning.model_kwargs must be a dict"),
    ({"config": {"cutoff": 0.2}}, TypeError, r"config must be a StatsConfig, got dict .*StatsConfig\(\*\*config\)"),
    ({"extra_scorers": "hfr"}, TypeError, r"extra_scorers must be a list .*got str 'hfr' .*\['hfr'\]"),
    ({"scorer": ["hfr"]}, TypeError, "scorer must be a registered scorer name"),
    ({"seed": 2**70}, ValueError, r"seed must be an integer in \[0, 2\*\*63 - 2\], got int 1180591620717411303424"),
    ({"seed": 1.5}, TypeError, "seed must be an integer .* got float 1.5"),
    ({"seed": -1}, ValueError, "seed must be an integer"),
    ({"shared_noise": "no"}, TypeError, "shared_noise must be True or False, got str 'no'"),
    ({"progress": "no"}, TypeError, "progress must be True or False"),
    ({"call": 3}, TypeError, "call must be a callable or None, got int 3"),
    ({"noise": 3}, TypeError, "noise must be one of"),
    ({"backend": "cuda"}, ValueError, r"backend must be 'auto', 'matmul' or 'torch' for a model on cpu"),
])
def test_type_confusions_are_one_error_naming_the_argument(plain, images, kwargs, exc, match):
    if torch.cuda.is_available() and kwargs.get("backend") == "cuda":
        pytest.skip("the CUDA backend runs here")
    kwargs = {k: (plain.blocks[0] if v == "MODULE" else [plain.blocks[0]] if v == ["MODULE"] else v)
              for k, v in kwargs.items()}
    _refused_before_forward(plain, exc, match, select_timestep, images, **{**FAST, **kwargs})


@pytest.mark.parametrize(("grid", "exc", "match"), [
    ((-6, -6), ValueError, r"grid must be None or a pair \(h, w\) of positive integers, got tuple \(-6, -6\)"),
    ((6.0, 6.0), TypeError, "grid must be None or a pair"),
    (6, TypeError, "grid must be None or a pair"),
    ((5, 5), ValueError, r"grid must be a pair \(h, w\) with h \* w = 36"),
])
def test_a_bad_grid_is_refused_before_the_forward(plain, images, grid, exc, match):
    _refused_before_forward(plain, exc, match, extract_features, images, 10, "block_out:0", grid=grid,
                            progress=False)


def test_pool_takes_a_bool_only(plain, images):
    _refused_before_forward(plain, TypeError, "pool must be True or False", capture_features, images, [0],
                            "block_out:0", pool="no", progress=False)


def test_images_without_signal_warn_before_the_forward(plain, images):
    for x, what in ((torch.zeros(3, 1, 12, 12), "every image is constant"),
                    (images[:1].repeat(3, 1, 1, 1), "all 3 images are the same image")):
        with pytest.warns(NoSignalWarning, match=f"carry no signal: {what}"):
            select_timestep(plain, x, **FAST)
        with warnings.catch_warnings():  # raised as an error: it came before any forward
            warnings.simplefilter("error", NoSignalWarning)
            _refused_before_forward(plain, NoSignalWarning, what, select_timestep, x, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoSignalWarning)
        select_timestep(plain, images, **FAST)


# -- validation -----------------------------------------------------------------------------------------------------

VALIDATION = {"timesteps": [0, 500], "taps": "block_out:0", "dense": False, "progress": False, "test_fraction": 0.5}
LABELS = torch.tensor([0, 1] * 6)


@pytest.fixture(scope="module")
def twelve():
    return torch.randn(12, 1, 12, 12, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"n_select": 1}, TypeError, None),
    ({"seed": 2**70}, ValueError, "seed must be an integer"),
    ({"test_fraction": "0.5"}, TypeError, r"test_fraction must be a number in \(0, 1\), got str '0.5'"),
    ({"n_train": 4.5}, TypeError, "n_train must be an integer >= 1, got float 4.5"),
    ({"dense": "no"}, TypeError, "dense must be True or False"),
    ({"taps": "MODULE"}, TypeError, "taps must be"),
])
def test_validation_arguments_are_checked_before_the_forward(plain, twelve, kwargs, exc, match):
    if kwargs.get("n_select") == 1:  # sf, selection's scorer, compares images: one is refused by name
        exc, match = ValueError, "n_select must be an integer >= 2, got int 1"
    kwargs = {k: plain.blocks[0] if v == "MODULE" else v for k, v in kwargs.items()}
    _refused_before_forward(plain, exc, match, validation_parts, twelve, LABELS, **{**VALIDATION, **kwargs})


def test_use_labels_refuses_the_null_class_in_validation_as_in_select(plain, twelve):
    _refused_before_forward(plain, ValueError, r"use_labels: labels must be class ids in \[0, 9\] \(the model has 10 "
                            r"classes\), found \[0, 10\]", validation_parts, twelve, torch.tensor([0, 10] * 6),
                            use_labels=True, **VALIDATION)
    with pytest.raises(ValueError, match="12x12"):
        validation_parts(plain, torch.randn(12, 1, 13, 13), LABELS, **VALIDATION)


def test_select_limit_1_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from aselect_kernels import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    np.savez(tmp_path / "x.npz", images=np.random.default_rng(0).integers(0, 256, (3, 12, 12), dtype=np.uint8))
    rc = main(["select", "--model", "unused", "--images", str(tmp_path / "x.npz"), "--limit", "1", "--out",
               str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--limit: 1 image given, but the scorer 'sf'" in err[0], err
    assert not (tmp_path / "o").exists()


# -- loaders --------------------------------------------------------------------------------------------------------

def test_an_ambiguous_channels_last_array_asks_for_layout(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(ValueError, match=r"shape \(5, 4, 4, 3\) is ambiguous.*layout='NCHW' or layout='NHWC'"):
        load_images(tmp_path / "a.npy")
    x, _ = load_images(tmp_path / "a.npy", layout="NHWC")
    np.testing.assert_allclose(x.numpy(), arr.transpose(0, 3, 1, 2) / 127.5 - 1.0, atol=1e-6)
    x, _ = load_images(tmp_path / "a.npy", layout="NCHW")
    assert x.shape == (5, 4, 4, 3)
    np.save(tmp_path / "one.npy", arr[0, :, :, :3])  # one colour image without its batch axis
    with pytest.raises(ValueError, match="layout='NHW'"):
        load_images(tmp_path / "one.npy")
    with pytest.raises(ValueError, match="layout must be one of"):
        load_images(tmp_path / "a.npy", layout="nhwc")


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    deep = (np.arange(2 * 64, dtype=np.uint16).reshape(2, 8, 8) * 509)  # up to 65023: most above 255
    (tmp_path / "png").mkdir()
    for i, a in enumerate(deep):
        Image.fromarray(a).save(tmp_path / "png" / f"{i}.png")
    want = deep[:, None].astype(np.float64) / 65535 * 2 - 1
    x, _ = load_images(tmp_path / "png")
    np.testing.assert_allclose(x.numpy(), want, atol=1e-6)
    np.save(tmp_path / "deep.npy", deep)
    x, _ = load_images(tmp_path / "deep.npy")
    np.testing.assert_allclose(x.numpy(), want, atol=1e-6)
    np.save(tmp_path / "wide.npy", deep.astype(np.int64))
    with pytest.raises(ValueError, match="wide.npy: unsupported image dtype int64"):
        load_images(tmp_path / "wide.npy")
    with pytest.raises(TypeError, match="uint8 or uint16"):
        to_model_range(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="path must be a path"):
        load_images(3)


def test_a_broken_config_json_names_the_file_and_the_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"m/config.json: broken config.json of the model folder .*m \(not valid JSON"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("[1]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        load_model(str(tmp_path / "m"))


# -- saved results --------------------------------------------------------------------------------------------------

def _saved() -> dict:
    values = np.random.default_rng(0).standard_normal((3, 3, 2, 1))
    res = SelectionResult([0, 10, 20], ["a", "b"], ["s"], {"s": "max"}, Moments.from_samples(values), "s",
                          meta={"images": 3})
    return json.loads(res.to_json())


def _edited(**changes) -> str:
    d = _saved()
    for key, value in changes.items():
        d[key] = value(d[key]) if callable(value) else value
    return json.dumps(d)


def _nan_at(cell):
    def edit(total):
        total[cell[0]][cell[1]][cell[2]] = float("nan")
        return total
    return edit


@pytest.mark.parametrize(("changes", "match"), [
    ({"timesteps": [0, 0, 20]}, r"timesteps must be unique, \[0\] appear"),
    ({"timesteps": [-10, 0, 20]}, "timesteps must be >= 0"),
    ({"timesteps": ["0", 10, 20]}, "timesteps must be integers"),
    ({"total": _nan_at((1, 1, 0))}, r"total must be finite in every cell with samples, but cell \[1, 1, 0\]"),
    ({"taps": ["a", "a"]}, r"taps must be unique, \['a'\]"),
    ({"taps": [1, 2]}, "taps must be a non-empty list of non-empty strings"),
    ({"flagged": lambda f: [[[1], [0]], [[0], [0]], [[0], [0]]]}, "same number of samples"),
    ({"meta": {"images": 5}}, "meta.images says 5 images, but every cell holds 3"),
    ({"best": {"t": 0, "tap": "a"}}, "is not the table's best cell"),
])
def test_from_json_checks_the_content(changes, match):
    d = _saved()
    if "best" in changes and d["best"] == changes["best"]:
        changes = {"best": {"t": 10, "tap": "b"}}
    with pytest.raises(ValueError, match=match):
        SelectionResult.from_json(_edited(**changes))


def test_from_json_takes_text_or_a_path_by_one_rule(tmp_path, monkeypatch):
    text = _edited()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "{run}.json").write_text(text)
    with pytest.raises(ValueError, match=r"starts with '\{', so it was read as JSON text.*SelectionResult.load"):
        SelectionResult.from_json("{run}.json")
    want = SelectionResult.from_json(text)
    for back in (SelectionResult.load("{run}.json"), SelectionResult.from_json(tmp_path / "{run}.json")):
        assert back.best() == want.best() and back.timesteps == want.timesteps
    with pytest.raises(TypeError, match="a parsed dict: SelectionResult.from_dict"):
        SelectionResult.from_json(json.loads(text))
    assert SelectionResult.from_dict(json.loads(text)).best() == want.best()
    with pytest.raises(TypeError, match="got bytes"):
        SelectionResult.from_json(text.encode())
    with pytest.raises(FileNotFoundError, match="no result file"):
        SelectionResult.from_json("x" * 5000)  # a name too long for the system names no file
    with pytest.raises(ValueError, match="timesteps must be unique"):
        SelectionResult([0, 0], ["a"], ["s"], {"s": "max"}, Moments.from_samples(np.ones((1, 2, 1, 1))), "s")


def test_config_dict_is_refused_even_when_empty(plain, images):
    _refused_before_forward(plain, TypeError, "config must be a StatsConfig", select_timestep, images,
                            config={}, **FAST)
    assert select_timestep(plain, images, config=StatsConfig(cutoff=0.2), **FAST).meta["cutoff"] == 0.2
