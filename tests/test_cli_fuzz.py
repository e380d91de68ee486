"""A bounded fuzz of the command line: seeded random argument lists, mixing valid and invalid flags and values.

Each must end in exit 0, or in exit 2 with exactly one ``aselect: error:`` line that is not an internal error;
never a traceback.  A second, hypothesis-driven fuzz interrupts each draw at a random file-system step or model
call: it must end in one of those or in ``aselect: interrupted``, with no half-written output folder.  Most lists
carry a bad value, so argument checks answer at once; the valid ones run for real on a tiny model and a few images
(few timesteps, one or two taps), so the whole fuzz stays well under a minute.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aselect_kernels.cli import main
from aselect_kernels.constants import BACKENDS, SCORERS

from interrupts import ctrl_c_at
from tiny_models import tiny_dit

CASES = 160
MISSING = object()  # a flag given without its value


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model folder, images (good and broken) and a file where a folder is expected."""
    root = tmp_path_factory.mktemp("fuzz")
    tiny_dit(sample=12).save_pretrained(root / "dit")
    rng = np.random.default_rng(0)
    np.savez(root / "ok.npz", images=rng.integers(0, 256, (2, 12, 12), dtype=np.uint8), labels=np.array([1, 9]))
    np.savez(root / "bad_labels.npz", images=rng.integers(0, 256, (2, 12, 12), dtype=np.uint8),
             labels=np.array([1, 12]))
    np.savez(root / "no_images.npz", other=np.zeros(3))
    (root / "broken.npz").write_bytes(b"PK\x03\x04 broken")
    (root / "a_file").write_text("x")
    return root


def select_pools(w) -> dict:
    """Values per flag: cheap valid ones and bad ones."""
    return {
        "--timesteps": ["0,500", "999", "0:1000:400", "5:1", "x", "0:2000:500", "-1", "", "1.5", "0,0", "3,1,2"],
        "--taps": ["query:0", "block_out", "all:1", "mlp_hidden:0,1", "query:9", "nope", "transformer_blocks.0.ff",
                   "a..b", "", "transformer_blocks.0.attn1.to_q,transformer_blocks.1"],
        "--scorer": [*SCORERS, "nope", "TOKEN_VAR"],
        "--direction": ["max", "min", "up"],
        "--noise": ["ddpm", "flow", "vp"],
        "--cutoff": ["0.15", "0.4", "-1", "nan", "inf", "x", "0", "2"],
        "--hfr-dims": ["1", "2", "3", "x"],
        "--backend": [*BACKENDS[1:], "cuda"],
        "--device": ["cpu", "cuda", "tpu", "cuda:7", "x", ""],
        "--dtype": ["fp32", "bf16", "fp8"],
        "--chunk-size": ["1", "5", "0", "-2", "x", "2.5"],
        "--memory-budget-mb": ["0.02", "0", "-1", "nan", "1e-12", "x"],
        "--seed": ["0", "7", "-1", "x", "99999999999999999999999"],
        "--out": [str(w / "a_file"), str(w / "a_file" / "sub"), "/proc/aselect_fuzz", ""],
        "--limit": ["1", "2", "0", "-1", "9", "x"],
        "--images": [str(w / "ok.npz"), str(w / "bad_labels.npz"), str(w / "no_images.npz"), str(w / "broken.npz"),
                     str(w / "missing.npz"), str(w / "a_file"), str(w)],
        "--model": [str(w / "dit"), str(w / "missing"), str(w / "a_file"), "embedded"],
    }


VALIDATION_BAD = {
    "--n-train": ["0", "-5", "x", "999999"], "--n-test": ["0", "x", "999999"], "--n-select": ["0", "-1", "5000"],
    "--dataset": ["cifar", ""], "--timesteps": ["x", "0,1000", ""], "--n-dense-train": ["0", "99999"],
    "--out": ["/proc/aselect_fuzz"], "--model": ["nope/nope/nope"],
}
TRAIN_BAD = {"--minutes": ["-1", "nan", "x"], "--max-steps": ["0", "-3"], "--batch-size": ["0", "x"],
             "--lr": ["0", "-1", "inf"], "--num-threads": ["0"], "--checkpoint-minutes": ["0", "-2"],
             "--out": ["/proc/aselect_fuzz"], "--init-from": ["/nonexistent/model"]}
JUNK = ["--bogus", "zzz", "-x", "--", "--help=1", "--no-progress=1", "--use-labels"]


def argv_for(rng: random.Random, w, case: int) -> list[str]:
    command = rng.choice(["select"] * 6 + ["demo"] * 2 + ["probe", "validate", "train", "bogus"])
    if command == "bogus":
        return [rng.choice(["bogus", "", "--debug", "-h=2", "selec"])] + rng.sample(JUNK, 2)
    if command in ("select", "demo"):
        argv = [command, "--timesteps", "0,500", "--taps", "query:0", "--no-progress", "--out", str(w / f"o{case}")]
        argv += ["--model", str(w / "dit"), "--images", str(w / "ok.npz")] if command == "select" else ["--images",
                                                                                                         "2"]
        pools = select_pools(w)
        if command == "demo":
            pools["--images"] = ["1", "2", "0", "-4", "x", "999999"]
            for flag in ("--model", "--limit"):
                pools.pop(flag)
        for _ in range(rng.randint(1, 4)):
            flag = rng.choice([*pools, "junk", "missing"])
            if flag == "junk":
                argv.append(rng.choice(JUNK))
            elif flag == "missing":
                argv.append(rng.choice(list(pools)))  # at the end: a flag without its value, or eats the next flag
            else:
                argv += [flag, rng.choice(pools[flag])]
        return argv
    bad = TRAIN_BAD if command == "train" else VALIDATION_BAD
    argv = [command, "--no-progress"] + (["--out", str(w / f"t{case}")] if command == "train" else [])
    for flag in rng.sample(sorted(bad), rng.randint(1, 2)):  # at least one bad value: no training or probe grid
        argv += [flag, rng.choice(bad[flag])]
    return argv


def test_cli_fuzz_ends_in_success_or_one_line(world, capsys, monkeypatch):
    monkeypatch.delenv("ASELECT_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = random.Random(20261126)
    outcomes = {0: 0, 2: 0}
    for case in range(CASES):
        argv = argv_for(rng, world, case)
        rc = main(argv)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, (argv, captured.err)
        assert rc in (0, 2), (argv, rc, captured.err)
        outcomes[rc] += 1
        if rc == 2:
            lines = captured.err.strip().splitlines()
            errors = [line for line in lines if line.startswith("aselect: error:")]
            assert len(errors) == 1 and lines[-1] == errors[0], (argv, captured.err)
            assert "internal error" not in errors[0], (argv, errors[0])
            assert all("Warning" in line or line.startswith(" ") for line in lines[:-1]), (argv, captured.err)
        elif argv[0] in ("select", "demo") and "-h" not in argv and "--help" not in argv:
            assert "chosen (t, tap)" in captured.out, (argv, captured.out)
    assert outcomes[0] >= 5 and outcomes[2] >= CASES // 2, outcomes  # both paths were exercised


OUTPUTS = {"select": {"result.json", "scores.png"}, "demo": {"result.json", "scores.png"}}


def _out_of(argv: list[str]) -> Path | None:
    """The output folder the argument list names last (argparse keeps the last), if any."""
    spots = [i for i, a in enumerate(argv[:-1]) if a == "--out"]
    return Path(argv[spots[-1] + 1]) if spots and argv[spots[-1] + 1] else None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), where=st.sampled_from(["none", "files", "forward"]),
       k=st.integers(1, 12))
def test_cli_fuzz_with_interrupts(world, capsys, monkeypatch, seed, where, k):
    """Random argument lists, each interrupted (a real SIGINT) at the k-th file-system step under its --out or at
    the k-th model call: success, one error line or ``aselect: interrupted``; never a traceback, and the output
    folder either without new files or with all of them, never a staging folder."""
    from aselect_kernels import forward

    monkeypatch.delenv("ASELECT_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = random.Random(seed)
    argv = argv_for(rng, world, 10_000 + seed % 1000)
    out = _out_of(argv)
    if out is not None and out.is_relative_to(world) and out.name.startswith(("o", "t")):
        shutil.rmtree(out, ignore_errors=True)
    calls = [0]
    real = forward.default_call

    def call(*args):
        calls[0] += 1
        if where == "forward" and calls[0] == k:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(forward, "default_call", call)
    with ctrl_c_at(out if out is not None else world / "none", k if where == "files" else None):
        rc = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, (argv, captured.err)
    assert rc in (0, 2, 130), (argv, rc, captured.err)
    lines = captured.err.strip().splitlines()
    if rc == 2:
        errors = [line for line in lines if line.startswith("aselect: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0] and "internal error" not in errors[0], (argv, lines)
    if rc == 130:
        assert lines[-1] == "aselect: interrupted", (argv, lines)
    if out is not None and out.is_dir() and out.is_relative_to(world):
        entries = {p.name for p in out.iterdir()}
        assert not any(name.startswith(".aselect") for name in entries), (argv, entries)
        wanted = OUTPUTS.get(argv[0], set())
        assert not entries & wanted or wanted <= entries, (argv, entries)  # none of the files, or all
