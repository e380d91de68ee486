"""All-or-nothing outputs: Ctrl-C at every file-system step of every command leaves the earlier outputs untouched,
or all of the new ones, and never a staging folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from aselect_kernels import outputs
from aselect_kernels.cli import main
from aselect_kernels.embedded.model import EMBEDDED_DIR
from aselect_kernels.outputs import staged_output

from interrupts import ctrl_c_at
from tiny_models import select_folder, tiny_dit

HAS_EMBEDDED = (EMBEDDED_DIR / "config.json").is_file()
EARLIER = b"earlier run"


def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_all_or_nothing(out: Path, before: dict | None, files: set[str]) -> str:
    """``out`` holds exactly the earlier outputs, or a complete new set (the ``files``); never a staging folder."""
    if out.exists():
        assert not list(out.glob(".aselect*")), sorted(os.listdir(out))
    now = snapshot(out)
    if now == before:
        return "untouched"
    assert now is not None and files <= set(now), (sorted(now or {}), files)
    assert all(now[name] != EARLIER for name in files), "a mix of earlier and new files"
    return "complete"


def interrupted_runs(argv: list[str], out: Path, files: set[str], earlier: bool) -> dict[str, int]:
    """Run ``argv`` once to count its file-system steps under ``out``, then once per step with Ctrl-C there."""
    def prepare() -> dict | None:
        shutil.rmtree(out, ignore_errors=True)
        if earlier:
            out.mkdir(parents=True)
            for name in files:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(EARLIER)
        return snapshot(out)

    prepare()
    with ctrl_c_at(out, None) as seen:
        assert main(argv) == 0
    steps = len(seen)
    assert steps >= len(files)
    tally = {"untouched": 0, "complete": 0}
    for k in range(1, steps + 1):
        before = prepare()
        with ctrl_c_at(out, k):
            rc = main(argv)
        assert rc in (0, 130), (k, rc)
        tally[check_all_or_nothing(out, before, files)] += 1
    assert tally["untouched"] >= 1, tally  # the first write was interrupted
    return tally


def test_staged_output_moves_all_or_none(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError), staged_output(out) as stage:
        (stage / "a.txt").write_text("a")
        raise RuntimeError("failed after one file")
    assert not (tmp_path / "new").exists()  # the folders made for the run are gone again
    out.mkdir(parents=True)
    (out / "a.txt").write_text("old a")
    (out / "keep.txt").write_text("other")
    with staged_output(out) as stage:
        (stage / "a.txt").write_text("a")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("b")
    assert snapshot(out) == {"a.txt": b"a", "keep.txt": b"other", "sub/b.txt": b"b"}


def test_a_failed_move_puts_back_the_earlier_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b", "c"):
        (out / name).write_text("old " + name)
    before = snapshot(out)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # a's backup, a, b's backup, then b fails
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"), staged_output(out) as stage:
        for name in ("a", "b", "c"):
            (stage / name).write_text("new " + name)
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["a", "b", "c"]


def test_keep_on_error_keeps_only_the_named_entry(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), staged_output(out, keep_on_error=("checkpoint",)) as stage:
        (stage / "checkpoint").mkdir()
        (stage / "checkpoint" / "w.bin").write_bytes(b"w")
        (stage / "final.bin").write_bytes(b"f")
        raise KeyboardInterrupt
    assert snapshot(out) == {"checkpoint/w.bin": b"w"}


def test_ctrl_c_while_moving_is_held_until_the_set_is_in_place(tmp_path):
    """A real SIGINT during the moves: every new file lands, then the interrupt is raised."""
    out = tmp_path / "out"
    with ctrl_c_at(out, None) as seen, staged_output(out) as stage:
        for name in ("a", "b"):
            (stage / name).write_text(name)
    renames = [i + 1 for i, event in enumerate(seen) if event == "os.rename"]
    shutil.rmtree(out)
    with pytest.raises(KeyboardInterrupt), ctrl_c_at(out, renames[0]), staged_output(out) as stage:
        for name in ("a", "b"):
            (stage / name).write_text(name)
    assert snapshot(out) == {"a": b"a", "b": b"b"}


@pytest.fixture(scope="module")
def select_world(tmp_path_factory):
    return select_folder(tmp_path_factory.mktemp("atomic"))


@pytest.mark.parametrize("earlier", [False, True])
def test_select_interrupted_at_every_step(select_world, tmp_path, capsys, earlier):
    out = tmp_path / "out"
    argv = ["select", "--model", str(select_world / "dit"), "--images", str(select_world / "images.npz"),
            "--timesteps", "0,500", "--taps", "query:0", "--scorer", "token_var", "--backend", "torch",
            "--no-progress", "--out", str(out)]
    tally = interrupted_runs(argv, out, {"result.json", "scores.png"}, earlier)
    assert tally["complete"] >= 1, tally  # Ctrl-C while the files were moved in: held until all were in place
    capsys.readouterr()


def _replay(monkeypatch, module, name: str) -> None:
    """Make ``module.name`` return its first call's result again: the interrupted reruns skip the forward."""
    real, cache = getattr(module, name), []

    def replay(*args, **kwargs):
        if not cache:
            cache.append(real(*args, **kwargs))
        return cache[0]

    monkeypatch.setattr(module, name, replay)


@pytest.mark.skipif(not HAS_EMBEDDED, reason="embedded weights not trained yet")
def test_demo_interrupted_at_every_step(tmp_path, capsys, monkeypatch):
    from aselect_kernels import select

    _replay(monkeypatch, select, "select_timestep")
    out = tmp_path / "demo"
    argv = ["demo", "--images", "2", "--timesteps", "0", "--taps", "mlp_hidden:0", "--scorer", "token_var",
            "--no-progress", "--out", str(out)]
    interrupted_runs(argv, out, {"result.json", "scores.png"}, earlier=True)
    capsys.readouterr()


@pytest.mark.skipif(not HAS_EMBEDDED, reason="embedded weights not trained yet")
def test_validate_and_probe_interrupted_at_every_step(tmp_path, capsys, monkeypatch):
    from aselect_kernels import models
    from aselect_kernels.validation import datasets, grids, report, run

    for module, name in ((run, "validation_parts"), (grids, "probe_grid"), (datasets, "load_dataset"),
                         (models, "load_model")):
        _replay(monkeypatch, module, name)
    real_plot, plots = report.plot_validation, {}

    def plot(selection, grid, path, *args):  # the first plot for real, then its bytes again (a real write)
        name = Path(path).name
        if name not in plots:
            real_plot(selection, grid, path, *args)
            plots[name] = Path(path).read_bytes()
        Path(path).write_bytes(plots[name])

    monkeypatch.setattr(report, "plot_validation", plot)
    out = tmp_path / "val"
    common = ["--dataset", "digits", "--n-train", "20", "--n-test", "10", "--timesteps", "0", "--taps", "block_out:5",
              "--no-progress", "--device", "cpu", "--out", str(out)]
    files = {f"{stem}_digits{ext}" for stem, ext in (("validation", ".json"), ("selection", ".json"),
                                                    ("validation", ".md"), ("validation", ".png"))}
    interrupted_runs(["validate", "--n-select", "4", "--no-dense", *common], out, files, earlier=True)
    interrupted_runs(["probe", *common], out, {"probe.json"}, earlier=False)
    assert "digits" in json.loads((out / "probe.json").read_text())["dataset"]
    capsys.readouterr()


def test_train_interrupted_at_every_step(tmp_path, capsys, monkeypatch):
    """The files a training run writes (weights, log, card) arrive together; the trainer's writes are replayed."""
    from aselect_kernels.embedded import train

    made = tmp_path / "made"
    tiny_dit(sample=12).save_pretrained(made)
    (made / "training_log.json").write_text("{}")
    (made / "MODEL_CARD.md").write_text("card")

    def replay(out_dir, **kwargs):
        for src in made.iterdir():
            shutil.copyfile(src, Path(out_dir) / src.name)
        return {"steps": 1, "train_wall_s": 0.0, "hardware": "cpu"}

    monkeypatch.setattr(train, "train", replay)
    out = tmp_path / "trained"
    interrupted_runs(["train", "--out", str(out), "--max-steps", "1"], out, {p.name for p in made.iterdir()},
                     earlier=False)
    capsys.readouterr()
