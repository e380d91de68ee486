"""RESULTS.md from the analysis' results (``analyse.py``): the tables, their figures read from ``per``."""

from __future__ import annotations

KS = (2, 5, 10, 20)
#: The headline rows: (label, rule key).
HEADLINE = (("few labels: ridge_loo, k = 10 (mean of 10 draws)", "ridge_loo k=10"),
            ("few labels: ncm_loo, k = 10 (mean of 10 draws)", "ncm_loo k=10"),
            ("label-free default `sf`", "sf"), ("`hfr`", "hfr"), ("`token_var`", "token_var"),
            ("smallest t, block 0", "smallest t, block 0"),
            ("best fixed rule, leave-one-dataset-out", "lodo"))
SPREAD = (("`sf`", "sf, draws"), ("`hfr`", "hfr, draws"), ("`token_var`", "token_var, draws"),
          ("ridge_loo k = 10, noise seeds", "ridge_loo k=10, noise seeds"),
          ("ridge_loo k = 10, all draws", "ridge_loo k=10, all draws"))


NOTES = [
    "## Notes", "",
    "- Every run here used one thread (`OMP_NUM_THREADS=1`) on a 2-core CPU that another job shared at times; the "
    "committed grids' wall times were taken with 2 threads. The digits_noise 20/class pool ran beside a grid re-run.",
    "- An earlier round's 20/class captures of fashion_noise and mnist_noise took 1155 and 2502 s under heavy load "
    "from other jobs; the same captures take 31 and 26 s here (table above): the labelled path has no cost of its "
    "own beyond the forward.",
    "- The confirmation grids score every `mlp_hidden` tap at the timesteps named by the picks (PLAN.md, amendment "
    "1); a pick made after its benchmark's confirmation grid ran, outside those timesteps, is not confirmed.",
]


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _gap(entry: dict | None) -> str:
    """``gap [lo, hi]`` of one split, or why there is none."""
    if not entry or "gap" not in entry:
        return "–" if not entry or not entry.get("scored") else "no per-sample data"
    ci = entry.get("ci95")
    return f"{entry['gap']:.2f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def _table(names: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    out = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    return out + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]


def headline(per: dict, split: str) -> list[str]:
    """Gap of each headline rule on one split, with its interval and the draws scored where not all."""
    names = list(per)

    def cell(d: str, key: str) -> str:
        r = per[d]["rules"].get(key)
        if r is None:
            return "not run"
        e = r.get(split)
        text = _gap(e)
        if e and e.get("scored") is not None and e["scored"] < len(r["cells"]):
            text += f" ({e['scored']}/{len(r['cells'])} draws)"
        return text

    return _table(names, [(label, [cell(d, key) for d in names]) for label, key in HEADLINE])


def lead(per: dict) -> str:
    names = [d for d in per if "ridge_loo k=10" in per[d]["rules"]]
    conf = {d: per[d]["rules"]["ridge_loo k=10"].get("confirm", {}).get("gap") for d in names}
    conf = {d: v for d, v in conf.items() if v is not None}
    test = [per[d]["rules"]["ridge_loo k=10"]["test"]["gap"] for d in names]
    sf = [per[d]["rules"]["sf"]["test"]["gap"] for d in per]
    same = [d for d in per if per[d]["rules"]["sf"]["cells"] == per[d]["rules"]["smallest t, block 0"]["cells"]]
    misses = [f"{d} ({v:.2f})" for d, v in conf.items() if v > 1.0]
    ratios = [ratio(per[d]["cost"]) for d in names]
    text = (f"With 10 labelled images per class, ridge's leave-one-out accuracy (`select_timestep(..., labels=y)`) "
            f"picks a cell whose mean test-split gap to the grid's best `mlp_hidden` cell is {min(test):.2f} to "
            f"{max(test):.2f} points over {len(names)} benchmarks")
    if conf:
        text += (f"; on the confirmation split ({len(conf)} benchmarks) {min(conf.values()):.2f} to "
                 f"{max(conf.values()):.2f}" + (f" (target: at most 1 point on each; missed on {', '.join(misses)})"
                                                 if misses else " (target: at most 1 point on each; met)"))
    text += (f". The label-free default `sf` has test gaps {min(sf):.2f} to {max(sf):.2f} and picks the smallest t "
             f"with the first block on {len(same)} of {len(per)} benchmarks. Few-label selection at k = 10 runs "
             f"{min(ratios):.1f} to {max(ratios):.1f}x fewer forward samples than the grid (target 20x).")
    return text


def markdown(per: dict) -> str:
    names = list(per)
    k_keys = sorted({int(k) for d in per for k in per[d]["certainty"]})
    out = ["# Few-label selection beside the label-free scorers and the fixed rules: measured", "", lead(per), "",
           "Embedded Fashion-MNIST DiT (small), CPU, one thread per run. Gaps in points: accuracy of the committed "
           "grid's best `mlp_hidden` cell (chosen on the test split) minus the rule's accuracy (mean over its "
           "draws); brackets: 95 % paired bootstrap interval over the split's images (2000 resamples; the cells "
           "held fixed). \"–\": not measured (no confirmation split, or the pick's t is outside the confirmation "
           "grid).", ""]
    for split, title in (("test", "committed test split"), ("confirm", "confirmation split")):
        out += [f"## Gap on the {title}", "", *headline(per, split), ""]
    out += ["Leave-one-dataset-out fixed rule: " + "; ".join(
        f"{d}: {per[d]['lodo_rule']} (mean gap {per[d]['rules']['lodo']['others_mean_gap']:.2f} on the others)"
        for d in names) + ".", ""]
    out += ["## Margins between rules (accuracy of the first minus the second, points)", ""]
    keys = sorted({m for d in names for m in per[d]["margins"]})
    for split in ("test", "confirm"):
        rows = []
        for m in keys:
            cells = []
            for d in names:
                e = per[d]["margins"].get(m, {}).get(split)
                cells.append("–" if e is None else f"{e['margin']:.2f} [{e['ci95'][0]:.1f}, {e['ci95'][1]:.1f}]")
            rows.append((f"{m} ({split})", cells))
        out += _table(names, rows) + [""]
    for crit in ("ridge_loo", "ncm_loo"):
        for split in ("test", "confirm"):
            rows = []
            for k in KS:
                cells = []
                for d in names:
                    r = per[d]["rules"].get(f"{crit} k={k}")
                    e = r.get(split) if r else None
                    if r is None:
                        cells.append("not run")
                    elif not e or "gap" not in e:
                        cells.append("–")
                    else:
                        n = e.get("scored", len(r["cells"]))
                        part = "" if n == len(r["cells"]) else f", {n}/{len(r['cells'])} scored"
                        cells.append(f"{e['gap']:.2f} ({e['worst']:.2f}{part})")
                rows.append((f"k = {k}", cells))
            out += [f"## `{crit}` by k, {split} split: mean gap (worst draw)", "", *_table(names, rows), ""]
    out += ["## Repeated draws: test-split gap over draws, mean / worst / range", "",
            "Label-free: draw 0 is the committed selection (first `n_select` images, noise seed 0), draws 1 and 2 "
            "draw the images at random and seed the noise with the draw's seed. Few labels, noise seeds: one "
            "k = 10 draw per capture seed (0, 1, 2; the images and the noise seeded alike); all draws: those and "
            "the ten draws of the seed-0 pool.", ""]
    rows = []
    for label, key in SPREAD:
        cells = []
        for d in names:
            r = per[d]["rules"].get(key)
            cells.append("not run" if r is None else
                         f"{r['test']['gap']:.2f} / {r['test']['worst']:.2f} / {r['test']['spread']:.2f} "
                         f"({len(r['cells'])} draws)")
        rows.append((label, cells))
    out += _table(names, rows) + [""]
    out += ["## Certainty of ridge_loo's pick (bootstrap over the labelled images, 1000 resamples)", ""]
    rows = [(f"k = {k}", [("not run" if str(k) not in per[d]["certainty"] else
                           "{:.0f}% same pick, {:.1f} tied, grid best tied in {:.0f}%".format(
                               100 * per[d]["certainty"][str(k)]["pick_share"], per[d]["certainty"][str(k)]["tied"],
                               100 * per[d]["certainty"][str(k)]["best_tied"])) for d in names]) for k in k_keys]
    out += _table(names, rows) + ["", *cost_table(per), "", *NOTES]
    return "\n".join(out) + "\n"


def ratio(cost: dict) -> float:
    """The grid's forward samples over few-label selection's at k = 10."""
    return cost["grid_forward_samples"] / cost["forward_samples"]["10"]


def cost_table(per: dict) -> list[str]:
    names = list(per)

    def cap(d: str, field: str, per_class: int) -> str:
        runs = [v for k, v in per[d]["cost"].items() if k.startswith("capture_") and v["per_class"] == per_class]
        return "not run" if not runs else " / ".join(f"{r[field]:.{2 if field == 'criteria_s' else 0}f}" for r in runs)

    rows = [("grid forward samples", [str(per[d]["cost"]["grid_forward_samples"]) for d in names]),
            ("grid wall s (committed run, 2 threads)", [f"{per[d]['cost']['grid_wall_s']:.0f}" for d in names]),
            ("grid wall s (per-sample re-run, 1 thread)",
             ["–" if per[d]["cost"]["grid_rerun_wall_s"] is None else f"{per[d]['cost']['grid_rerun_wall_s']:.0f}"
              for d in names]),
            ("label-free default: forward samples", [str(per[d]["cost"]["label_free_forward_samples"])
                                                     for d in names]),
            ("few labels k = 10: forward samples", [str(per[d]["cost"]["forward_samples"]["10"]) for d in names]),
            ("ratio to the grid, k = 10", [f"{ratio(per[d]['cost']):.1f}x" for d in names]),
            ("k = 10 capture wall s (seeds 1 / 2, 1 thread)", [cap(d, "wall_s", 10) for d in names]),
            ("k = 10 capture forward s", [cap(d, "forward_s", 10) for d in names]),
            ("k = 10 capture criteria + bootstrap s", [cap(d, "criteria_s", 10) for d in names]),
            ("20/class pool wall s (1 thread)", [cap(d, "wall_s", 20) for d in names]),
            ("criteria + bootstrap s per k = 10 draw (analysis)",
             [_f(per[d]["cost"]["fit_s_per_draw"].get("10")) for d in names])]
    return ["## Cost", "", *_table(names, rows)]


START, END = "<!-- headline: written by docs/validation/fewlabel/analyse.py -->", "<!-- headline end -->"


def validation_section(per: dict) -> str:
    """The headline that leads docs/VALIDATION.md: the lead paragraph and both splits' gaps with intervals."""
    names = list(per)
    conf_n = {d: per[d]["grid_best"].get("confirm_images") for d in names}
    out = [START, "", lead(per), "",
           "Gap to the grid's best `mlp_hidden` cell, in points (accuracy of that cell minus the rule's; few labels: "
           "the mean over 10 draws of k = 10 labelled images per class), with 95 % paired bootstrap intervals over "
           "the split's images. Committed test split (the images that also chose the grid's best cell, so every gap "
           "leans upwards; intervals where per-sample correctness is stored):", "", *headline(per, "test"), "",
           "Confirmation split (" + ", ".join(f"{d} {n}" for d, n in conf_n.items() if n) + " images that no "
           "choice saw; the same probes, trained on the grid's training images; digits has none left):", "",
           *headline(per, "confirm"), "",
           "Leave-one-dataset-out rule: " + "; ".join(f"{d}: {per[d]['lodo_rule']}" for d in names) + ".", ""]
    rows = []
    for m in sorted({m for d in names for m in per[d]["margins"]}):
        for split in ("test", "confirm"):
            cells = [per[d]["margins"].get(m, {}).get(split) for d in names]
            rows.append((f"{m}, {split}", ["–" if e is None else
                                            f"{e['margin']:.2f} [{e['ci95'][0]:.1f}, {e['ci95'][1]:.1f}]"
                                            for e in cells]))
    out += ["Margins, accuracy of the first rule minus the second, points [95 % interval]:", "",
            *_table(names, rows), "", END]
    return "\n".join(out)


def replace_section(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section`` (markers included)."""
    a, b = text.index(START), text.index(END) + len(END)
    return text[:a] + section + text[b:]
