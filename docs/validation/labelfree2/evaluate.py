"""The pre-registered second round of label-free candidates (PLAN.md beside this file), on seven benchmarks.

    OMP_NUM_THREADS=1 PYTHONPATH=. python3 docs/validation/labelfree2/evaluate.py [CACHE_FOLDER]

Captures (cached in CACHE_FOLDER, default runs/labelfree2) the pooled ``mlp_hidden`` features of 256 inputs per
benchmark (two noise draws of the 64 selection images, then a shifted and a flipped view) and the x0 disagreement
per t; scores the candidates; reads gaps off the grids; writes results.json and RESULTS.md here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from aselect_kernels.embedded.model import load_embedded
from aselect_kernels.forward import default_call
from aselect_kernels.images import to_model_range
from aselect_kernels.noise import Noiser, parse_timesteps
from aselect_kernels.select import capture_features
from aselect_kernels.validation.datasets import DEFAULT_TIMESTEPS, VALIDATION_TIMESTEPS, load_dataset
from aselect_kernels.validation.invariance import (
    bootstrap_interval,
    denoised,
    linear_cka,
    lodo_gaps,
    plateau_pick,
    retrieval,
    retrieval_pick,
    threshold_pick,
    x0_disagreement,
)

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("fashion", "digits", "mnist", "fashion_noise", "digits_noise", "mnist_noise", "fashion_blur")
TAPS = [f"transformer_blocks.{i}.ff.net.0" for i in range(6)]
N = int(os.environ.get("LABELFREE2_N", 64))  # the selection images (64, as validate takes)
CKA_TOL, X0_LIMIT, LEVEL = 0.05, 0.5, 1 - 0.05 / 4
CANDIDATES = ("aug_retrieval", "cka_plateau", "x0_agree", "x0_threshold")
SCORERS = ("sf", "hfr", "token_var")


def views(u8: torch.Tensor) -> torch.Tensor:
    """[256, 1, 28, 28] model inputs: the images twice, shifted right by one pixel, flipped left-right."""
    shifted = torch.zeros_like(u8)
    shifted[:, :, 1:] = u8[:, :, :-1]
    return to_model_range(torch.cat([u8, u8, shifted, u8.flip(-1)]))[:, None]


def capture(name: str, cache: Path) -> dict[str, np.ndarray]:
    """``{tap: [256, T, C], "d": [T]}`` for one benchmark, from the cache or a fresh run (seed 0)."""
    path = cache / f"features_{name}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    (utr, _), _, _ = load_dataset(name)
    x = views(utr[:N])
    ts = parse_timesteps(DEFAULT_TIMESTEPS.get(name, VALIDATION_TIMESTEPS))
    n_t = len(ts)
    x0 = np.zeros((2 * N, n_t, 28 * 28))
    abar = Noiser("ddpm").scheduler.alphas_cumprod.double().numpy()
    t_index = {t: i for i, t in enumerate(ts)}

    def call(model, x_t, t_model, b, cond, n_images):
        out = default_call(model, x_t, t_model, b, cond, n_images)
        keep = b < 2 * N
        if not keep.any():
            return out
        t = t_model[keep].long().numpy()
        est = denoised(x_t[keep].numpy(), out.sample[keep].numpy(), abar[t])
        x0[b[keep].numpy(), [t_index[int(v)] for v in t]] = est.reshape(len(t), -1)
        return out

    feats, _ = capture_features(load_embedded(), x, ts, TAPS, seed=0, chunk_size=512, progress=False, call=call)
    d = np.array([x0_disagreement(x0[:N, i], x0[N:, i]) for i in range(n_t)])
    arrays = {k: v.numpy() for k, v in feats.items()} | {"d": d, "timesteps": np.asarray(ts)}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def picks(f: dict[str, np.ndarray]) -> tuple[dict[str, tuple[int, int]], dict]:
    """Each candidate's ``(t index, tap index)`` and the scores behind it."""
    n_t = len(f["timesteps"])
    acc, mar, cka = (np.zeros((n_t, len(TAPS))) for _ in range(3))
    for p, tap in enumerate(TAPS):
        a = f[tap].astype(np.float64)
        for i in range(n_t):
            acc[i, p], mar[i, p] = retrieval(a[2 * N:3 * N, i], a[3 * N:, i])
            cka[i, p] = linear_cka(a[:N, i], a[N:2 * N, i])
    tc = plateau_pick(cka.mean(1), CKA_TOL)
    chosen = {"aug_retrieval": retrieval_pick(acc, mar), "cka_plateau": (tc, int(cka[tc].argmax())),
              "x0_agree": (int(np.argmin(f["d"])), 0), "x0_threshold": (threshold_pick(f["d"], X0_LIMIT), 0)}
    scores = {"retrieval_accuracy": acc.round(4).tolist(), "retrieval_margin": mar.round(4).tolist(),
              "cka": cka.round(4).tolist(), "x0_disagreement": f["d"].round(4).tolist()}
    return chosen, scores


def grid_of(name: str) -> dict:
    path = HERE / f"validation_{name}.json" if name == "fashion_blur" else HERE.parent / f"validation_{name}.json"
    return json.loads(path.read_text())["classification"]


def evaluate(cache: Path) -> dict:
    out: dict = {"benchmarks": {}}
    rules = [("R0", 0, 0)] + [(f"t{t}_b{b}", t, b) for t in (25, 50, 100) for b in range(6)]
    rule_gaps = np.zeros((len(rules), len(BENCHMARKS)))
    for k, name in enumerate(BENCHMARKS):
        cls = grid_of(name)
        g = cls["grid"]
        ts, cols = g["timesteps"], [g["taps"].index(t) for t in TAPS]
        metric = 100.0 * np.asarray(g["metric"], np.float64)[:, cols]  # points
        best = metric.max()
        assert np.isclose(best, cls["tap_sets"]["mlp_hidden"]["best"]["metric"]), name
        chosen, scores = picks(capture(name, cache))
        gaps = {c: best - metric[chosen[c]] for c in CANDIDATES}
        sc = cls["tap_sets"]["mlp_hidden"]["scorers"]
        gaps.update({s: sc[f"{s}:max"]["joint"]["gap"] for s in SCORERS})
        for r, (_, t, b) in enumerate(rules):
            rule_gaps[r, k] = best - metric[ts.index(t) if t else 0, b]
        out["benchmarks"][name] = {"timesteps": ts, "best": best, "gaps": gaps, "scores": scores,
                                   "picks": {c: [ts[i], TAPS[p]] for c, (i, p) in chosen.items()}}
    chosen_rule, lodo = lodo_gaps(rule_gaps)
    out["fixed_rules"] = {name: rule_gaps[r].tolist() for r, (name, _, _) in enumerate(rules)}
    out["lodo"] = {"rule": [rules[r][0] for r in chosen_rule], "gap": lodo.tolist()}
    out["decision"] = {}
    for c in CANDIDATES + SCORERS:
        cand = np.array([out["benchmarks"][b]["gaps"][c] for b in BENCHMARKS])
        delta = cand - lodo
        lo, hi = bootstrap_interval(delta, LEVEL)
        out["decision"][c] = {"mean_delta": float(delta.mean()), "interval": [lo, hi], "level": LEVEL,
                              "beats": bool(delta.mean() < 0 and hi < 0)}
    return out


def table(out: dict) -> str:
    rows = list(CANDIDATES + SCORERS) + ["R0", "LODO fixed rule"]
    lines = ["| pick | " + " | ".join(BENCHMARKS) + " | mean | worst |", "|---" * (len(BENCHMARKS) + 3) + "|"]
    for r in rows:
        if r == "R0":
            g = out["fixed_rules"]["R0"]
        elif r == "LODO fixed rule":
            g = out["lodo"]["gap"]
        else:
            g = [out["benchmarks"][b]["gaps"][r] for b in BENCHMARKS]
        lines.append(f"| {r} | " + " | ".join(f"{v:.1f}" for v in g) + f" | {np.mean(g):.2f} | {np.max(g):.1f} |")
    return "\n".join(lines)


def results_md(out: dict) -> str:
    """RESULTS.md: the gap table, the LODO rules, the decision and each candidate's picks."""
    lines = ["# Label-free selection, second round: results", "",
             "Tables written by `evaluate.py`, notes by hand (PLAN.md holds the pre-registered definitions).  "
             "Embedded DiT (trained by the "
             "project on Fashion-MNIST), pooled `mlp_hidden` features of the 64 selection images, seed 0.", "",
             "## Gap to each grid's best `mlp_hidden` cell (accuracy points)", "", table(out), "",
             "## Leave-one-dataset-out fixed rule", "", "| benchmark | rule | gap |", "|---|---|---|"]
    lodo = zip(BENCHMARKS, out["lodo"]["rule"], out["lodo"]["gap"], strict=True)
    lines += [f"| {b} | {r} | {g:.1f} |" for b, r, g in lodo]
    lines += ["", f"## Decision (mean of candidate gap - LODO gap over the seven benchmarks, paired percentile "
              f"bootstrap over benchmarks at {LEVEL:.4f})", "", "| pick | mean delta | interval | beats |",
              "|---|---|---|---|"]
    for c, d in out["decision"].items():
        lo, hi = d["interval"]
        lines.append(f"| {c} | {d['mean_delta']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {'yes' if d['beats'] else 'no'} |")
    lines += ["", "## Picks (t, block of `mlp_hidden`)", "", "| pick | " + " | ".join(BENCHMARKS) + " |",
              "|---" * (len(BENCHMARKS) + 1) + "|"]
    for c in CANDIDATES:
        cells = [out["benchmarks"][b]["picks"][c] for b in BENCHMARKS]
        lines.append(f"| {c} | " + " | ".join(f"{t}, {tap.split('.')[1]}" for t, tap in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = evaluate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/labelfree2"))
    (HERE / "results.json").write_text(json.dumps(result, indent=1))
    md = HERE / "RESULTS.md"
    notes = md.read_text().partition("\n## Notes")[1:] if md.is_file() else ("", "")
    md.write_text(results_md(result) + "".join(notes))  # the hand-written notes are kept
    print(table(result))
    print(json.dumps(result["lodo"]), json.dumps(result["decision"], indent=1))
    print(json.dumps({b: v["picks"] for b, v in result["benchmarks"].items()}, indent=1))
