#!/usr/bin/env bash
# Every GPU benchmark and check of aselect_kernels in ONE command, from the repository root:
#
#     bash bench/run_all_gpu.sh            # on a CUDA machine: under 9 minutes: RUN_ALL_BUDGET_S (505 s) + shutdown
#     bash bench/run_all_gpu.sh --smoke    # the rehearsal, on the CPU (TRITON_INTERPRET=1), about a minute
#     bash bench/run_all_gpu.sh --smoke --no-diffusers   # the rehearsal with diffusers hidden (bench/no_diffusers)
#
# The rehearsal runs every step's Python path that a CPU can run: the kernels' accuracy and determinism in the
# interpreter, the compile check, the scored-forward checks (no host sync and graph capture up to their CUDA calls,
# which stand-ins replace: see bench/bench_forward.py), the forward variants with their repeated forwards, the
# summary and the targets block; it exits 1 when a step fails.
#
# Results go to $OUT when it is set (the output folder), else to bench/results/<device-slug>/ (smoke: a new
# temporary folder).  At most 8 files land there, each written as its step goes:
#   <device-slug>.json  bench/bench_stats.py: read/copy/matmul ceilings, K and the compute-bound point, kernel of
#                       each backend on every shape, scored-forward checks (overlap, no host sync, CUDA graph),
#                       DiT-XL/2 forward variants at batch 128 and 8 on 56 and 140 taps, launch cost, targets;
#                       at the end also "steps" (rc and seconds of every step below)
#   gpu_checks.json     bench/gpu_checks.py: accuracy against the fp64 reference with poisoned buffers, determinism,
#                       compile; the CUDA C++ kernel's checks under "cuda_backend"
#   ncu.txt             bench/profile_kernels.sh: Nsight Compute sections and metrics of the kernels on the
#                       headline shape, and their SASS (load widths, MMA instructions, registers, spills)
#   sanitizer.log       compute-sanitizer memcheck, then racecheck, over bench/gpu_checks.py --sanitizer, for the
#                       Triton kernel and then the CUDA C++ kernel
#   pytest_bench.json   pytest-benchmark medians (bench/test_bench_stats.py)
#   gpu_validate.json   bench/gpu_validate.py at its defaults: selection and the probe grid, timed on the GPU
#   block_sweep.json    bench/block_sweep.py
#   run_all.log         this whole log, ending with a summary
#
# Steps run in this order (the owed figures first), each under `timeout`: a step gets min(its cap, time left
# minus what the later steps are guaranteed), is skipped when that is under 20 s, and a failure or timeout is
# recorded while the next step still runs.  Caps in seconds:
#   cuda_build 120 | bench_stats 230 | gpu_checks 80 | gpu_checks_cuda 60 | ncu 60 | memcheck and racecheck 35
#   each, per backend | pytest_bench 40 |
#   gpu_validate 60 | block_sweep 40
# cuda_build compiles (or loads) the package's CUDA C++ backend once, when the package has one, so that no
# benchmark times a build.
#
# Diffusers: used when importable.  The wheels travel in .whl/ at the repository root (gitignored), filled on a machine with network access by `python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==8.7.0`
# (set --python-version to the GPU machine's Python); they are installed first into a temporary folder.  Their
# other requirements (filelock, huggingface-hub>=1.32,<3, numpy, regex, requests, safetensors>=0.8, Pillow) must
# already be installed.  Without diffusers the script says so loudly: the forward benchmarks and checks use the
# plain DiT-XL/2 of bench/common.py (PlainDiT, torch only; each JSON names the model it ran), and gpu_validate
# (the embedded model is a diffusers model) is not run.
#
# ASELECT_RUN_ID names this run: a failed JIT build of the CUDA extension is not retried by its later steps
# (aselect_kernels/ops/cuda_stats.py).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
SMOKE="${SMOKE:-0}"
HIDE_DIFFUSERS=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        --no-diffusers) HIDE_DIFFUSERS=1 ;;
        *) echo "unknown argument $arg (use --smoke, --no-diffusers)" >&2; exit 2 ;;
    esac
done
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export ASELECT_RUN_ID="${ASELECT_RUN_ID:-run-$(date -u +%Y%m%dT%H%M%SZ)-$$}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/aselect-triton-cache}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/aselect-torch-extensions}"
if ((SMOKE)); then
    export TRITON_INTERPRET=1
    BUDGET="${RUN_ALL_BUDGET_S:-900}"
    OUT="${OUT:-$(mktemp -d /tmp/aselect-smoke.XXXXXX)}"
    SLUG=smoke-cpu
else
    BUDGET="${RUN_ALL_BUDGET_S:-505}"
    SLUG="$("$PY" -c 'import re, torch; print(re.sub("[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-"))' \
        2>/dev/null || echo no-gpu)"
    OUT="${OUT:-bench/results/$SLUG}"
fi
mkdir -p "$OUT"
DEADLINE=$((SECONDS + BUDGET))
STEPS="$(mktemp)"
SCRATCH="$(mktemp -d)"

# run_step NAME CAP_S RESERVE_S CMD...: run CMD with a timeout of min(CAP_S, time left - RESERVE_S), where
# RESERVE_S is kept for the steps after it; record rc and seconds (124/137: timed out).
run_step() {
    local name="$1" cap="$2" reserve="$3"
    shift 3
    local left=$((DEADLINE - SECONDS - reserve))
    local limit=$((cap < left ? cap : left))
    if ((limit < 20)); then
        echo "=== [$name] skipped: only ${left}s left of the ${BUDGET}s budget"
        printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
        return
    fi
    echo "=== [$name] (timeout ${limit}s) $*"
    local t0=$SECONDS
    STEP_LIMIT=$limit timeout --signal=INT --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "=== [$name] rc=$rc in $((SECONDS - t0))s"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS"
}

not_run() {  # not_run NAME WHY
    echo "=== [$1] not run: $2"
    printf '%s\t%s\t0\n' "$1" "$2" >>"$STEPS"
}

find_tool() {
    command -v "$1" || ls /usr/local/cuda/bin/"$1" /usr/local/cuda*/bin/"$1" /opt/nvidia/*/"$1" 2>/dev/null |
        head -n 1
}

# sanitize TOOL RESERVE_S: compute-sanitizer TOOL over the short GPU subset of gpu_checks.py (a run_step),
# then its log appended to sanitizer.log
sanitize() {  # sanitize TOOL RESERVE_S [BACKEND]
    local tool="$1" backend="${3:-triton}"
    local log="$SCRATCH/sanitizer_${tool}_$backend.log"
    # no caching allocator: every tensor its own cudaMalloc, so an out-of-bounds access cannot hide in a pool
    run_step "${tool}_$backend" 35 "$2" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CS" --tool "$tool" --print-limit 20 \
        --error-exitcode 3 --log-file "$log" "$PY" bench/gpu_checks.py --sanitizer --backend "$backend" \
        --out "$SCRATCH/gc_${tool}_$backend.json"
    { echo "##### compute-sanitizer --tool $tool, backend $backend"; cat "$log" 2>/dev/null; } >>"$OUT/sanitizer.log"
}

# copy_result SRC_DIR FILE: keep one JSON of a step that writes into its own folder
copy_result() {
    if [[ -f "$1/$2" ]]; then cp "$1/$2" "$OUT/$2"; else echo "no $2 written (files: $(ls "$1" 2>/dev/null))"; fi
}

CUDA_BUILD='
import time, torch
from aselect_kernels import stats
if "cuda" not in stats.BACKENDS:
    print("the package has no cuda backend: nothing to build")
    raise SystemExit(0)
t0 = time.perf_counter()
x = torch.randn(2, 16, 8, device="cuda")
print("cuda backend:", stats.compute_stats(x, backend="cuda").shape, f"ready in {time.perf_counter() - t0:.1f} s")
'

main() {
    echo "=== run_all_gpu.sh: OUT=$OUT, budget ${BUDGET}s, smoke=$SMOKE, run $ASELECT_RUN_ID, $(date -u +%FT%TZ)"
    if compgen -G ".whl/*.whl" >/dev/null; then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SCRATCH/site" .whl/*.whl; then
            export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
            echo "=== installed wheels from .whl/: $(cd .whl && ls *.whl | tr '\n' ' ')"
        else
            echo "=== WARNING: the wheels in .whl/ failed to install; going on without them"
        fi
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # aselect_kernels from this checkout, uninstalled
    if ((HIDE_DIFFUSERS)); then
        export PYTHONPATH="$PWD/bench/no_diffusers:$PYTHONPATH"
        echo "=== --no-diffusers: diffusers hidden (bench/no_diffusers first on PYTHONPATH)"
    fi
    HAVE_DIFFUSERS=1
    if ! "$PY" -c "import diffusers" >/dev/null 2>&1; then
        HAVE_DIFFUSERS=0
        echo "!!! ============================================================================================"
        echo "!!! diffusers does NOT import: the DiT forward benchmarks and checks run on the plain DiT-XL/2 of"
        echo "!!! bench/common.py (PlainDiT), not on diffusers' DiTTransformer2DModel; gpu_validate is not run."
        echo "!!! To use diffusers, put its wheels in .whl/ (see the head of bench/run_all_gpu.sh)."
        echo "!!! ============================================================================================"
    fi

    if ((!SMOKE)); then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
            --format=csv || echo "nvidia-smi failed"
    fi
    "$PY" - <<'EOF' || echo "version probe failed"
import importlib, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for name in ("triton", "diffusers", "numpy", "pytest_benchmark"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "NOT importable:", type(exc).__name__, exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB", f"{p.total_memory / 2**30:.1f} GiB")
else:
    print("no CUDA device visible")
EOF

    if ((SMOKE)); then
        not_run cuda_build smoke
        run_step bench_stats 600 60 "$PY" bench/bench_stats.py --smoke --out "$OUT"
        run_step gpu_checks 200 30 "$PY" bench/gpu_checks.py --smoke --out "$OUT/gpu_checks.json"
        run_step profile 120 0 bash -c "'$PY' python/profile_scored_forward.py --smoke --kernel-only --iters 1 &&
            '$PY' python/profile_scored_forward.py --smoke --overlap --iters 1"
        for step in ncu memcheck racecheck pytest_bench gpu_validate block_sweep; do not_run "$step" smoke; done
    else
        run_step cuda_build 120 400 "$PY" -c "$CUDA_BUILD"
        # bench_stats skips its own late sections when its budget runs short (STEP_LIMIT minus a margin)
        run_step bench_stats 230 180 bash -c "'$PY' bench/bench_stats.py --out '$OUT' --budget-s \$((STEP_LIMIT - 15))"
        run_step gpu_checks 80 130 "$PY" bench/gpu_checks.py --out "$OUT/gpu_checks.json"
        # the CUDA C++ kernel passes the same checks; its JSON joins gpu_checks.json under "cuda_backend"
        run_step gpu_checks_cuda 60 130 "$PY" bench/gpu_checks.py --backend cuda --skip-compile \
            --out "$SCRATCH/gpu_checks_cuda.json"
        "$PY" - "$OUT/gpu_checks.json" "$SCRATCH/gpu_checks_cuda.json" <<'PYEOF' || true
import json, pathlib, sys
main, extra = (pathlib.Path(a) for a in sys.argv[1:3])
if main.is_file() and extra.is_file():
    data = json.loads(main.read_text())
    data["cuda_backend"] = json.loads(extra.read_text())
    main.write_text(json.dumps(data, indent=1))
PYEOF
        run_step ncu 60 100 bash bench/profile_kernels.sh "$OUT/ncu.txt"
        local CS
        CS="$(find_tool compute-sanitizer)"
        if [[ -n "$CS" ]]; then
            : >"$OUT/sanitizer.log"
            sanitize memcheck 80
            sanitize racecheck 65
            sanitize memcheck 60 cuda
            sanitize racecheck 45 cuda
            grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$OUT/sanitizer.log" || echo "sanitizer: no summary line"
        else
            not_run memcheck "compute-sanitizer not found"
            not_run racecheck "compute-sanitizer not found"
        fi
        run_step pytest_bench 40 45 "$PY" -m pytest bench/test_bench_stats.py -q -p no:cacheprovider \
            --benchmark-json="$OUT/pytest_bench.json" --benchmark-columns=min,median,max,rounds
        if ((HAVE_DIFFUSERS)); then
            run_step gpu_validate 60 20 "$PY" bench/gpu_validate.py --out "$SCRATCH/validate"
            copy_result "$SCRATCH/validate" gpu_validate.json
        else
            not_run gpu_validate "diffusers missing"
        fi
        run_step block_sweep 40 0 "$PY" bench/block_sweep.py --budget-s 32 --out "$SCRATCH/sweep"
        copy_result "$SCRATCH/sweep" block_sweep.json
    fi
    OUT="$OUT" STEPS="$STEPS" SLUG="$SLUG" "$PY" bench/run_all_summary.py
}

main 2>&1 | tee "$OUT/run_all.log"
# the rehearsal fails when a step failed (a GPU run keeps exit status 0: its summary and JSON say what failed)
STATUS=0
FAILED_STEPS="$(awk -F'\t' '($2 ~ /^[0-9]+$/ && $2 != "0") || $2 == "skipped" {printf "%s(%s) ", $1, $2}' "$STEPS")"
if ((SMOKE)) && [[ -n "$FAILED_STEPS" ]]; then
    echo "=== rehearsal FAILED: $FAILED_STEPS" | tee -a "$OUT/run_all.log"
    STATUS=1
fi
rm -rf "$STEPS" "$SCRATCH"
exit "$STATUS"
