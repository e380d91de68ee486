"""The probe grid's fits, batched vs one at a time, on the same cells: wall time and agreement.

``python bench/probe_fit.py --out DIR [--timesteps 0,100] [--taps all] [--cells 5] [--rounds 2] [--threads N]``

Features of the embedded model on the shipped Fashion-MNIST images (1000 train / 1000 test, as ``aselect validate``)
are captured once for the given timesteps and taps (kept in ``DIR/features.pt`` for a rerun); every (t, tap) is a
cell.  Then, ``--rounds`` times and alternating which goes first (so both see the same machine load): the batched
fit of all cells, and the one-at-a-time fit of ``--cells`` of them with the grid's mix of tap widths (every cell
when 0).  ``DIR/probe_fit.json`` gets the times, the per-cell rate of each path, their agreement on the cells both
fitted (test predictions, accuracy, probabilities, logits), and each solution's largest gradient entry on a few
cells (how close to the optimum it stopped).  :func:`fit_both` is reused by the GPU script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aselect_kernels.validation.logistic import _loss_grad  # noqa: E402
from aselect_kernels.validation.probe import L2, probe_logits, standardize  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def grad_max(train: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Largest entry of the probe objective's gradient at ``(w, b)``: 0 at the optimum."""
    x = torch.cat([train, torch.ones(train.shape[0], 1, dtype=train.dtype, device=train.device)], 1)[None]
    theta = torch.cat([w, b[None]], 0)[None]
    onehot = torch.nn.functional.one_hot(y.to(train.device), k).to(train.dtype)[None]
    _, g = _loss_grad(x, theta, onehot, L2)
    assert g is not None
    return float(g.abs().max())


def same_mix(widths: list[int], count: int, seed: int = 0) -> list[int]:
    """``count`` cell indices (all when ``count <= 0``) with the widths in the same proportions as the whole grid
    (at least one of each width), seeded, so per-cell rates of a subset and of the grid compare."""
    if count <= 0 or count >= len(widths):
        return list(range(len(widths)))
    gen = torch.Generator().manual_seed(seed)
    picked: list[int] = []
    for d in sorted(set(widths)):
        group = [i for i, w in enumerate(widths) if w == d]
        take = max(1, round(count * len(group) / len(widths)))
        picked += [group[int(j)] for j in torch.randperm(len(group), generator=gen)[:take]]
    return sorted(picked)


def fit_both(feats: dict[str, torch.Tensor], ytr: torch.Tensor, yte: torch.Tensor, k: int, device: torch.device,
             n_single: int, single_first: bool = False, memory_budget: int | None = None) -> dict:
    """Time the batched fit of every cell of ``feats`` (``{tap: [N_train + N_test, T, C]}``) and the one-at-a-time
    fit of ``n_single`` of them with the grid's mix of widths (:func:`same_mix`; ``single_first``: in that
    order); compare them on those cells."""
    names = list(feats)
    n = ytr.shape[0]
    cells = [(p, ti) for p in range(len(names)) for ti in range(feats[names[0]].shape[1])]
    widths = [feats[names[p]].shape[-1] for p, _ in cells]

    def load(p: int, ti: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = feats[names[p]][:, ti].to(device, torch.float64)
        tr, te = standardize(f[:n], f[n:])
        return tr, te

    loaders = [lambda c=c: load(*c) for c in cells]
    rows = n + yte.shape[0]
    ytr_d = ytr.to(device)

    def run(batched: bool, which: list[int]) -> tuple[float, list[torch.Tensor]]:
        _sync()
        start = time.perf_counter()
        out: list[torch.Tensor] = [torch.empty(0)] * len(which)
        for i, logits in probe_logits([loaders[j] for j in which], [widths[j] for j in which], rows, ytr_d, k,
                                      batched=batched, memory_budget=memory_budget):
            out[i] = logits
        _sync()
        return time.perf_counter() - start, out

    single = same_mix(widths, n_single)
    single_n = len(single)
    if single_first:
        t_single, single_logits = run(False, single)
    t_batch, batch_logits = run(True, list(range(len(cells))))
    if not single_first:
        t_single, single_logits = run(False, single)
    agree = []
    for i, j in enumerate(single):
        a, b = batch_logits[j], single_logits[i]
        pa, pb = torch.softmax(a, 1), torch.softmax(b, 1)
        acc_a = float((a.argmax(1).cpu() == yte).double().mean())
        acc_b = float((b.argmax(1).cpu() == yte).double().mean())
        agree.append({"cell": [names[cells[j][0]], cells[j][1]], "width": widths[j], "acc_batched": acc_a,
                      "acc_single": acc_b,
                      "pred_differ": int((a.argmax(1) != b.argmax(1)).sum()),
                      "max_abs_prob_diff": float((pa - pb).abs().max()),
                      "max_abs_logit_diff": float((a - b).abs().max())})
    summary = {
        "single_first": single_first, "cells": len(cells), "single_cells": single_n,
        "batched_s": round(t_batch, 3), "batched_s_per_cell": t_batch / len(cells),
        "single_s": round(t_single, 3), "single_s_per_cell": t_single / single_n,
        "speedup_per_cell": (t_single / single_n) / (t_batch / len(cells)),
        "max_acc_diff_points": 100 * max(abs(r["acc_batched"] - r["acc_single"]) for r in agree),
        "pred_differ_total": sum(r["pred_differ"] for r in agree), "test_predictions": single_n * yte.shape[0],
        "max_abs_prob_diff": max(r["max_abs_prob_diff"] for r in agree),
        "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in agree),
    }
    return {"summary": summary, "per_cell": agree}


def convergence(feats: dict[str, torch.Tensor], ytr: torch.Tensor, k: int, device: torch.device, count: int,
                ) -> dict:
    """Largest gradient entry at the batched and the one-at-a-time solutions of the first ``count`` cells."""
    from aselect_kernels.validation.logistic import fit_padded
    from aselect_kernels.validation.probe import fit_logistic

    names, n = list(feats), ytr.shape[0]
    cells = [(p, ti) for p in range(len(names)) for ti in range(feats[names[0]].shape[1])][:count]
    trains = [standardize(feats[names[p]][:n, ti].to(device, torch.float64))[0] for p, ti in cells]
    batched = fit_padded(trains, ytr.to(device), k, L2, 200)
    gb = [grad_max(x, ytr, w, b, k) for x, (w, b) in zip(trains, batched, strict=True)]
    gs = [grad_max(x, ytr, *fit_logistic(x, ytr, k), k) for x in trains]
    return {"cells": count, "grad_max_batched": max(gb), "grad_max_single": max(gs),
            "grad_median_batched": sorted(gb)[len(gb) // 2], "grad_median_single": sorted(gs)[len(gs) // 2]}


def main(argv: list[str] | None = None) -> int:
    from aselect_kernels.embedded.model import load_embedded
    from aselect_kernels.images import to_model_range
    from aselect_kernels.select import capture_features
    from aselect_kernels.validation.datasets import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timesteps", default="0,100")
    parser.add_argument("--taps", default="all")
    parser.add_argument("--cells", type=int, default=5, help="cells fitted one at a time (0: all)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (utr, ytr), (ute, yte), k = load_dataset("fashion", 1000, 1000)
    model = load_embedded(device=device)
    start = time.perf_counter()
    cache = args.out / "features.pt"  # reused by a rerun with the same timesteps and taps
    saved = torch.load(cache) if cache.is_file() else None
    if saved is not None and saved["key"] == [args.timesteps, args.taps]:
        feats = saved["feats"]
    else:
        x = to_model_range(torch.cat([utr, ute]))[:, None].to(device)
        feats, _ = capture_features(model, x, args.timesteps, args.taps, progress=False)
        torch.save({"key": [args.timesteps, args.taps], "feats": feats}, cache)
    res: dict = {"env": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                         "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                         "loadavg_start": os.getloadavg()},
                 "config": {k_: str(v) for k_, v in vars(args).items()},
                 "features_s": round(time.perf_counter() - start, 1), "rounds": []}
    path = args.out / "probe_fit.json"
    for r in range(args.rounds):
        res["rounds"].append(fit_both(feats, ytr, yte, k, device, args.cells, single_first=r % 2 == 1))
        res["rounds"][-1]["loadavg"] = os.getloadavg()
        print(json.dumps(res["rounds"][-1]["summary"]), flush=True)
        path.write_text(json.dumps(res, indent=1))
    res["convergence"] = convergence(feats, ytr, k, device, min(args.cells or 8, 8))
    res["env"]["loadavg_end"] = os.getloadavg()
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["convergence"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
