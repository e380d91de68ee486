"""Smaller command-line items: -V, --noise flux, the taps listing, the progress bars' names, and the README's demo
example kept true by the demo itself."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import tqdm.auto

from aselect_kernels import __version__, forward, select
from aselect_kernels.cli import main
from aselect_kernels.cli.commands import DEMO_PICK
from aselect_kernels.embedded.model import EMBEDDED_DIR

from tiny_models import select_folder

ROOT = Path(__file__).resolve().parents[1]
HAS_EMBEDDED = (EMBEDDED_DIR / "config.json").is_file()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return select_folder(tmp_path_factory.mktemp("extras"))


def select_argv(world, out, *extra):
    return ["select", "--model", str(world / "dit"), "--images", str(world / "images.npz"), "--timesteps", "0,500",
            "--taps", "query:0", "--backend", "torch", "--no-progress", "--out", str(out), *extra]


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_flags(flag, capsys):
    assert main([flag]) == 0
    assert capsys.readouterr().out.strip() == f"aselect {__version__}"


def test_noise_flux_takes_fluxs_shift(world, tmp_path, capsys):
    """--noise flux is flow matching with Flux's shift for the images' token count, as the Python API's."""
    from aselect_kernels.flux import flux_noiser

    out = tmp_path / "o"
    assert main(select_argv(world, out, "--noise", "flux", "--scorer", "token_var")) == 0
    meta = json.loads((out / "result.json").read_text())["meta"]
    expected = flux_noiser(torch.zeros(1, 1, 12, 12)).scheduler.config["shift"]
    assert meta["noise"] == "flow" and meta["flow_shift"] == pytest.approx(expected) and expected != 1.0
    assert main(select_argv(world, out, "--noise", "flux", "--timesteps", "0,1001")) == 2
    assert "out of range" in capsys.readouterr().err


def test_taps_lists_names_kinds_shapes_and_presets_from_one_sample(world, capsys, monkeypatch):
    """Shapes against the config's arithmetic: 12 x 12 pixels in patches of 2 are 36 tokens, width 2 heads x 8 = 16,
    the MLP's hidden width 4 x 16."""
    calls = []
    real = forward.default_call
    monkeypatch.setattr(forward, "default_call", lambda net, x, *a: calls.append(tuple(x.shape)) or real(net, x, *a))
    from aselect_kernels.cli import tapinfo

    monkeypatch.setattr(tapinfo, "default_call", forward.default_call)
    assert main(["taps", "--model", str(world / "dit")]) == 0
    text = capsys.readouterr().out
    assert calls == [(1, 1, 12, 12)]
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("transformer_blocks.")}
    assert len(rows) == 2 * 5  # two blocks x five kinds
    for block in (0, 1):
        p = f"transformer_blocks.{block}"
        assert re.search(r"query\s+36 x 16\s+query, all$", rows[f"{p}.attn1.to_q"])
        assert re.search(r"mlp_hidden\s+36 x 64\s+mlp_hidden, all, default$", rows[f"{p}.ff.net.0"])
        assert re.search(r"attn_out\s+36 x 16\s+attn_out, all, attn_mlp$", rows[f"{p}.attn1"])
        assert re.search(r"block_out\s+36 x 16\s+block_out, all$", rows[p])


def test_the_two_draws_have_their_own_bars(world, tmp_path, monkeypatch, capsys):
    names = []

    class Bar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            names.append(kwargs.get("desc"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    argv = select_argv(world, tmp_path / "o")
    argv.remove("--no-progress")
    assert main(argv) == 0
    assert names == ["scored forward, draw 1 of 2", "scored forward, draw 2 of 2 (channel means)"]
    capsys.readouterr()


def test_readme_states_the_demos_pick():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"It chose t = {DEMO_PICK[0]} at `{DEMO_PICK[1]}`" in readme


@pytest.mark.skipif(not HAS_EMBEDDED, reason="embedded weights not trained yet")
@pytest.mark.parametrize("pick,agrees", [(DEMO_PICK, True), ((50, DEMO_PICK[1]), False)])
def test_demo_says_whether_its_pick_is_the_readmes(tmp_path, capsys, monkeypatch, pick, agrees):
    """With the README's arguments the demo compares its pick with the documented one (here the selection is
    replaced, to see both answers without the full forward)."""
    real = select.select_timestep

    def fixed(*args, **kwargs):
        result = real(*args, **{**kwargs, "timesteps": "0,50", "taps": "mlp_hidden:0"})
        result.best = lambda *a, **k: pick
        return result

    monkeypatch.setattr(select, "select_timestep", fixed)
    assert main(["demo", "--no-progress", "--out", str(tmp_path / "o"), "--chunk-size", "64"]) == 0
    text = capsys.readouterr().out
    assert ("the README's example pick, as documented" in text) == agrees
    assert (f"this run chose {pick}" in text) == (not agrees)


@pytest.mark.skipif(os.environ.get("ASELECT_FULL_DEMO") != "1", reason="the full demo forward: ASELECT_FULL_DEMO=1")
def test_full_demo_matches_the_readme(tmp_path, capsys):
    assert main(["demo", "--no-progress", "--out", str(tmp_path / "o")]) == 0
    assert "the README's example pick, as documented" in capsys.readouterr().out


def test_one_timestep_compares_without_a_runtime_warning():
    """With one t every rank correlation is NaN: the mean is NaN, without numpy's 'Mean of empty slice'."""
    import warnings

    import numpy as np

    from aselect_kernels.result import SelectionResult
    from aselect_kernels.scorers import Moments
    from aselect_kernels.validation.compare import compare
    from aselect_kernels.validation.grids import ProbeGrid

    acc = np.array([[0.5, 0.6]])
    m = Moments(np.ones((1, 2, 1), dtype=np.int64), acc[..., None], acc[..., None] ** 2,
                np.zeros((1, 2, 1), dtype=np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = compare(SelectionResult([0], ["a", "b"], ["s"], {"s": "max"}, m, "s"),
                      ProbeGrid([0], ["a", "b"], acc, "accuracy", 0.1, 10, 1.0))
    assert np.isnan(rep["tap_sets"]["all"]["scorers"]["s:max"]["mean_rho"])
