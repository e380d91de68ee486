"""Read every rule's picks against the committed grids and the confirmation grids (the plan in PLAN.md).

    python docs/validation/fewlabel/analyse.py CACHE docs/validation/fewlabel
    python docs/validation/fewlabel/analyse.py --markdown docs/validation/fewlabel   # RESULTS.md from results.json

Needs the cached runs of capture.py and repeat_label_free.py in ``CACHE``; uses ``validation_<dataset>.json``
(committed grids on the ``mlp_hidden`` taps, with their per-sample correctness) and, where present,
``confirm_grid_<dataset>.npz`` (confirm_grid.py).  A rule is a list of cells, one per draw; its gap on a split is
the grid's best cell (chosen on the test split) minus the rule's accuracy, in points, the rule's accuracy the mean
over its draws; intervals are 95 % paired bootstrap intervals over the split's images (the cells held fixed).
Writes ``results.json`` and ``RESULTS.md``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from picks import KS, LABEL_FREE, draws_of, few_label_cells, fixed_rules, grid, label_columns, label_free_cells, pools  # noqa: E402
from results_md import markdown, replace_section, validation_section  # noqa: E402

from aselect_kernels import fewlabel  # noqa: E402
from aselect_kernels.validation.compare import paired_bootstrap_ci  # noqa: E402
from aselect_kernels.validation.packed import grid_correct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The plan's six benchmarks (PLAN.md).
BENCHMARKS = ("fashion", "digits", "mnist", "fashion_noise", "digits_noise", "mnist_noise")
#: Rule-against-rule margins reported with intervals: (rule, against).
MARGINS = (("ridge_loo k=10", "sf"), ("ridge_loo k=10", "lodo"), ("lodo", "sf"), ("ridge_loo k=10", "ncm_loo k=10"))


def splits(folder: Path, dataset: str, g: dict) -> dict[str, dict]:
    """Per-sample correctness of the ``mlp_hidden`` cells on each split: ``{split: {"cells": {(ti, p): [n]}}}``."""
    out = {}
    cls = g["val"]["classification"]
    if "correct" in cls["grid"]:
        correct = grid_correct(cls)[0][:, [cls["grid"]["taps"].index(t) for t in g["taps"]]]
        out["test"] = {(ti, p): correct[ti, p] for ti in range(len(g["timesteps"])) for p in range(len(g["taps"]))}
    path = folder / f"confirm_grid_{dataset}.npz"
    if path.is_file():
        with np.load(path) as z:
            assert z["taps"].tolist() == g["taps"]
            out["confirm"] = {(g["timesteps"].index(t), p): z["correct"][i, p]
                              for i, t in enumerate(z["timesteps"].tolist()) for p in range(len(g["taps"]))}
    return {k: {"cells": v} for k, v in out.items()}


def rule_vector(cells: list[tuple[int, int]], split: dict) -> tuple[np.ndarray | None, int]:
    """The rule's per-sample correctness on the split (mean over the draws it scores) and how many it scores."""
    known = [split["cells"][c] for c in cells if c in split["cells"]]
    return (np.mean(known, axis=0) if known else None), len(known)


def read_rule(cells: list[tuple[int, int]], g: dict, sp: dict) -> dict:
    """Test-split gaps of every draw (from the committed metric) and the gap of each split with its interval."""
    draws = [float(g["acc"][g["best"]] - g["acc"][c]) for c in cells]
    row = {"cells": [[g["timesteps"][ti], g["taps"][p]] for ti, p in cells], "draw_gaps": draws,
           "test": {"gap": float(np.mean(draws)), "worst": max(draws), "spread": max(draws) - min(draws)}}
    for name, split in sp.items():
        vec, scored = rule_vector(cells, split)
        best = split["cells"].get(g["best"])
        entry = row.setdefault(name, {})
        entry["scored"] = scored
        if vec is None or best is None:
            continue
        each = [100 * float(best.mean() - split["cells"][c].mean()) for c in cells if c in split["cells"]]
        entry.update(gap=100 * float(best.mean() - vec.mean()), worst=max(each),
                     ci95=paired_bootstrap_ci(best, vec[None])[0].tolist(), n=int(vec.shape[0]))
    return row


def rule_cells(cache: Path, dataset: str, g: dict) -> tuple[dict[str, list], dict]:
    """``{rule: cells}`` of every rule on the benchmark, and the few-label runs' certainty and fitting times."""
    rules: dict[str, list] = {}
    extra: dict = {"certainty": {}, "fit_s": {}}
    caps = pools(cache, dataset)
    if 0 in caps:
        for k, rows in few_label_cells(caps[0], g["taps"]).items():
            for crit in ("ridge_loo", "ncm_loo"):
                rules[f"{crit} k={k}"] = [r[crit] for r in rows]
        extra["certainty"], extra["fit_s"] = certainty(caps[0], g)
    seeds = sorted(s for s in caps if s and int(np.bincount(caps[s]["labels"]).min()) == 10)
    if seeds and "ridge_loo k=10" in rules:
        extra_draws = [few_label_cells(caps[s], g["taps"])[10][0]["ridge_loo"] for s in seeds]
        rules["ridge_loo k=10, noise seeds"] = [rules["ridge_loo k=10"][0], *extra_draws]
        rules["ridge_loo k=10, all draws"] = rules["ridge_loo k=10"] + extra_draws
    lf = label_free_cells(cache, dataset, g)
    for s in LABEL_FREE:
        rules[s] = [lf[0][s]]
        rules[f"{s}, draws"] = [lf[seed][s] for seed in sorted(lf)]
    rules.update({rule: [cell] for rule, cell in fixed_rules(g).items()})
    return rules, extra


def certainty(pool: dict, g: dict) -> tuple[dict, dict]:
    """Per k: the bootstrap certainty of ridge_loo's pick over the labelled images, and the criteria's fitting time
    (both criteria and the bootstrap, per draw)."""
    cert, fit = {}, {}
    best = int(np.ravel_multi_index(g["best"], g["acc"].shape))
    for k, draws in draws_of(pool).items():
        rows = []
        for idx in draws:
            start = time.perf_counter()
            y, cols = label_columns(pool, g["taps"], idx)
            c = fewlabel.bootstrap(cols["ridge_loo"].reshape(-1, len(y)).T.astype(float))
            rows.append((time.perf_counter() - start, c.share, len(c.tied), best in c.tied))
        a = np.asarray(rows, dtype=float)
        cert[k] = {"pick_share": float(a[:, 1].mean()), "tied": float(a[:, 2].mean()),
                   "best_tied": float(a[:, 3].mean())}
        fit[k] = float(a[:, 0].mean())
    return cert, fit


def lodo(per: dict) -> None:
    """Add ``lodo``: for each benchmark the fixed rule with the smallest mean test gap over the other ones."""
    names = list(per)
    fixed = [r for r in per[names[0]]["rules"] if r.startswith(("smallest", "t="))]
    for d in names:
        others = [o for o in names if o != d]
        mean = {r: float(np.mean([per[o]["rules"][r]["test"]["gap"] for o in others])) for r in fixed}
        rule = min(fixed, key=lambda r: (mean[r], fixed.index(r)))
        per[d]["lodo_rule"] = rule
        per[d]["rules"]["lodo"] = {**per[d]["rules"][rule], "rule": rule, "others_mean_gap": mean[rule]}


def margins(per_cells: dict, sp: dict) -> dict:
    """Rule-against-rule margins (accuracy of the first minus the second, points) with intervals, on each split."""
    out = {}
    for a, b in MARGINS:
        if a not in per_cells or b not in per_cells:
            continue
        row = {}
        for name, split in sp.items():
            va, na = rule_vector(per_cells[a], split)
            vb, nb = rule_vector(per_cells[b], split)
            if va is None or vb is None:
                continue
            row[name] = {"margin": 100 * float(va.mean() - vb.mean()),
                         "ci95": paired_bootstrap_ci(va, vb[None])[0].tolist(), "scored": [na, nb]}
        out[f"{a} vs {b}"] = row
    return out


def cost(g: dict, caps: dict, extra: dict) -> dict:
    c, n_t = g["val"]["cost"], len(g["timesteps"])
    out = {"grid_forward_samples": c["grid_forward_samples"], "grid_wall_s": c["grid_wall_s"],
           "label_free_forward_samples": c["select_forward_samples"], "label_free_wall_s": c["select_wall_s"],
           "forward_samples": {k: 10 * k * n_t for k in KS}, "fit_s_per_draw": extra["fit_s"],
           "grid_rerun_wall_s": g["val"]["classification"]["grid"].get("per_sample_rerun", {}).get("wall_s")}
    for s, pool in caps.items():
        out[f"capture_s{s}"] = {"per_class": int(np.bincount(pool["labels"]).min()), "samples": int(pool["samples"]),
                                "forward_s": float(pool["forward_s"]), "wall_s": float(pool["wall_s"]),
                                "criteria_s": float(pool["fit_s"])}
    return out


def main(cache: Path, folder: Path) -> None:
    per, cells = {}, {}
    for d in BENCHMARKS:
        g = grid(d)
        sp = splits(folder, d, g)
        rules, extra = rule_cells(cache, d, g)
        cells[d] = rules
        per[d] = {"grid_best": {"t": g["timesteps"][g["best"][0]], "tap": g["taps"][g["best"][1]],
                                "test_accuracy": float(g["acc"][g["best"]]),
                                **({"confirm_accuracy": 100 * float(sp["confirm"]["cells"][g["best"]].mean()),
                                    "confirm_images": int(sp["confirm"]["cells"][g["best"]].shape[0])}
                                   if "confirm" in sp else {})},
                  "per_sample": sorted(sp), "rules": {r: read_rule(c, g, sp) for r, c in rules.items()},
                  "certainty": extra["certainty"], "cost": cost(g, pools(cache, d), extra)}
    lodo(per)
    for d in per:
        g = grid(d)
        cells[d]["lodo"] = cells[d][per[d]["lodo_rule"]]
        per[d]["margins"] = margins(cells[d], splits(folder, d, g))
    text = json.dumps(per, indent=1)
    per = json.loads(text)  # keys as written
    (folder / "results.json").write_text(text)
    (folder / "RESULTS.md").write_text(markdown(per))
    page = ROOT.parent / "VALIDATION.md"
    if folder.resolve() == Path(__file__).resolve().parent:  # the committed results: the page's headline too
        page.write_text(replace_section(page.read_text(), validation_section(per)))
    print(markdown(per))


if __name__ == "__main__":
    if sys.argv[1] == "--markdown":
        out = Path(sys.argv[2])
        (out / "RESULTS.md").write_text(markdown(json.loads((out / "results.json").read_text())))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
