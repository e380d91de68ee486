"""The command line: real runs on small inputs, and one-line errors for bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aselect_kernels.cli import main
from aselect_kernels.model import EMBEDDED_DIR

from tiny_models import tiny_dit


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit")
    tiny_dit(sample=12).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (3, 12, 12), dtype=np.uint8), labels=np.array([1, 2, 3]))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aselect: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def test_select_writes_result(model_dir, images_npz, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["select", "--model", str(model_dir), "--images", str(images_npz), "--timesteps", "0:1000:500",
               "--taps", "all", "--out", str(out), "--no-progress", "--backend", "torch"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "chosen (t, tap)" in text
    data = json.loads((out / "result.json").read_text())
    assert data["timesteps"] == [0, 500] and len(data["taps"]) == 10 and data["meta"]["images"] == 3
    assert (out / "scores.png").stat().st_size > 1000


@pytest.mark.parametrize("extra,needle", [
    (["--timesteps", "0:2000:500"], "out of range"),
    (["--timesteps", "x"], "cannot parse"),
    (["--taps", "transformer_blocks.9.attn1"], "unknown tap path"),
    (["--scorer", "nope"], "invalid choice"),
    (["--hfr-dims", "2", "--taps", "query:0", "--cutoff", "-1"], "cutoff"),
])
def test_select_bad_arguments_one_line(model_dir, images_npz, tmp_path, capsys, extra, needle):
    rc = main(["select", "--model", str(model_dir), "--images", str(images_npz), "--out", str(tmp_path),
               "--no-progress", *extra]) if "invalid choice" not in needle else None
    if rc is None:
        with pytest.raises(SystemExit) as exc:
            main(["select", "--model", str(model_dir), "--images", str(images_npz), *extra])
        rc = exc.value.code
    assert rc == 2
    assert needle in _one_line_error(capsys)


def test_select_missing_files_and_wrong_image_size(model_dir, tmp_path, capsys):
    assert main(["select", "--model", str(tmp_path / "nope"), "--images", "x.npz"]) == 2
    _one_line_error(capsys)
    assert main(["select", "--model", str(model_dir), "--images", str(tmp_path / "none.npz")]) == 2
    _one_line_error(capsys)
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((2, 16, 16), dtype=np.uint8))
    assert main(["select", "--model", str(model_dir), "--images", str(big)]) == 2
    assert "12x12" in _one_line_error(capsys)


@pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").is_file(), reason="embedded weights not trained yet")
def test_demo_small_run(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--images", "2", "--timesteps", "0,500", "--taps", "query:0", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "chosen (t, tap)" in text and "demo wall time" in text
    data = json.loads((out / "result.json").read_text())
    assert data["best"]["t"] in (0, 500) and data["meta"]["images"] == 2


def test_module_entry_point_help():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "aselect_kernels", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "demo" in proc.stdout and "validate" in proc.stdout


@pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").is_file(), reason="embedded weights not trained yet")
def test_train_continues_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "more"
    rc = main(["train", "--out", str(out), "--minutes", "0", "--max-steps", "1", "--batch-size", "2",
               "--num-threads", "1", "--init-from", str(EMBEDDED_DIR)])
    assert rc == 0 and "trained 1 steps" in capsys.readouterr().out
    log = json.loads((out / "training_log.json").read_text())
    shipped = json.loads((EMBEDDED_DIR / "training_log.json").read_text())
    assert log["history"][-1]["steps"] == shipped["steps"] and log["init_from"] == str(EMBEDDED_DIR)
    assert main(["train", "--out", str(EMBEDDED_DIR), "--max-steps", "1", "--init-from", str(EMBEDDED_DIR)]) == 2
    assert "new folder" in _one_line_error(capsys)


@pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").is_file(), reason="embedded weights not trained yet")
def test_validate_small_run_writes_report_with_intervals(tmp_path, capsys):
    out = tmp_path / "val"
    rc = main(["validate", "--dataset", "digits", "--n-train", "24", "--n-test", "16", "--n-select", "4",
               "--timesteps", "0,500", "--taps", "block_out:2,5", "--no-dense", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "over raw pixels, 95% CI" in text and "validate wall time" in text
    report = json.loads((out / "validation_digits.json").read_text())
    best = report["classification"]["tap_sets"]["all"]["best"]
    assert report["n_test"] == 16 and len(best["vs_floor"]["ci95"]) == 2
    assert (out / "validation_digits.md").read_text().count("[") > 4 and (out / "validation_digits.png").is_file()
