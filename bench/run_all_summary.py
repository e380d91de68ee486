"""The end of ``bench/run_all_gpu.sh``: record the steps in the benchmark JSON and print a short summary.

Reads ``$STEPS`` (lines ``name<TAB>rc<TAB>seconds``), writes them as ``steps`` into ``$OUT/$SLUG.json`` (creating
it when the benchmark step wrote nothing), removes half-written ``*.part`` files, and prints each step, the
correctness results and the targets, so that the end of the log says what the run found.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def main() -> int:
    out, slug = Path(os.environ["OUT"]), os.environ["SLUG"]
    rows = [line.rstrip("\n").split("\t") for line in Path(os.environ["STEPS"]).read_text().splitlines() if line]
    steps = {name: {"rc": rc, "seconds": int(sec)} for name, rc, sec in rows}
    for part in out.glob("*.part"):
        part.unlink()
    path = out / f"{slug}.json"
    report = load(path) or {"env": {"device": slug}, "note": "the benchmark step wrote no report"}
    report["steps"] = steps
    report["steps_total_s"] = sum(s["seconds"] for s in steps.values())
    path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")

    print("\n==================== SUMMARY ====================")
    for name, s in steps.items():
        print(f"step {name:13} rc={s['rc']:>10} {s['seconds']:4d}s")
    files = sorted(p.name for p in out.iterdir())
    print(f"{len(files)} files in {out}: {' '.join(files)}")
    gc = load(out / "gpu_checks.json")
    if gc:
        sm = gc.get("summary", {})
        print("gpu_checks:", "ALL PASSED" if sm.get("passed") else f"FAILED {sm.get('failed')}")
    for name, c in report.get("checks", {}).items():
        if isinstance(c, dict):
            print(f"scored-forward check {name:28} {c.get('status')}")
    if report.get("env", {}).get("smoke"):
        print("SMOKE run: the code paths ran on the CPU; its figures are not performance")
    for name, t in report.get("targets", {}).items():
        state = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"target {name:38} {t['target']:>8} value {value:>8} {state}")
    for name, err in report.get("errors", {}).items():
        print(f"bench_stats ERROR in {name}: {err.strip().splitlines()[-1]}")
    if report.get("schema_problems"):
        print("bench_stats report problems:", report["schema_problems"])
    gv = load(out / "gpu_validate.json")
    if gv:
        print("gpu_validate:", {k: v.get("wall_s") for k, v in gv.get("steps", {}).items()})
    pb = load(out / "pytest_bench.json")
    for b in (pb or {}).get("benchmarks", []):
        print(f"pytest {b['name']:52} median {b['stats']['median'] * 1e6:10.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
