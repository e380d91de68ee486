"""Read the few-label picks against the committed grids and the confirmation grids (the plan in PLAN.md).

    python docs/validation/fewlabel/analyse.py CACHE docs/validation/fewlabel
    python docs/validation/fewlabel/analyse.py --markdown docs/validation/fewlabel   # RESULTS.md from results.json

Needs ``CACHE/pool_<dataset>.npz`` from capture.py; uses ``validation_<dataset>.json`` (committed grids, tap set
``mlp_hidden``) and, where present, ``confirm_grid_<dataset>.npz`` from confirm_grid.py.  Writes
``results.json`` and ``RESULTS.md`` to the output folder.  Gaps are in points against the grid's best cell (the
test split's best, re-scored on the confirmation images for the confirmation gap).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from aselect_kernels import fewlabel
from aselect_kernels.validation.compare import tap_sets
from aselect_kernels.validation.datasets import DATASETS

ROOT = Path(__file__).resolve().parents[1]
KS = (2, 5, 10, 20)
DRAWS = 10
FIXED_T = (25, 50, 100)
COMPARATORS = ("sf:max", "hfr:max", "token_var:max")


def grid(dataset: str) -> dict:
    """The committed grid on ``mlp_hidden``: timesteps, taps, accuracy ``[T, 6]`` in points, its best cell, cost."""
    val = json.loads((ROOT / f"validation_{dataset}.json").read_text())
    g = val["classification"]["grid"]
    taps = tap_sets(g["taps"])["mlp_hidden"]
    acc = 100 * np.asarray(g["metric"])[:, [g["taps"].index(t) for t in taps]]
    best = divmod(int(np.argmax(acc)), len(taps))
    return {"timesteps": g["timesteps"], "taps": taps, "acc": acc, "best": best, "val": val}


def confirmation(folder: Path, dataset: str, g: dict) -> dict | None:
    """Confirmation accuracy of each (t, tap) the confirmation grid scored, in points, and its image count."""
    path = folder / f"confirm_grid_{dataset}.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        ts, taps, correct = z["timesteps"].tolist(), z["taps"].tolist(), z["correct"]
    acc = {(t, tap): 100 * float(correct[i, j].mean()) for i, t in enumerate(ts) for j, tap in enumerate(taps)}
    return {"acc": acc, "n": int(correct.shape[-1]), "timesteps": ts, "taps": taps}


def gaps(cell: tuple[int, int], g: dict, conf: dict | None) -> dict:
    """Test-split and confirmation gaps of one cell (index pair into the committed grid)."""
    ti, p = cell
    out = {"t": g["timesteps"][ti], "tap": g["taps"][p], "test": float(g["acc"][g["best"]] - g["acc"][ti, p])}
    if conf is not None:
        best = (g["timesteps"][g["best"][0]], g["taps"][g["best"][1]])
        here = (out["t"], out["tap"])
        out["confirm"] = conf["acc"][best] - conf["acc"][here] if here in conf["acc"] else None
    return out


def few_label(pool: dict, g: dict, conf: dict | None) -> dict:
    """Every k and draw: the pick of each criterion, its gaps, its bootstrap certainty, and the fitting time."""
    y_all, taps = pool["labels"], g["taps"]
    feats = np.stack([pool[f"means|{tap}"] for tap in taps], axis=2)  # [n, T, P, C]
    out: dict = {}
    pool_k = int(np.bincount(y_all).min())
    for k in (k for k in KS if k <= pool_k):  # k = the pool's size: the pool itself, one draw
        draws = [np.arange(len(y_all))] if k == pool_k else [
            fewlabel.draw_per_class(y_all, k, seed=d) for d in range(DRAWS)]
        rows = []
        for idx in draws:
            y = fewlabel.check_labels(y_all[idx], len(idx))
            start = time.perf_counter()
            cols = {name: fn(feats[idx].transpose(1, 2, 0, 3), y) for name, fn in
                    (("ridge_loo", fewlabel.ridge_loo_correct), ("ncm_loo", fewlabel.ncm_loo_correct))}
            cert = fewlabel.bootstrap(cols["ridge_loo"].reshape(-1, len(y)).T.astype(float))
            fit_s = time.perf_counter() - start
            row = {"fit_s": fit_s, "pick_share": cert.share, "tied": len(cert.tied),
                   "best_tied": int(np.ravel_multi_index(g["best"], g["acc"].shape)) in cert.tied}
            for name, c in cols.items():
                row[name] = gaps(divmod(int(np.argmax(c.mean(-1))), len(taps)), g, conf)
            rows.append(row)
        out[k] = rows
    return out


def fixed_rules(g: dict) -> dict[str, tuple[int, int]]:
    """``{rule: cell}``: the smallest t with the first block, and each t of :data:`FIXED_T` with each block."""
    rules = {"smallest t, block 0": (int(np.argmin(g["timesteps"])), 0)}
    for t in FIXED_T:
        for p in range(len(g["taps"])):
            rules[f"t={t}, block {p}"] = (g["timesteps"].index(t), p)
    return rules


def comparators(g: dict, conf: dict | None) -> dict:
    """The committed joint picks of the registered scorers, and every fixed rule."""
    rep = g["val"]["classification"]["tap_sets"]["mlp_hidden"]["scorers"]
    out = {}
    for key in COMPARATORS:
        j = rep[key]["joint"]
        out[key.split(":")[0]] = gaps((g["timesteps"].index(j["t"]), g["taps"].index(j["tap"])), g, conf)
    for rule, cell in fixed_rules(g).items():
        out[rule] = gaps(cell, g, conf)
    return out


def leave_one_out(per: dict) -> dict:
    """For each benchmark, the fixed rule with the smallest mean test gap over the other benchmarks."""
    names = list(per)
    rules = [r for r in per[names[0]]["comparators"] if r.startswith(("smallest", "t="))]
    out = {}
    for d in names:
        others = [o for o in names if o != d]
        mean = {r: np.mean([per[o]["comparators"][r]["test"] for o in others]) for r in rules}
        rule = min(rules, key=lambda r: (mean[r], rules.index(r)))
        out[d] = {"rule": rule, **per[d]["comparators"][rule]}
    return out


def summarise(rows: list[dict], name: str, split: str) -> dict:
    vals = [r[name].get(split) for r in rows]
    known = [v for v in vals if v is not None]
    return {"mean": float(np.mean(known)) if known else None, "worst": float(np.max(known)) if known else None,
            "draws": len(vals), "scored": len(known)}


def main(cache: Path, folder: Path) -> None:
    per = {}
    for d in DATASETS:
        path = cache / f"pool_{d}.npz"
        if not path.is_file():
            continue
        with np.load(path) as z:
            pool = {k: z[k] for k in z.files}
        g = grid(d)
        assert pool["timesteps"].tolist() == g["timesteps"]
        conf = confirmation(folder, d, g)
        fl = few_label(pool, g, conf)
        c = g["val"]["cost"]
        n_t = len(g["timesteps"])
        per[d] = {
            "grid_best": gaps(g["best"], g, conf) | {"accuracy": float(g["acc"][g["best"]])},
            "confirm_images": conf["n"] if conf else None,
            "few_label": {k: {"ridge_loo": {s: summarise(rows, "ridge_loo", s) for s in ("test", "confirm")},
                              "ncm_loo": {s: summarise(rows, "ncm_loo", s) for s in ("test", "confirm")},
                              "pick_share_mean": float(np.mean([r["pick_share"] for r in rows])),
                              "tied_mean": float(np.mean([r["tied"] for r in rows])),
                              "best_tied_share": float(np.mean([r["best_tied"] for r in rows])),
                              "fit_s_mean": float(np.mean([r["fit_s"] for r in rows])), "draws": rows}
                          for k, rows in fl.items()},
            "comparators": comparators(g, conf),
            "cost": {"grid_forward_samples": c["grid_forward_samples"], "grid_wall_s": c["grid_wall_s"],
                     "forward_samples": {k: 10 * k * n_t for k in KS}, "pool_samples": int(pool["samples"]),
                     "pool_forward_s": float(pool["forward_s"]), "pool_wall_s": float(pool["wall_s"]),
                     "pool_fit_s": float(pool["fit_s"])},
        }
    lodo = leave_one_out(per) if len(per) > 1 else {}
    for d, row in lodo.items():
        per[d]["best_fixed_rule_lodo"] = row
    (folder / "results.json").write_text(json.dumps(per, indent=1))
    (folder / "RESULTS.md").write_text(markdown(per))
    print(markdown(per))


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def lead(per: dict) -> str:
    """The section's lead paragraph, its figures read from ``per``."""
    def span(values: list) -> str:
        known = [v for v in values if v is not None]
        return f"{min(known):.2f} to {max(known):.2f}" if known else "not measured"

    names = [d for d in per if 10 in per[d]["few_label"]]
    test = [per[d]["few_label"][10]["ridge_loo"]["test"]["mean"] for d in names]
    conf = {d: per[d]["few_label"][10]["ridge_loo"]["confirm"]["mean"] for d in names}
    conf = {d: v for d, v in conf.items() if v is not None}
    sf = [per[d]["comparators"]["sf"]["test"] for d in names]
    ratio = [per[d]["cost"]["grid_forward_samples"] / per[d]["cost"]["forward_samples"][10] for d in names]
    misses = [d for d, v in conf.items() if v > 1.0]
    return (f"With 10 labelled images per class, `select_timestep(..., labels=y)` (`aselect select --labels`) picks "
            f"(t, tap) by ridge's leave-one-out accuracy on the run's own channel means. Over {len(names)} benchmarks "
            f"({', '.join(names)}) its mean gap to the grid's best `mlp_hidden` cell on the committed test split is "
            f"{span(test)} points (the default `sf`: {span(sf)}); on the confirmation split "
            f"({', '.join(conf) or 'none'}) {span(list(conf.values()))}"
            + (f"; the 1-point target is missed on {', '.join(misses)}" if misses else "")
            + f". It needs {span(ratio)}x fewer forward samples than the grid (target 20x).")


def markdown(per: dict) -> str:
    names = list(per)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
    out = ["# Few-label selection: measured", "", lead(per), "",
           "Embedded Fashion-MNIST DiT (small), CPU. Gaps in points to the committed grid's best `mlp_hidden` cell; "
           "mean over draws (worst draw in brackets); k labelled images per class, 10 draws for each k below the "
           "pool's size per class, one (the pool) at its size. \"–\": not scored (no confirmation split, or the "
           "pick's t is outside the confirmation grid); \"not run\": k above the pool's size.", "",
           "Pool per class: " + ", ".join(f"{d} {max(per[d]['few_label'])}" for d in names) + ".", ""]
    for split, title in (("test", "committed test split"), ("confirm", "confirmation split")):
        for crit in ("ridge_loo", "ncm_loo"):
            out += [f"## `{crit}`, {title}", "", head]
            for k in KS:
                cells = []
                for d in names:
                    if k not in per[d]["few_label"]:
                        cells.append("not run")
                        continue
                    s = per[d]["few_label"][k][crit][split]
                    part = "" if s["scored"] == s["draws"] else f", {s['scored']}/{s['draws']} draws scored"
                    cells.append(f"{_f(s['mean'])} ({_f(s['worst'])}{part})")
                out.append(f"| k = {k} | " + " | ".join(cells) + " |")
            out.append("")
    out += ["## Beside the label-free scorers and the fixed rules (test / confirmation)", "", head]
    rows = {"ridge_loo, k = 10 (mean)": lambda d: (per[d]["few_label"][10]["ridge_loo"]["test"]["mean"],
                                                 per[d]["few_label"][10]["ridge_loo"]["confirm"]["mean"])}
    for key in ("sf", "hfr", "token_var", "smallest t, block 0"):
        rows[key] = lambda d, key=key: (per[d]["comparators"][key]["test"], per[d]["comparators"][key].get("confirm"))
    if all("best_fixed_rule_lodo" in per[d] for d in names):
        rows["best fixed rule, leave-one-dataset-out"] = lambda d: (per[d]["best_fixed_rule_lodo"]["test"],
                                                                   per[d]["best_fixed_rule_lodo"].get("confirm"))
    for label, fn in rows.items():
        out.append(f"| {label} | " + " | ".join(f"{_f(fn(d)[0])} / {_f(fn(d)[1])}" for d in names) + " |")
    if all("best_fixed_rule_lodo" in per[d] for d in names):
        out += ["", "Leave-one-dataset-out rule per benchmark: " + "; ".join(
            f"{d}: {per[d]['best_fixed_rule_lodo']['rule']}" for d in names) + "."]
    out += ["", "## Certainty (ridge_loo, bootstrap over the labelled images, 1000 resamples)", "", head]
    for k in KS:
        out.append(f"| k = {k} | " + " | ".join("not run" if k not in per[d]["few_label"] else
            f"{100 * per[d]['few_label'][k]['pick_share_mean']:.0f}% same pick, "
            f"{per[d]['few_label'][k]['tied_mean']:.1f} tied, grid best tied in "
            f"{100 * per[d]['few_label'][k]['best_tied_share']:.0f}%" for d in names) + " |")
    out += ["", "## Cost", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    cost = {"grid forward samples": lambda c: f"{c['grid_forward_samples']}",
            "forward samples, k = 10": lambda c: f"{c['forward_samples'][10]}",
            "ratio, k = 10": lambda c: f"{c['grid_forward_samples'] / c['forward_samples'][10]:.1f}x",
            "grid wall s (committed run)": lambda c: f"{c['grid_wall_s']:.0f}",
            "pool's selection samples": lambda c: f"{c['pool_samples']}",
            "pool's selection wall s (forward s)": lambda c: f"{c['pool_wall_s']:.0f} ({c['pool_forward_s']:.0f})",
            "pool's criteria + bootstrap s": lambda c: f"{c['pool_fit_s']:.2f}"}
    for label, fn in cost.items():
        out.append(f"| {label} | " + " | ".join(fn(per[d]["cost"]) for d in names) + " |")
    out.append("| criteria + bootstrap s, k = 10 (mean) | " + " | ".join(
        f"{per[d]['few_label'][10]['fit_s_mean']:.2f}" for d in names) + " |")
    return "\n".join(out) + "\n"


def rewrite(folder: Path) -> None:
    """RESULTS.md again from ``results.json`` (no recomputation)."""
    per = json.loads((folder / "results.json").read_text())
    for row in per.values():
        row["few_label"] = {int(k): v for k, v in row["few_label"].items()}
    (folder / "RESULTS.md").write_text(markdown(per))


if __name__ == "__main__":
    if sys.argv[1] == "--markdown":
        rewrite(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
