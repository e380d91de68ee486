"""The compute of selection against the exhaustive probe grid on a GPU: ``aselect validate``'s two sides, timed.

``python bench/gpu_validate.py --out DIR [--dataset fashion] [--single-cells 20] [--smoke]``

On the embedded model (fp32, CUDA) and the shipped Fashion-MNIST images, at ``aselect validate``'s defaults
(1000 train / 1000 test images for the grid, 64 for selection, the 22 timesteps of ``VALIDATION_TIMESTEPS``,
all 30 taps), in this order:

1. ``selection_cold``: the first ``select_timestep`` call of the process, so it includes the Triton JIT of the
   fused kernel (what a user's first call pays);
2. ``selection_warm``: the same call again (kernels compiled and cached);
3. ``grid``: :func:`~aselect_kernels.validation.run.probe_grid`, the features of 2000 images at every (t, tap) and a
   logistic-regression probe per cell, all cells fitted together on the GPU (batched L-BFGS); its progress (fits
   done, seconds) is saved as it goes, so a run cut short still says how far it got;
4. ``dense_grid``: :func:`~aselect_kernels.validation.run.dense_probe_grid` on 100 + 100 images at the block outputs,
   batched, as ``aselect validate`` runs it;
5. ``fits_side_by_side``: on the cells of two timesteps (``--side-timesteps``, 60 cells with all 30 taps), the
   batched fit of every cell and the one-at-a-time fit of the first ``--single-cells`` (the old path, about 0.76 s a
   fit on an H100), with their agreement (``bench/probe_fit.py``'s :func:`fit_both`);
6. the picks of :func:`~aselect_kernels.validation.run.compare` for the default scorer, and the wall-time ratios.

``DIR/gpu_validate.json`` is rewritten after every step.  Forward-sample counts are the same as on the CPU.
``--smoke`` runs every step on a tiny configuration (any device, CPU included) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_fit import fit_both  # noqa: E402

from aselect_kernels.embedded.model import load_embedded  # noqa: E402
from aselect_kernels.images import to_model_range  # noqa: E402
from aselect_kernels.select import capture_features, select_timestep  # noqa: E402
from aselect_kernels.validation.compare import compare, tap_sets  # noqa: E402
from aselect_kernels.validation.datasets import VALIDATION_TIMESTEPS, load_dataset  # noqa: E402
from aselect_kernels.validation.grids import dense_probe_grid, probe_grid  # noqa: E402
from aselect_kernels.validation.probe import dense_target  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion", choices=("fashion", "digits"))
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=None, help="default: the dataset's DEFAULT_N_TEST")
    parser.add_argument("--n-select", type=int, default=64)
    parser.add_argument("--timesteps", default=VALIDATION_TIMESTEPS)
    parser.add_argument("--taps", default="all")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--side-timesteps", default="0,100", help="timesteps of the side-by-side fit comparison")
    parser.add_argument("--single-cells", type=int, default=20, help="cells fitted one at a time side by side")
    parser.add_argument("--n-dense", type=int, default=100, help="train and test images of the dense grid")
    parser.add_argument("--smoke", action="store_true", help="a tiny run of every step, to test the script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_train, args.n_test, args.n_select, args.n_dense = 40, 30, 8, 6
        args.timesteps, args.taps, args.side_timesteps, args.single_cells = "0,500", "block_out:2", "0", 2
    return args


class Validation:
    """The run's model, data and JSON report (``DIR/gpu_validate.json``, rewritten by :meth:`save`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.t_start = args, time.perf_counter()
        self.device = device = torch.device(args.device)
        args.out.mkdir(parents=True, exist_ok=True)
        self.path = args.out / "gpu_validate.json"
        self.res: dict = {"env": {"python": platform.python_version(), "torch": torch.__version__,
                                  "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                  "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                                  "tf32_cudnn": torch.backends.cudnn.allow_tf32},
                          "config": {k: str(v) for k, v in vars(args).items()}, "steps": {}}
        self.model = load_embedded(device=device)
        (self.utr, self.ytr), (self.ute, self.yte), self.k = load_dataset(args.dataset, args.n_train, args.n_test, 0)
        self.xtr = to_model_range(self.utr)[:, None].to(device)
        self.xte = to_model_range(self.ute)[:, None].to(device)
        self.res["config"]["n_test"] = len(self.yte)

    def save(self) -> None:
        self.res["elapsed_s"] = round(time.perf_counter() - self.t_start, 2)
        self.path.write_text(json.dumps(self.res, indent=1))

    def step(self, name: str, entry: dict) -> None:
        self.res["steps"][name] = entry
        print(f"{name}: {entry}", flush=True)
        self.save()


def run_selection(v: Validation):
    """Steps 1 and 2: the cold and the warm ``select_timestep`` call; returns the warm selection."""
    args, selection = v.args, None
    for step in ("selection_cold", "selection_warm"):
        _sync()
        start = time.perf_counter()
        selection = select_timestep(v.model, v.xtr[:args.n_select], args.timesteps, args.taps, progress=False)
        _sync()
        v.step(step, {"wall_s": round(time.perf_counter() - start, 4),
                      "forward_s": round(selection.meta["forward_s"], 4), "samples": selection.meta["samples"],
                      "chunk_size": selection.meta["chunk_size"], "backend": selection.meta["backend"]})
    return selection


def run_grid(v: Validation):
    """Step 3: the probe grid, its progress saved as it goes."""
    grid_start = time.perf_counter()
    v.res["steps"]["grid"] = {"done": 0, "total": None}

    def on_fit(done: int, total: int) -> None:
        v.res["steps"]["grid"].update(done=done, total=total, wall_s=round(time.perf_counter() - grid_start, 2))
        if done % 30 == 0 or done == total:
            print(f"grid: {done}/{total} fits, {v.res['steps']['grid']['wall_s']} s", flush=True)
            v.save()

    grid = probe_grid(v.model, (v.xtr, v.ytr), (v.xte, v.yte), v.args.timesteps, v.args.taps, v.k, progress=False,
                      on_fit=on_fit)
    v.step("grid", {**v.res["steps"]["grid"], "wall_s": round(grid.wall_s, 3),
                    "forward_samples": grid.forward_samples, "best_metric": float(grid.metric.max()),
                    "raw_pixel_floor": grid.floor, "fit": "batched"})
    return grid


def run_dense_grid(v: Validation, grid) -> None:
    """Step 4: the dense grid on the block outputs."""
    nd = v.args.n_dense
    dense_taps = tap_sets(grid.taps).get("block_out", grid.taps)
    _sync()
    dgrid = dense_probe_grid(v.model, (v.xtr[:nd], dense_target(v.utr[:nd], v.ytr[:nd])),
                             (v.xte[:nd], dense_target(v.ute[:nd], v.yte[:nd])), v.args.timesteps, dense_taps,
                             v.k + 1, progress=False)
    _sync()
    v.step("dense_grid", {"wall_s": round(dgrid.wall_s, 3), "cells": dgrid.metric.size,
                          "forward_samples": dgrid.forward_samples, "best_metric": float(dgrid.metric.max()),
                          "fit": "batched"})


def run_side_by_side(v: Validation) -> None:
    """Step 5: batched and one-at-a-time fits on the same cells."""
    feats, _ = capture_features(v.model, torch.cat([v.xtr, v.xte]), v.args.side_timesteps, v.args.taps,
                                progress=False)
    side = fit_both(feats, v.ytr, v.yte, v.k, v.device, v.args.single_cells)
    v.res["fits_side_by_side_cells"] = side["per_cell"]
    v.step("fits_side_by_side", {"wall_s": round(side["summary"]["batched_s"] + side["summary"]["single_s"], 3),
                                 **side["summary"]})


def record_picks(v: Validation, selection, grid) -> None:
    """Step 6: the default scorer's picks against the grid, and the wall-time ratios."""
    cls = compare(selection, grid, tap_sets(selection.taps))
    picks = {}
    for set_name, block in cls["tap_sets"].items():
        picks[set_name] = {"best": block["best"], **{key.replace(":", "_"): block["scorers"][key]["joint"]
                                                     for key in ("sf:max", "token_var:max") if key in block["scorers"]}}
    steps = v.res["steps"]
    warm, cold = steps["selection_warm"]["wall_s"], steps["selection_cold"]["wall_s"]
    v.res["ratios"] = {"wall_warm": grid.wall_s / warm, "wall_cold": grid.wall_s / cold,
                       "forward": grid.forward_samples / steps["selection_warm"]["samples"]}
    v.res["picks"] = picks
    v.save()
    print(json.dumps({"ratios": v.res["ratios"], "picks": picks}, indent=1))


def main(argv: list[str] | None = None) -> int:
    v = Validation(parse_args(argv))
    selection = run_selection(v)
    grid = run_grid(v)
    run_dense_grid(v, grid)
    run_side_by_side(v)
    record_picks(v, selection, grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
