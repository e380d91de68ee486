"""The CPU cost of scoring: selection against the unscored forward it rides on, side by side in one process.

``python bench/cpu_overhead.py`` runs the embedded model on ``--images`` Fashion-MNIST images x the ``--timesteps``
grid with the ``--taps`` preset, every variant with the same chunks, in interleaved rounds (each round runs every
variant once, the order rotated by one each round), and writes ``bench/results/cpu/cpu_overhead.json``: machine,
torch threads, shapes, dtype, chunk plan, each run's seconds and 1-minute load average, the medians, and each
variant's ratio to the unscored forward's median, with the section-4 targets of the CPU path.

Variants:

* ``unscored``: :func:`~aselect_kernels.forward.run_multi_timestep` with no taps;
* ``token_var``: :func:`~aselect_kernels.select.select_timestep` with ``scorer="token_var"`` (one draw, every
  statistic scorer in the table);
* ``sf``: the default scorer, two noise draws (the second takes only the channel means);
* ``token_var_before`` / ``sf_before``: the same with the earlier CPU path: ``matmul_stats`` on torch's intra-op
  threads op by op (``BLOCK_TASKS = False``) and the second draw's means from the reference's ops.

Each selection run also records the seconds spent inside the tap hooks, per draw (``hook_s``), and each draw's
wall time (``draw_s``).  Timings are wall-clock: on shared cores read the ratios, and the load averages beside
them, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aselect_kernels import select as select_module  # noqa: E402
from aselect_kernels import taps as taps_module  # noqa: E402
from aselect_kernels.embedded.data import load_embedded_images  # noqa: E402
from aselect_kernels.embedded.model import load_embedded  # noqa: E402
from aselect_kernels.forward import (  # noqa: E402
    Conditioning,
    default_call,
    estimate_sample_bytes,
    plan_chunk_size,
    run_multi_timestep,
)
from aselect_kernels.images import to_model_range  # noqa: E402
from aselect_kernels.noise import Noiser, parse_timesteps  # noqa: E402
from aselect_kernels.ops import matmul_stats as twin  # noqa: E402
from aselect_kernels.reference import channel_means  # noqa: E402
from aselect_kernels.taps import resolve_taps  # noqa: E402

VARIANTS = ("unscored", "token_var", "sf", "token_var_before", "sf_before")
#: Section 4 of the CPU path's targets: one draw <= +35 % over the unscored forward, two draws <= 2.4x.
TARGETS = {"token_var": 1.35, "sf": 2.4}
DEFAULT_OUT = ROOT / "bench" / "results" / "cpu" / "cpu_overhead.json"


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class HookClock:
    """Seconds inside the tap hooks' scoring, and wall seconds, per call of ``select._run_taps`` (one per draw)."""

    def __init__(self) -> None:
        self.hook_s: list[float] = []
        self.draw_s: list[float] = []
        self._score = taps_module.TapSet._score
        self._run = select_module._run_taps

    def __enter__(self) -> HookClock:
        clock, score, run = self, self._score, self._run

        def timed_score(tapset, spec, x):
            t0 = time.perf_counter()
            score(tapset, spec, x)
            clock.hook_s[-1] += time.perf_counter() - t0

        def timed_run(*args, **kwargs):
            clock.hook_s.append(0.0)
            t0 = time.perf_counter()
            out = run(*args, **kwargs)
            clock.draw_s.append(time.perf_counter() - t0)
            return out

        taps_module.TapSet._score = timed_score
        select_module._run_taps = timed_run
        return self

    def __exit__(self, *exc: object) -> None:
        taps_module.TapSet._score = self._score
        select_module._run_taps = self._run


def run_variant(name: str, model, images, ts, taps: str, chunk: int) -> dict:
    before = name.endswith("_before")
    scorer = name.removesuffix("_before")
    saved_means = select_module.compute_means
    twin.BLOCK_TASKS = not before
    if before:  # the earlier second draw: the reference's channel means, as one op chain per tapped tensor
        select_module.compute_means = lambda x, backend="auto": channel_means(x)
    load = load1()
    try:
        if name == "unscored":
            t0 = time.perf_counter()
            run_multi_timestep(model, images, ts, Noiser("ddpm"), chunk_size=chunk, progress=False)
            return {"s": time.perf_counter() - t0, "load1": load}
        with HookClock() as clock:
            t0 = time.perf_counter()
            select_module.select_timestep(model, images, ts, taps=taps, scorer=scorer, chunk_size=chunk,
                                          progress=False)
            wall = time.perf_counter() - t0
        return {"s": wall, "load1": load, "hook_s": [round(h, 3) for h in clock.hook_s],
                "draw_s": [round(d, 3) for d in clock.draw_s]}
    finally:
        twin.BLOCK_TASKS = True
        select_module.compute_means = saved_means


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--timesteps", default="0:1000:50")
    ap.add_argument("--taps", default="mlp_hidden")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "unscored" not in variants:
        ap.error(f"variants must include unscored and come from {VARIANTS} (unknown: {unknown})")

    torch.manual_seed(0)
    model = load_embedded()
    pixels, _ = load_embedded_images()
    images = to_model_range(pixels[:args.images])[:, None]
    noiser = Noiser("ddpm")
    ts = noiser.check(parse_timesteps(args.timesteps))
    specs = resolve_taps(model, args.taps)
    total = images.shape[0] * len(ts)
    # the plan select_timestep makes with no chunk_size, fixed here so that every variant runs the same chunks
    first = torch.zeros(1, dtype=torch.long)
    sample_bytes = estimate_sample_bytes(model, first, lambda b: default_call(
        model, images[b], noiser.model_timestep(torch.tensor([ts[0]])), b, Conditioning(), images.shape[0]))
    chunk = plan_chunk_size(total, sample_bytes, torch.device("cpu"), None)

    runs: dict[str, list[dict]] = {v: [] for v in variants}
    run_variant("unscored", model, images[:2], ts[:2], args.taps, chunk)  # warm-up (allocator, weights, basis)
    run_variant(variants[-1], model, images[:2], ts[:2], args.taps, chunk)
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            runs[v].append(run_variant(v, model, images, ts, args.taps, chunk))
            print(f"round {r} {v:>17}: {runs[v][-1]['s']:8.2f} s  load1 {runs[v][-1]['load1']:.2f}", flush=True)

    medians = {v: statistics.median(x["s"] for x in rs) for v, rs in runs.items()}
    base = medians["unscored"]
    ratios = {v: m / base for v, m in medians.items()}
    # the ratio of each round (variants of one round ran next to each other), and their median
    round_ratios = {v: [runs[v][r]["s"] / runs["unscored"][r]["s"] for r in range(args.rounds)] for v in variants}
    targets = {v: {"max_ratio": t, "median_ratio": ratios[v], "met": ratios[v] <= t}
               for v, t in TARGETS.items() if v in ratios}
    report = {
        "benchmark": "cpu_overhead",
        "command": "python bench/cpu_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "model": "embedded DiT (6 blocks, 196 tokens, width 96)",
        "images": int(images.shape[0]), "timesteps": ts, "samples": total, "chunk_size": chunk,
        "taps": [s.name for s in specs], "tap_shape_per_sample": [196, 384] if args.taps == "mlp_hidden" else None,
        "dtype": "float32", "rounds": args.rounds, "variants": variants,
        "runs": runs, "median_s": medians, "ratio_of_medians": ratios,
        "median_round_ratio": {v: statistics.median(x) for v, x in round_ratios.items()},
        "round_ratios": round_ratios, "targets": targets,
        "load1_mean": statistics.mean(x["load1"] for rs in runs.values() for x in rs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for v in variants:
        print(f"{v:>17}: median {medians[v]:8.2f} s  ratio {ratios[v]:.3f}")
    for v, t in targets.items():
        print(f"target {v}: {t['median_ratio']:.3f} <= {t['max_ratio']} {'met' if t['met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
