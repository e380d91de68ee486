"""Plant realistic bugs one at a time and check that the suite kills each one (not run in CI).

Each mutation replaces one exact snippet of the package with a plausible mistake, in a scratch copy of the tracked
files (the working tree is never touched), then runs the tests that should notice it.  A mutation is *killed* when
those tests fail, and *survives* when they pass.  Usage, from the repository root::

    python tools/mutation_check.py              # every mutation, then the kill table
    python tools/mutation_check.py --list       # the mutations, no test run
    python tools/mutation_check.py --only entropy-merge-sign cutoff-ge

A snippet that no longer occurs exactly once makes that row ``stale`` (the code moved: update the list).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


KERNEL_TESTS = ("tests/test_fused_stats.py",)
MATMUL_TESTS = ("tests/test_matmul_stats.py",)

MUTATIONS: tuple[Mutation, ...] = (
    # The six bugs of the first audit.
    Mutation("token-var-divisor", "aselect_kernels/ops/matmul_stats.py",
             "sum_m2 / (channels * (length - 1))", "sum_m2 / (channels * length)", MATMUL_TESTS,
             "token_var divides by C*L instead of C*(L-1) (matmul path)"),
    Mutation("entropy-merge-sign", "aselect_kernels/ops/stats_merge.py",
             "alpha * (t1 + d1 * s1) + beta * (t2 + d2 * s2)", "alpha * (t1 - d1 * s1) + beta * (t2 - d2 * s2)",
             KERNEL_TESTS, "entropy-state merge sign flipped (Triton kernel)"),
    Mutation("cutoff-ge", "aselect_kernels/frequency.py",
             "mask = normalized_frequency(length, grid) > cutoff",
             "mask = normalized_frequency(length, grid) >= cutoff",
             ("tests/test_reference.py",), "high-frequency mask takes r >= cutoff instead of r > cutoff"),
    Mutation("nan-flag-dropped", "aselect_kernels/scorers.py",
             "ok = np.isfinite(v)\n        z = np.where(ok, v, 0.0)",
             "ok = ~np.isnan(v)\n        z = np.where(ok, v, 0.0)",
             ("tests/test_selection.py", "tests/test_result_json.py"), "Inf samples no longer flagged and excluded"),
    Mutation("last-chunk-short", "aselect_kernels/forward.py",
             "torch.arange(s, min(s + chunk_size, rows.stop), device=device)",
             "torch.arange(s, min(s + chunk_size, rows.stop - 1), device=device)",
             ("tests/test_selection.py",), "the last chunk ends one sample early"),
    Mutation("sd3-mlp-out-text-stream", "aselect_kernels/taps.py",
             '"mlp_out": "transformer_blocks.{i}.ff",\n        "mlp_hidden": "transformer_blocks.{i}.ff.net.0",\n'
             '        "block_out": "transformer_blocks.{i}@1",\n    },\n    "plain-dit"',
             '"mlp_out": "transformer_blocks.{i}.ff_context",\n'
             '        "mlp_hidden": "transformer_blocks.{i}.ff.net.0",\n'
             '        "block_out": "transformer_blocks.{i}@1",\n    },\n    "plain-dit"',
             ("tests/test_presets.py",), "SD3 mlp_out preset reads the text stream (ff_context)"),
    # Six more, of the same kinds.
    Mutation("hfr-clamp-dropped", "aselect_kernels/ops/matmul_stats.py",
             "e_high = (e_centred - e_low).clamp_min(0.0)", "e_high = e_centred - e_low",
             ("tests/test_hardening.py", "tests/test_matmul_stats.py"), "high-frequency energy not clamped at 0"),
    Mutation("mean-leak-uncorrected", "aselect_kernels/ops/stats_kernel.py",
             "r = proj - rs[:, None] * centre[None, :]", "r = proj", KERNEL_TESTS,
             "the rounded basis' leak of the channel mean is not subtracted (Triton kernel)"),
    Mutation("basis-lo-dropped", "aselect_kernels/ops/stats_kernel.py",
             "            proj = tl.dot(b_lo.to(tl.float32), op32, acc=proj, input_precision=\"ieee\")\n", "",
             KERNEL_TESTS, "the low half of the split basis is dropped (bf16/fp16 inputs, Triton kernel)"),
    Mutation("flow-noise-swapped", "aselect_kernels/noise.py",
             "return sigma * noise + (1.0 - sigma) * x0", "return sigma * x0 + (1.0 - sigma) * noise",
             ("tests/test_noise.py",), "rectified-flow interpolation swaps image and noise"),
    Mutation("direction-ignored", "aselect_kernels/scorers.py",
             'return int(np.argmax(masked) if direction == "max" else np.argmin(masked))',
             "return int(np.argmax(masked))", ("tests/test_selection.py",), "selection takes the argmax for 'min'"),
    Mutation("probe-l2-dropped", "aselect_kernels/validation/probe.py",
             "F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()", "F.cross_entropy(x @ w + b, y)",
             ("tests/test_probe_validate.py",), "the probe's L2 penalty is left out of the loss"),
)


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def copy_tree(dest: Path) -> None:
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return "survived", seconds
    if proc.returncode == 1:
        return "killed", seconds
    return f"error (pytest exit {proc.returncode})", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutation (default 600)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        known = ", ".join(m.name for m in MUTATIONS)
        parser.error(f"unknown mutation in {args.only}; known: {known}")
    if args.list:
        for m in chosen:
            print(f"{m.name:28s} {m.path}: {m.what}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="aselect-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for m in chosen:
            source = tree / m.path
            original = source.read_text()
            if original.count(m.old) != 1:
                rows.append((m, "stale", 0.0))
                continue
            source.write_text(original.replace(m.old, m.new))
            try:
                outcome, seconds = run_tests(tree, m.tests, args.timeout)
            finally:
                source.write_text(original)
            rows.append((m, outcome, seconds))
            print(f"{m.name:28s} {outcome:9s} {seconds:6.1f} s", flush=True)
    print("\n| mutation | file | planted bug | outcome | tests run | s |\n|---|---|---|---|---|---|")
    for m, outcome, seconds in rows:
        print(f"| {m.name} | {m.path} | {m.what} | {outcome} | {' '.join(m.tests)} | {seconds:.0f} |")
    killed = sum(outcome == "killed" for _, outcome, _ in rows)
    print(f"\n{killed} of {len(rows)} mutations killed")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
