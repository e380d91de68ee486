"""Print the summary tables of docs/VALIDATION.md from the validation JSON files beside this script.

    python docs/validation/summarize.py [folder]   # reads validation_<dataset>.json (and label_free.json)

Every figure of those tables comes from here, so the page and the JSON cannot disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: the package's wording of comparisons
from aselect_kernels.validation.wording import compared  # noqa: E402

DEFAULT = "sf:max"
DEFAULT_LABEL = "`sf` (max)"
#: The default tap preset of selection; its pick is read against the best cell of the whole grid (tap set "all").
PRESET = "mlp_hidden"


def _short(tap: str | None) -> str:
    return "-" if tap is None else tap.replace("transformer_blocks.", "tb")


def _ci(j: dict) -> str:
    return f" [{j['gap_ci95'][0]:.2f}, {j['gap_ci95'][1]:.2f}]" if "gap_ci95" in j else ""


def _trivial_best(rep: dict) -> tuple[str, dict]:
    rules = {k: v for k, v in rep["trivial"].items() if k != "random"}
    name = min(rules, key=lambda k: rules[k]["joint"]["gap"])
    return name, rules[name]["joint"]


def default_pick(part: dict) -> dict:
    """The default selection's (t, tap) and its gap to the best cell over every tap (bootstrap interval when the
    preset's best cell is the grid's best)."""
    sets = part["tap_sets"]
    preset = sets.get(PRESET, sets["all"])
    joint = dict(preset["scorers"][DEFAULT]["joint"])
    best = sets["all"]["best"]
    joint["gap"] = best["metric"] - joint["metric"]
    if (preset["best"]["t"], preset["best"]["tap"]) != (best["t"], best["tap"]):
        joint.pop("gap_ci95", None)
    return joint


def targets(fashion: dict) -> list[str]:
    cls = fashion["classification"]
    rep = cls["tap_sets"]["all"]
    best, floor = rep["best"], 100 * cls["grid"]["raw_pixel_floor"]
    sel = default_pick(cls)
    rule, triv = _trivial_best(rep)
    prule, ptriv = _trivial_best(cls["tap_sets"].get(PRESET, rep))
    pgap = best["metric"] - ptriv["metric"]  # the preset's trivial pick against the best cell of the whole grid
    rnd = rep["trivial"]["random"]["joint"]["gap"]
    c = fashion["cost"]
    default_s = fashion["wall_s"] - c.get("candidates_wall_s", 0.0)  # the candidate pass is opt-in, not default
    vs = best.get("vs_floor", {})
    ci = f", 95% CI [{vs['ci95'][0]:+.2f}, {vs['ci95'][1]:+.2f}]" if vs else ""
    rows = [
        ("best (t, tap) probe ≥ raw-pixel probe + 1 point",
         f"{best['metric']:.2f} at (t={best['t']}, `{_short(best['tap'])}`) vs raw pixels {floor:.2f}: "
         f"**{best['metric'] - floor:+.2f}**{ci}", best["metric"] - floor >= 1.0),
        ("accuracy at the selected (t, tap) within 1 point of the grid's best",
         f"{DEFAULT_LABEL} over `{PRESET}`: {sel['metric']:.2f} at ({sel['t']}, `{_short(sel['tap'])}`), gap "
         f"**{sel['gap']:.2f}**"
         f"{_ci(sel)}", sel["gap"] <= 1.0),
        ("joint gap ≤ the best trivial rule's",
         f"{sel['gap']:.2f} vs {rule} (middle tap of all) {triv['gap']:.2f}; with the same preset, "
         f"{prule} ({_short(ptriv['tap'])}) {pgap:.2f}", sel["gap"] <= min(triv["gap"], pgap) + 1e-9),
        ("joint gap < the random rule's", f"{sel['gap']:.2f} vs {rnd:.2f}", sel["gap"] < rnd),
        ("selection ≥ 20× less compute than the grid",
         f"**{compared(c['select_forward_samples'], c['grid_forward_samples'], 'forward samples', 'fewer', mark='×')}"
         f"** ({c['select_forward_samples']} vs {c['grid_forward_samples']}); "
         f"**{compared(c['select_wall_s'], c['grid_wall_s'], 'CPU wall time', mark='×')}** ({c['select_wall_s']:.1f} s"
         f" vs {c['grid_wall_s']:.1f} s)", c["forward_ratio"] >= 20 and c["wall_ratio"] >= 20),
        ("`aselect validate` on CPU at the default size < 20 min",
         f"{default_s:.0f} s without the opt-in candidate pass ({fashion['wall_s']:.0f} s with it, of which "
         f"{c.get('candidates_wall_s', 0):.0f} s)", default_s < 1200),
    ]
    out = ["| target (Fashion-MNIST, embedded model) | measured | status |", "|---|---|---|"]
    out += [f"| {name} | {value} | {'met' if ok else '**missed**'} |" for name, value, ok in rows]
    return out


def others(reports: dict[str, dict]) -> list[str]:
    out = [f"| task | grid best | raw floor | {DEFAULT_LABEL} joint pick, gap | within 1? | best trivial rule, gap | "
           "≤ trivial? | random | compute (forward / CPU wall) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, rep_all in reports.items():
        for task in ("classification", "dense"):
            if task not in rep_all or (name == "fashion" and task == "classification"):
                continue
            part = rep_all[task]
            key = "all" if task == "classification" else "dense_taps"
            rep = part["tap_sets"][key]
            best = rep["best"]
            sel = default_pick(part) if task == "classification" else rep["scorers"][DEFAULT]["joint"]
            rule, triv = _trivial_best(rep)
            c = rep_all["cost"]
            cost = f"{c['forward_ratio']:.1f}× / {c['wall_ratio']:.1f}×" if task == "classification" else "same run"
            out.append(
                f"| {name} {task} ({part['metric']}) | {best['metric']:.2f} at (t={best['t']}, `{_short(best['tap'])}`)"
                f" | {100 * part['grid']['raw_pixel_floor']:.2f} | ({sel['t']}, `{_short(sel['tap'])}`) "
                f"{sel['gap']:.2f}{_ci(sel)} | {'yes' if sel['gap'] <= 1 else 'no'} | {rule} {triv['gap']:.2f} | "
                f"{'yes' if sel['gap'] <= triv['gap'] + 1e-9 else 'no'} | "
                f"{rep['trivial']['random']['joint']['gap']:.2f} | {cost} |")
    return out


def scorers(reports: dict[str, dict], task: str = "classification", tap_set: str = "all", both: bool = False
            ) -> list[str]:
    names = list(reports)
    sets = {n: tap_set if tap_set in reports[n][task]["tap_sets"] else "all" for n in names}
    head = "| scorer (direction) | " + " | ".join(f"{n} ρ | {n} per-tap gap | {n} joint pick, gap" for n in names)
    out = [head + " |", "|---|" + "---|---|---|" * len(names)]
    first = reports[names[0]][task]["tap_sets"][sets[names[0]]]
    for key, row in first["scorers"].items():
        if row["direction"] != row["default_direction"] and not both:
            continue
        cells = []
        for n in names:
            r = reports[n][task]["tap_sets"][sets[n]]["scorers"].get(key)
            if r is None:  # a candidate criterion this run did not score (no --candidates)
                cells.append("- | - | -")
                continue
            j = r["joint"]
            cells.append(f"{r['mean_rho']:+.2f} | {r['mean_gap']:.2f} | ({j['t']}, {_short(j['tap'])}) "
                         f"{j['gap']:.2f}{_ci(j)}")
        label = f"{row['scorer']} ({row['direction']})"
        label = f"**{label}**" if key == DEFAULT else label
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for rule in ("smallest_t", "t100", "random"):
        cells = []
        for n in names:
            r = reports[n][task]["tap_sets"][sets[n]]["trivial"][rule]
            j = r["joint"]
            pick = "random cell" if j["t"] is None else f"({j['t']}, {_short(j['tap'])})"
            cells.append(f" | {r['mean_gap']:.2f} | {pick} {j['gap']:.2f}{_ci(j)}")
        out.append(f"| *rule: {rule}* |" + " |".join(cells) + " |")
    return out


def interior(reports: dict[str, dict]) -> list[str]:
    """The noisy benchmarks' targets: the grid's best t, its margin over the smallest t at the same tap, and the
    default selection's pick against the best cell and the smallest-t rule (given the same preset)."""
    out = ["| dataset | grid best (t*, tap) | over smallest t, same tap | over raw pixels | default pick, gap to best"
           " | smallest-t rule (same preset), gap | default beats it by |", "|---|---|---|---|---|---|---|"]
    for name, rep_all in reports.items():
        cls = rep_all["classification"]
        best = cls["tap_sets"].get(PRESET, cls["tap_sets"]["all"])["best"]
        v, f = best["vs_smallest_t"], best["vs_floor"]
        sel = default_pick(cls)
        rule = cls["tap_sets"].get(PRESET, cls["tap_sets"]["all"])["trivial"]["smallest_t"]["joint"]
        rgap = best["metric"] - rule["metric"]
        out.append(
            f"| {name} | {best['metric']:.2f} at (t={best['t']}, `{_short(best['tap'])}`) | {v['margin']:+.2f} "
            f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}] | {f['margin']:+.2f} [{f['ci95'][0]:+.2f}, "
            f"{f['ci95'][1]:+.2f}] | ({sel['t']}, `{_short(sel['tap'])}`) {sel['gap']:.2f}{_ci(sel)} | "
            f"({rule['t']}, `{_short(rule['tap'])}`) {rgap:.2f} | {rgap - sel['gap']:+.2f} |")
    return out


def per_tap(reports: dict[str, dict]) -> list[str]:
    """Probe accuracy (%) of every tap of the preset at every t, the best of each row in bold."""
    first = next(iter(reports.values()))["classification"]["grid"]
    ts = first["timesteps"]
    out = ["| tap \\ t | " + " | ".join(map(str, ts)) + " |", "|---|" + "---|" * len(ts)]
    for name, rep in reports.items():
        g = rep["classification"]["grid"]
        if g["timesteps"] != ts:
            raise ValueError(f"{name}: its grid's timesteps differ from the others'")
        for p, tap in enumerate(g["taps"]):
            if PRESET == "mlp_hidden" and not tap.endswith("ff.net.0"):
                continue
            row = [100 * g["metric"][ti][p] for ti in range(len(ts))]
            top = max(row)
            cells = [f"**{v:.1f}**" if v == top else f"{v:.1f}" for v in row]
            out.append(f"| {name} `{_short(tap)}` | " + " | ".join(cells) + " |")
    return out


def decision(folder: Path, reports: dict[str, dict]) -> list[str]:
    """Joint gaps on the preset over every benchmark: registered scorers (default direction), trivial rules and the
    label-free candidates of ``label_free.json``, with the worst and the mean (the held-out plan's decision rule)."""
    names = list(reports)
    lf_path = folder / "label_free.json"
    lf = json.loads(lf_path.read_text()) if lf_path.is_file() else {}
    rows: dict[str, list[float | None]] = {}

    def put(label: str, i: int, gap: float) -> None:
        rows.setdefault(label, [None] * len(names))[i] = gap

    for i, n in enumerate(names):
        sets = reports[n]["classification"]["tap_sets"]
        rep = sets.get(PRESET, sets["all"])
        for key, r in rep["scorers"].items():
            if r["direction"] == r["default_direction"] and "_2d" not in key and not key.startswith("erank"):
                put(f"{r['scorer']} ({r['direction']})", i, r["joint"]["gap"])
        for rule in ("smallest_t", "t100", "random"):
            put(f"*rule: {rule}*", i, rep["trivial"][rule]["joint"]["gap"])
        if n in lf:
            cand = lf[n]["tap_sets"].get(PRESET, lf[n]["tap_sets"]["all"])["scorers"]
            for key, r in cand.items():
                name, direction = key.split(":")
                if direction == ("min" if name == "perank" else "max"):
                    put(f"*candidate* {name} ({direction})", i, r["joint"]["gap"])
    out = ["| rule (direction) | " + " | ".join(names) + " | worst | mean |", "|---|" + "---|" * (len(names) + 2)]
    for label, gaps in rows.items():
        got = [g for g in gaps if g is not None]
        tail = f"{max(got):.2f} | {sum(got) / len(got):.2f}" if len(got) == len(names) else "- | -"
        out.append(f"| {label} | " + " | ".join("-" if g is None else f"{g:.2f}" for g in gaps) + f" | {tail} |")
    return out


SMALLEST_T_OF_BEST = "grid best's tap at the smallest t"


def confirmation(folder: Path, names: list[str]) -> list[str]:
    """The confirmation split (``confirm_<dataset>.json`` of ``confirm.py``): the grid's best cell against raw
    pixels, and each pick's distance below that cell, on images no choice saw."""
    def find(cells: dict, *labels: str) -> dict | None:
        return next((cells[k] for k in labels if k in cells), None)

    def gap(r: dict | None) -> str:
        if r is None:
            return "-"
        g = r["below_grid_best"]
        return f"({r['t']}, {_short(r['tap'])}) {g['gap']:.2f} [{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}]"

    out = ["| dataset (confirmation images) | raw pixels | grid best cell: accuracy, vs raw pixels | `sf` (max) | "
           "`token_var` (max) | smallest-t rule | t ≈ 100 rule | grid best's tap at the smallest t |",
           "|---|---|---|---|---|---|---|---|"]
    for n in names:
        path = folder / f"confirm_{n}.json"
        if not path.is_file():
            continue
        rep = json.loads(path.read_text())
        c = rep["cells"]
        best = c["grid best"]
        v = best["vs_raw_pixels"]
        out.append(
            f"| {n} ({rep['n_confirm']}) | {rep['raw_pixels']:.2f} | ({best['t']}, {_short(best['tap'])}) "
            f"{best['accuracy']:.2f}, {v['margin']:+.2f} [{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}] | "
            f"{gap(find(c, 'sf:max', 'candidate sf:max'))} | {gap(find(c, 'token_var:max'))} | "
            f"{gap(find(c, 'rule smallest_t'))} | {gap(find(c, 'rule t100'))} | "
            f"{gap(find(c, SMALLEST_T_OF_BEST))} |")
    return out


def main(folder: Path = HERE) -> None:
    reports = {n: json.loads((folder / f"validation_{n}.json").read_text()) for n in ("fashion", "digits", "mnist")
               if (folder / f"validation_{n}.json").is_file()}
    if "fashion" not in reports:
        sys.exit(f"no validation_fashion.json in {folder}")
    print("\n".join(targets(reports["fashion"])), end="\n\n")
    print("\n".join(others(reports)), end="\n\n")
    print("\n".join(scorers(reports)), end="\n\n")
    print("\n".join(scorers(reports, "classification", PRESET)), end="\n\n")
    if all("dense" in r for r in reports.values()):
        print("\n".join(scorers(reports, "dense", "dense_taps")), end="\n\n")
    noisy = {n: json.loads((folder / f"validation_{n}.json").read_text())
             for n in ("fashion_noise", "digits_noise", "mnist_noise") if (folder / f"validation_{n}.json").is_file()}
    if noisy:
        print("\n".join(per_tap(noisy)), end="\n\n")
        print("\n".join(interior(noisy)), end="\n\n")
        print("\n".join(scorers(noisy, tap_set=PRESET, both=True)), end="\n\n")
    print("\n".join(decision(folder, {**reports, **noisy})))
    conf = confirmation(folder, [*reports, *noisy])
    if len(conf) > 2:
        print("\n" + "\n".join(conf))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
