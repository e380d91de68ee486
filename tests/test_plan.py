"""The plan before the forward: one line per forward, a time estimate after its first chunk, ``--dry-run`` that
stops before the forward, and costly grids refused without ``--yes``."""

from __future__ import annotations

import math

import pytest
import torch

from aselect_kernels import forward, models
from aselect_kernels.cli import main
from aselect_kernels.noise import Noiser
from aselect_kernels.plan import SAMPLES_LIMIT, CommandPlan, CostRefused, RunPlan, check_cost, plan_line, watch_runs

from tiny_models import select_folder, tiny_dit

MANY = 40  # images: 40 x 500 timesteps is the limit

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return select_folder(tmp_path_factory.mktemp("plan"), many=MANY)


def argv(world, out, *extra):
    return ["select", "--model", str(world / "dit"), "--images", str(world / "images.npz"), "--taps", "query:0",
            "--backend", "torch", "--no-progress", "--out", str(out), *extra]


class Recorder:
    def __init__(self):
        self.plans, self.chunks = [], []

    def planned(self, plan):
        self.plans.append(plan)

    def chunk_done(self, plan, done, elapsed_s):
        self.chunks.append((plan.label, done))


def test_each_forward_reports_its_plan_and_every_chunk():
    """The plan's chunk count equals the chunks the run then reports, for several chunk sizes."""
    net = tiny_dit()
    images = torch.randn(3, 1, 12, 12)
    for chunk in (1, 2, 4, 6, 50):
        seen = Recorder()
        with watch_runs(seen):
            info = forward.run_multi_timestep(net, images, [0, 500], Noiser("ddpm"), chunk_size=chunk,
                                              progress=False, label="x")
        (plan,) = seen.plans
        assert plan.chunks == info.chunks == math.ceil(6 / chunk) and plan.samples == plan.rank_samples == 6
        assert seen.chunks == [("x", k) for k in range(1, plan.chunks + 1)]


def test_select_prints_a_plan_per_draw_and_the_estimate(world, tmp_path, capsys):
    assert main(argv(world, tmp_path / "o", "--timesteps", "0,500", "--chunk-size", "4")) == 0
    lines = capsys.readouterr().out.splitlines()
    plans = [line for line in lines if line.startswith("plan:")]
    assert plans == ["plan: scored forward, draw 1 of 2: 6 samples in 2 chunks of 4",
                     "plan: scored forward, draw 2 of 2 (channel means): 6 samples in 2 chunks of 4"]
    assert sum("first chunk" in line and "for the 2 chunks" in line for line in lines) == 2
    one_draw = argv(world, tmp_path / "o", "--timesteps", "0,500", "--scorer", "token_var")
    assert main(one_draw) == 0
    plans = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan:")]
    assert plans == ["plan: scored forward: 6 samples in 1 chunk of 6"]


def test_dry_run_prints_the_plan_and_runs_nothing(world, tmp_path, capsys, monkeypatch):
    calls = []
    real = forward.default_call

    def counted(net, x_t, *args):
        calls.append(x_t.shape[0])
        return real(net, x_t, *args)

    monkeypatch.setattr(forward, "default_call", counted)
    out = tmp_path / "o"
    assert main(argv(world, out, "--timesteps", "0:1000:1", "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "plan: scored forward, draw 1 of 2: 3,000 samples in " in text and "dry run" in text
    assert calls == [1] and not out.exists()  # only the one-sample probe that sizes the chunks


@pytest.mark.parametrize("n_t,refused", [(SAMPLES_LIMIT // MANY, False), (SAMPLES_LIMIT // MANY + 1, True)])
def test_costly_grid_needs_yes_before_the_model_loads(world, tmp_path, capsys, monkeypatch, n_t, refused):
    """MANY images x n_t timesteps: refused above the limit (stating the cost) and before the model loads."""
    loaded = []

    def load(*args, **kwargs):
        loaded.append(1)
        raise RuntimeError("model loaded")

    monkeypatch.setattr(models, "load_model", load)
    command = argv(world, tmp_path / "o", "--timesteps", f"0:{n_t}:1")
    command[command.index("--images") + 1] = str(world / "many.npz")
    rc = main(command)
    err = capsys.readouterr().err
    assert rc == 2
    if refused:
        samples = MANY * n_t
        assert f"{samples:,} samples per draw x 2 draws = {2 * samples:,} forward samples" in err and "--yes" in err
        assert not loaded
    else:
        assert "model loaded" in err and loaded
    assert main([*command, "--yes"]) == 2 and "model loaded" in capsys.readouterr().err


def test_watcher_refuses_a_costly_forward_before_it_runs_unless_yes(monkeypatch):
    """The check at each forward's plan (probe and validate meet it there): refused before any chunk runs."""
    calls = []
    real = forward.default_call
    monkeypatch.setattr(forward, "default_call", lambda net, x_t, *a: calls.append(x_t.shape[0]) or real(net, x_t, *a))
    net, images = tiny_dit(), torch.randn(3, 1, 12, 12)
    with pytest.raises(CostRefused, match="6 samples per draw"), watch_runs(CommandPlan(limit=5)):
        forward.run_multi_timestep(net, images, [0, 500], Noiser("ddpm"), chunk_size=2, progress=False)
    assert calls == []
    with watch_runs(CommandPlan(yes=True, limit=5)):
        forward.run_multi_timestep(net, images, [0, 500], Noiser("ddpm"), chunk_size=2, progress=False)
    assert calls == [2, 2, 2]


def test_plan_line_under_several_ranks_keeps_global_and_per_rank_apart():
    plan = RunPlan("scored forward", samples=4000, rank_samples=1000, chunk_size=500, chunks=2, world_size=4)
    assert plan_line(plan) == ("plan: scored forward: 4,000 samples over 4 ranks; this rank 1,000 samples in "
                               "2 chunks of 500")


def test_check_cost_boundary():
    check_cost(SAMPLES_LIMIT, 2, yes=False)
    check_cost(SAMPLES_LIMIT + 1, 2, yes=True)
    with pytest.raises(CostRefused, match=f"{SAMPLES_LIMIT + 1:,} samples per draw"):
        check_cost(SAMPLES_LIMIT + 1, 1, yes=False)
