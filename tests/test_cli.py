"""The command line: real runs on small inputs, and one-line errors, found before the work, for bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aselect_kernels import cli, constants, hub, models
from aselect_kernels.cli import main
from aselect_kernels.embedded import model
from aselect_kernels.embedded.model import EMBEDDED_DIR

from tiny_models import tiny_dit

ROOT = Path(__file__).resolve().parents[1]
HAS_EMBEDDED = (EMBEDDED_DIR / "config.json").is_file()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit")
    tiny_dit(sample=12).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good and broken image files: a 3-image .npz with labels, and the ways a file can be wrong."""
    from PIL import Image

    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 12, 12), dtype=np.uint8)
    np.savez(root / "images.npz", images=u8, labels=np.array([1, 2, 3]))
    np.savez(root / "bad_labels.npz", images=u8, labels=np.array([1, 2, 10]))
    np.savez(root / "float_labels.npz", images=u8, labels=np.array([1.0, 2.5, 3.0]))
    np.savez(root / "no_labels.npz", images=u8)
    np.savez(root / "no_images.npz", pictures=u8)
    raw = (root / "images.npz").read_bytes()
    (root / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    np.save(root / "images.npy", u8)
    (root / "truncated.npy").write_bytes((root / "images.npy").read_bytes()[:100])
    for name in ("corrupt_png", "truncated_png"):
        (root / name).mkdir()
        for i in range(2):
            Image.fromarray(u8[i]).save(root / name / f"{i}.png")
    (root / "corrupt_png" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    png = (root / "truncated_png" / "1.png").read_bytes()
    (root / "truncated_png" / "1.png").write_bytes(png[: len(png) - 30])
    (root / "a_file").write_text("x")
    return root


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command loads a model: its error should have come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(model, "load_embedded", refuse)


def one_line_error(capsys) -> str:
    """The single stderr line of a failed command; an internal error fails the test."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aselect: error:"), err
    assert "Traceback" not in err[0] and "internal error" not in err[0], err[0]
    return err[0]


def select_args(model_dir, images, out, *extra) -> list[str]:
    return ["select", "--model", str(model_dir), "--images", str(images), "--timesteps", "0,500", "--taps",
            "query:0", "--out", str(out), "--no-progress", "--backend", "torch", *extra]


def test_select_writes_result(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["select", "--model", str(model_dir), "--images", str(inputs / "images.npz"), "--timesteps",
               "0:1000:500", "--taps", "all", "--out", str(out), "--no-progress", "--backend", "torch",
               "--scorer", "sf"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "chosen (t, tap)" in text and "in 2 chunks of 6;" in text and "x 10 taps" in text
    assert "12 samples (3 images x 2 timesteps x 2 noise draws)" in text  # sf scores two draws
    assert max(len(line) for line in text.splitlines() if not line.startswith("wrote")) <= 130
    data = json.loads((out / "result.json").read_text())
    assert data["timesteps"] == [0, 500] and len(data["taps"]) == 10 and data["meta"]["images"] == 3
    assert (out / "scores.png").stat().st_size > 1000


@pytest.mark.parametrize("extra,needle", [
    (["--timesteps", "0:2000:500"], "out of range"),
    (["--timesteps", "x"], "cannot parse"),
    (["--taps", "transformer_blocks.9.attn1"], "unknown tap path"),
    (["--scorer", "nope"], "invalid choice"),
    (["--hfr-dims", "2", "--taps", "query:0", "--cutoff", "-1"], "cutoff"),
    (["--cutoff", "nan"], "finite"),
    (["--limit", "-3"], "--limit: must be >= 1, got -3"),
    (["--limit", "-1"], "--limit: must be >= 1, got -1"),
    (["--limit", "0"], "--limit: must be >= 1, got 0"),
    (["--limit", "4"], "--limit 4 exceeds the 3 images"),
    (["--memory-budget-mb", "0"], "--memory-budget-mb: must be > 0"),
    (["--memory-budget-mb", "-5"], "--memory-budget-mb: must be > 0"),
    (["--chunk-size", "0"], "--chunk-size: must be >= 1"),
    (["--chunk-size", "2.5"], "expected an integer"),
    (["--device", "tpu"], "--device"),
    (["--bogus"], "unrecognized arguments"),
])
def test_select_bad_arguments_one_line(model_dir, inputs, tmp_path, capsys, extra, needle):
    rc = main(select_args(model_dir, inputs / "images.npz", tmp_path / "o", *extra))
    assert rc == 2
    assert needle in one_line_error(capsys)
    assert not (tmp_path / "o").exists()  # nothing is left behind


@pytest.mark.parametrize("images,needle", [
    ("corrupt_png", "1.png: not a readable image"),
    ("truncated_png", "1.png: not a readable image (image file is truncated)"),
    ("truncated.npz", "truncated.npz: not a readable .npz file"),
    ("truncated.npy", "truncated.npy: not a readable .npy file"),
    ("no_images.npz", "needs an 'images' or 'x' array, found keys ['pictures']"),
    ("missing.npz", "image path not found"),
])
def test_unreadable_images_fail_before_the_model_loads(inputs, tmp_path, capsys, no_model_load, images, needle):
    assert main(select_args("unused", inputs / images, tmp_path / "o")) == 2
    assert needle in one_line_error(capsys)


@pytest.mark.parametrize("out,needle", [
    ("a_file", "is an existing file, not a folder"),
    ("a_file/sub", "which is a file"),
])
def test_bad_out_fails_before_the_work(inputs, capsys, no_model_load, out, needle):
    before = sorted(p.name for p in inputs.iterdir())
    assert main(select_args("unused", inputs / "images.npz", inputs / out)) == 2
    assert needle in one_line_error(capsys)
    assert sorted(p.name for p in inputs.iterdir()) == before and (inputs / "a_file").read_text() == "x"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a Linux /proc (unwritable even for root)")
def test_unwritable_out_fails_before_the_work(inputs, capsys, no_model_load):
    assert main(select_args("unused", inputs / "images.npz", "/proc/aselect_out")) == 2
    assert "cannot write in /proc" in one_line_error(capsys)


def test_result_file_that_is_a_folder_fails_before_the_work(inputs, tmp_path, capsys, no_model_load):
    (tmp_path / "result.json").mkdir()
    assert main(select_args("unused", inputs / "images.npz", tmp_path)) == 2
    assert "result.json is a folder" in one_line_error(capsys)


@pytest.mark.parametrize("images,needle", [
    ("bad_labels.npz", "labels must be class ids in [0, 9] (the model has 10 classes), found [1, 10]"),
    ("float_labels.npz", "labels must be integer class ids"),
    ("no_labels.npz", "has no labels"),
])
def test_use_labels_checked_before_the_forward(model_dir, inputs, tmp_path, capsys, images, needle):
    assert main(select_args(model_dir, inputs / images, tmp_path / "o", "--use-labels")) == 2
    assert needle in one_line_error(capsys)


def test_missing_model_and_wrong_image_size(model_dir, inputs, tmp_path, capsys):
    assert main(select_args(tmp_path / "nope", inputs / "images.npz", tmp_path / "o")) == 2
    assert "model folder not found" in one_line_error(capsys)
    odd = tmp_path / "odd.npy"
    np.save(odd, np.random.default_rng(0).integers(0, 256, (2, 13, 13), dtype=np.uint8))
    assert main(select_args(model_dir, odd, tmp_path / "o")) == 2
    assert "13x13" in (line := one_line_error(capsys)) and "multiples of 2" in line


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_offline_probe(monkeypatch):
    """The reachability probe against a real listening socket and a closed port."""
    for key in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert not hub.hub_offline()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert hub.hub_offline()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_offline()


@pytest.mark.parametrize("offline_env", [False, True])
def test_hub_id_offline_fails_at_once(inputs, tmp_path, capsys, monkeypatch, offline_env):
    """An uncached hub id with the hub out of reach: one line, and no retries (the cache alone is tried)."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(select_args("someone/no-such-dit", inputs / "images.npz", tmp_path / "o")) == 2
    assert "out of reach (offline) and the model is not in the local hub cache" in one_line_error(capsys)


def test_not_a_hub_id_is_a_missing_folder(inputs, tmp_path, capsys):
    assert main(select_args("./models/dit/v1", inputs / "images.npz", tmp_path / "o")) == 2
    assert "model folder not found" in one_line_error(capsys)


def test_interrupt_prints_one_line_and_closes_the_bar(model_dir, inputs, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the second chunk: one line, status 130, the progress bar closed, no output written."""
    import tqdm.auto

    from aselect_kernels import forward

    calls, bars = [0], []

    class Bar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = forward.default_call
    monkeypatch.setattr(forward, "default_call", interrupted)
    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    argv = select_args(model_dir, inputs / "images.npz", tmp_path / "o", "--chunk-size", "2")
    argv.remove("--no-progress")
    assert main(argv) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "scored forward" not in line]
    assert err == ["aselect: interrupted"]
    assert len(bars) == 1 and bars[0].n == 2 and bars[0].disable  # it counted the first chunk, then was closed
    assert not (tmp_path / "o").exists()


def test_internal_error_is_one_line_and_debug_shows_it(model_dir, inputs, tmp_path, capsys, monkeypatch):
    from aselect_kernels import select

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(select, "select_timestep", broken)
    argv = select_args(model_dir, inputs / "images.npz", tmp_path / "o")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error (IndexError: list index out of range)" in err[0] and "--debug" in err[0]
    with pytest.raises(IndexError):
        main(["--debug", *argv])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(IndexError):
        main(argv)


def test_help_shows_defaults_and_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "aselect 0.1.0"
    helps = {}
    for command in ("demo", "select", "probe", "validate", "train"):
        assert main([command, "--help"]) == 0
        helps[command] = " ".join(capsys.readouterr().out.split())
    for command in ("demo", "select"):
        text = helps[command]
        assert "(default: 0:1000:50)" in text and f"(default: {constants.DEFAULT_TAPS})" in text
        assert f"default {constants.DEFAULT_SCORER}, or {constants.LABEL_CRITERIA[0]} with --labels" in text
    assert "(default: aselect_demo)" in helps["demo"] and "number of test images (default: 64)" in helps["demo"]
    assert "(default: aselect_out)" in helps["select"]
    assert (f"default {constants.VALIDATION_TIMESTEPS}, or {constants.NOISE_TIMESTEPS} for the *_noise"
            in helps["validate"])
    assert "(default: aselect_validation)" in helps["validate"]
    assert "(default: aselect_probe)" in helps["probe"] and "(default: all)" in helps["probe"]
    assert "(default: None)" not in " ".join(helps.values())


def test_parser_offers_what_the_library_takes():
    """The parser's choices and defaults are the library's: the built-in scorers, and the defaults of
    select_timestep and validation_parts (a default changed in one place changes both)."""
    import argparse
    import inspect

    from aselect_kernels.fewlabel import LABEL_CRITERIA
    from aselect_kernels.scorers import list_scorers
    from aselect_kernels.select import select_timestep
    from aselect_kernels.validation.run import validation_parts

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {name: {a.dest: a for a in p._actions} for name, p in sub.choices.items()}
    choices = tuple(options["select"]["scorer"].choices)
    n_stat = len(choices) - len(LABEL_CRITERIA)
    assert choices == tuple(s.name for s in list_scorers()[:n_stat]) + LABEL_CRITERIA
    library = inspect.signature(select_timestep).parameters
    from aselect_kernels.constants import RECIPE_OPTIONS

    for name in ("demo", "select"):
        # the options a --recipe may set are unset in the parser and take RECIPE_OPTIONS without one
        for option in ("scorer", "taps", "noise"):
            assert options[name][option].default is None
            # the library's scorer=None means DEFAULT_SCORER without labels (a few-label criterion with them)
            default = constants.DEFAULT_SCORER if option == "scorer" and library[option].default is None else \
                library[option].default
            assert RECIPE_OPTIONS[option] == default
        assert (RECIPE_OPTIONS["cutoff"], RECIPE_OPTIONS["hfr_dims"]) == (library["config"].default.cutoff,
                                                                           library["config"].default.hfr_dims)
        assert options[name]["backend"].default == library["backend"].default
    parts = inspect.signature(validation_parts).parameters
    assert options["validate"]["test_fraction"].default == parts["test_fraction"].default


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)


def test_rejected_arguments_do_not_import_torch():
    """Argument errors are found before torch (or diffusers) is imported: they cost no import time."""
    proc = _run_python("import sys\nfrom aselect_kernels.cli import main\n"
                       "rc = main(['select', '--model', 'm', '--images', 'x.npz', '--limit', '-3'])\n"
                       "print(rc, 'torch' in sys.modules, 'diffusers' in sys.modules)")
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr
    assert proc.stderr.strip().startswith("aselect: error: argument --limit") and proc.stderr.count("\n") == 1


@pytest.mark.skipif(not HAS_EMBEDDED, reason="embedded weights not trained yet")
def test_embedded_model_loads_without_the_accelerate_warning_but_user_warnings_show():
    proc = _run_python("import warnings\nfrom aselect_kernels.embedded.model import load_embedded\nload_embedded()\n"
                       "warnings.warn('the user warning')")
    assert proc.returncode == 0, proc.stderr
    assert "accelerate" not in proc.stderr and "the user warning" in proc.stderr


@pytest.mark.skipif(not HAS_EMBEDDED, reason="embedded weights not trained yet")
def test_demo_small_run(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--images", "2", "--timesteps", "0,500", "--taps", "query:0", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    from aselect_kernels.scorers import get_scorer

    draws = 2 if get_scorer(constants.DEFAULT_SCORER).pair_fn is not None else 1  # sf scores a second draw
    chunks = "2 chunks" if draws == 2 else "1 chunk"  # 2 images x 2 timesteps a draw, in one chunk each
    assert "chosen (t, tap)" in text and "demo wall time" in text and f"x 1 tap in {chunks} of 4;" in text
    data = json.loads((out / "result.json").read_text())
    assert data["best"]["t"] in (0, 500) and data["meta"]["images"] == 2


def test_demo_checks_before_loading(tmp_path, capsys, no_model_load):
    assert main(["demo", "--images", "100000", "--out", str(tmp_path / "o")]) == 2
    assert "--images must be in [1, " in one_line_error(capsys)
    assert main(["demo", "--images", "0"]) == 2
    assert "--images: must be >= 1" in one_line_error(capsys)


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "aselect_kernels", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "demo" in proc.stdout and "validate" in proc.stdout and "--version" in proc.stdout


@pytest.mark.skipif(not HAS_EMBEDDED, reason="embedded weights not trained yet")
def test_train_continues_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "more"
    rc = main(["train", "--out", str(out), "--minutes", "0", "--max-steps", "1", "--batch-size", "2",
               "--num-threads", "1", "--init-from", str(EMBEDDED_DIR)])
    assert rc == 0 and "trained 1 steps" in capsys.readouterr().out
    log = json.loads((out / "training_log.json").read_text())
    shipped = json.loads((EMBEDDED_DIR / "training_log.json").read_text())
    assert log["history"][-1]["steps"] == shipped["steps"] and log["init_from"] == str(EMBEDDED_DIR)
    assert main(["train", "--out", str(EMBEDDED_DIR), "--max-steps", "1", "--init-from", str(EMBEDDED_DIR)]) == 2
    assert "new folder" in one_line_error(capsys)


@pytest.mark.parametrize("extra,needle", [
    (["--n-select", "50", "--n-train", "24"], "--n-select 50 exceeds the 24 training images"),
    (["--n-train", "24", "--n-select", "4", "--n-dense-train", "30"], "--n-dense-train 30"),
    (["--n-train", "0"], "--n-train: must be >= 1"),
    (["--n-train", "99999"], "asked 99999"),
    (["--timesteps", "0,1000"], "out of range"),
])
def test_validate_checks_before_loading(tmp_path, capsys, no_model_load, extra, needle):
    assert main(["validate", "--dataset", "fashion", "--out", str(tmp_path / "v"), *extra]) == 2
    assert needle in one_line_error(capsys)


@pytest.mark.skipif(not HAS_EMBEDDED, reason="embedded weights not trained yet")
def test_validate_small_run_writes_report_and_its_selection_equals_the_library(tmp_path, capsys):
    """A small ``validate --candidates``: the report, and the saved selection equal to select_timestep plus the
    candidates' second run with the same arguments."""

    from aselect_kernels.images import to_model_range
    from aselect_kernels.result import SelectionResult
    from aselect_kernels.select import select_timestep
    from aselect_kernels.validation.datasets import load_dataset
    from aselect_kernels.validation.run import _with_candidates

    out = tmp_path / "val"
    rc = main(["validate", "--dataset", "digits", "--n-train", "40", "--n-test", "12", "--n-select", "4",
               "--timesteps", "0,500", "--taps", "block_out:5", "--no-dense", "--candidates", "--out", str(out),
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "over raw pixels, 95% CI" in text and "validate wall time" in text and "untimed candidate pass" in text
    report = json.loads((out / "validation_digits.json").read_text())
    best = report["classification"]["tap_sets"]["all"]["best"]
    assert report["n_test"] == 12 and len(best["vs_floor"]["ci95"]) == 2
    assert (out / "validation_digits.md").read_text().count("[") > 4 and (out / "validation_digits.png").is_file()
    (utr, _), _, _ = load_dataset("digits", 16, 12, 0)
    x = to_model_range(utr)[:, None][:4]
    embedded = model.load_embedded()
    base = select_timestep(embedded, x, "0,500", "block_out:5", progress=False)
    direct = _with_candidates(base, embedded, x, "0,500", "block_out:5", 0, False)
    saved = SelectionResult.from_json(out / "selection_digits.json")
    assert saved.scorers == direct.scorers and {"hfr_2d", "hfr_2d_centered", "erank"} <= set(saved.scorers)
    for field in ("count", "total", "total_sq", "flagged"):
        np.testing.assert_array_equal(getattr(saved.moments, field), getattr(direct.moments, field), err_msg=field)
