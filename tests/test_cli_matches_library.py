"""The command line's success paths against the library: each option's result.json equals a direct
``select_timestep`` call with the same arguments (``validate --candidates``: in test_cli.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aselect_kernels.cli import main
from aselect_kernels.forward import Conditioning
from aselect_kernels.images import load_images
from aselect_kernels.models import load_model
from aselect_kernels.reference import StatsConfig
from aselect_kernels.result import SelectionResult
from aselect_kernels.select import select_timestep

from tiny_models import tiny_dit

TIMESTEPS = "0,300,900"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_lib")
    tiny_dit(sample=12).save_pretrained(root / "dit")
    rng = np.random.default_rng(3)
    np.savez(root / "images.npz", images=rng.integers(0, 256, (3, 12, 12), dtype=np.uint8),
             labels=np.array([7, 0, 4]))
    return root


def assert_same(cli_json, direct: SelectionResult) -> None:
    """Axes, choices, the run's shape and every moment, exactly."""
    back = SelectionResult.from_json(cli_json)
    data = json.loads(cli_json.read_text())
    assert (back.timesteps, back.taps, back.scorers, back.directions, back.primary) == (
        direct.timesteps, direct.taps, direct.scorers, direct.directions, direct.primary)
    for field in ("count", "total", "total_sq", "flagged"):
        np.testing.assert_array_equal(getattr(back.moments, field), getattr(direct.moments, field), err_msg=field)
    assert back.best() == direct.best() and back.best_t_per_tap() == direct.best_t_per_tap()
    for key in ("samples", "chunks", "chunk_size", "noise", "cutoff", "hfr_dims", "backend", "images", "seed"):
        assert data["meta"][key] == direct.meta[key], key


CASES = [
    (["--hfr-dims", "2", "--cutoff", "0.3"], {"config": StatsConfig(cutoff=0.3, hfr_dims=2)}),
    (["--backend", "triton"], {"backend": "triton"}),
    (["--backend", "matmul"], {"backend": "matmul"}),
    (["--backend", "torch"], {"backend": "torch"}),
    (["--chunk-size", "4"], {"chunk_size": 4}),
    (["--memory-budget-mb", "0.05"], {"memory_budget": int(0.05 * 2**20)}),
    (["--direction", "min", "--scorer", "hfr"], {"direction": "min", "scorer": "hfr"}),
    (["--noise", "flow"], {"noise": "flow"}),
    (["--use-labels", "--seed", "5"], {"labels": True, "seed": 5}),
    (["--limit", "2", "--taps", "all:1"], {"limit": 2, "taps": "all:1"}),
]


@pytest.mark.filterwarnings("ignore::aselect_kernels.frequency.CutoffWarning")  # a 6 x 6 grid is small
@pytest.mark.parametrize("argv,kwargs", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_select_result_equals_the_library(files, tmp_path, capsys, argv, kwargs):
    out = tmp_path / "out"
    rc = main(["select", "--model", str(files / "dit"), "--images", str(files / "images.npz"), "--timesteps",
               TIMESTEPS, "--taps", "query:0,1", "--out", str(out), "--no-progress", *argv])
    assert rc == 0, capsys.readouterr().err
    kwargs = dict(kwargs)
    images, labels = load_images(files / "images.npz")
    limit = kwargs.pop("limit", None)
    images, labels = images[:limit], labels[:limit]
    cond = Conditioning(class_labels=labels if kwargs.pop("labels", False) else None)
    kwargs.setdefault("taps", "query:0,1")
    direct = select_timestep(load_model(str(files / "dit")), images, TIMESTEPS, conditioning=cond,
                             progress=False, **kwargs)
    assert_same(out / "result.json", direct)
    if "memory_budget" in kwargs:
        assert direct.meta["chunks"] > 1  # the budget did split the run
    if cond.class_labels is not None:  # and the labels did condition it
        unconditional = select_timestep(load_model(str(files / "dit")), images, TIMESTEPS, progress=False,
                                        **{k: v for k, v in kwargs.items()})
        assert not np.array_equal(unconditional.moments.total, direct.moments.total)
