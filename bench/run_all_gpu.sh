#!/usr/bin/env bash
# Every GPU check and benchmark of aselect_kernels in ONE command, for a device session.
#
# From the device tool (one call; the repo root is the working directory there):
#     run(command="bash bench/run_all_gpu.sh", timeout_s=595, carry=[".whl"])
# carry [".whl"] only if diffusers wheels were prepared (see below); without them the forward benchmark uses the
# self-contained plain DiT-XL/2 of bench/bench_stats.py and says so in its JSON.  The whole run is held to
# RUN_ALL_BUDGET_S (default 570 s) by per-step timeouts; expected wall time on an H100 is about 4-6 minutes.
#
# Steps (each guarded: a failure or timeout is recorded and the next step still runs; every step writes its JSON
# as it goes, so a step cut short keeps what it measured):
#   0. install carried wheels (.whl/*.whl -> /tmp/site, the device README's recipe); print GPU, driver, versions
#   1. bench/gpu_checks.py          -> $OUT/gpu_checks.json      correctness (poisoned buffers, fp64 reference,
#                                                                 determinism, torch.compile fullgraph)
#   2. bench/bench_stats.py         -> $OUT/<device-slug>.json   copy bandwidth, kernel vs eager vs compile,
#                                                                 DiT-XL/2 scored forward, targets
#   3. pytest bench (benchmarks)    -> $OUT/pytest_bench.json
#   4. compute-sanitizer memcheck over gpu_checks.py --sanitizer -> $OUT/sanitizer.log (ERROR SUMMARY line)
#   5. bench/block_sweep.py         -> $OUT/block_sweep.json     block sizes x warps of the kernel, 4 shapes
#   6. ncu on the tap kernels of python/profile_scored_forward.py -> $OUT/ncu_tap_kernel.csv (details page)
#   7. only with RUN_GPU_VALIDATE=1: bench/gpu_validate.py -> $OUT/gpu_validate.json, selection vs the exhaustive
#      probe grid timed on the GPU (the grid alone needs about 505 s on an H100: give it its own call)
#   then $OUT/steps.json (rc and seconds per step) and a short summary printed last; $OUT/run_all.log holds it all.
# $OUT is the device tool's output folder; elsewhere the results go to bench/results.  At most 8 files land in
# $OUT (the tool returns at most 8).
#
# Preparing the diffusers wheels (here, once; .whl/ is gitignored and must stay under ~40 MB):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl diffusers==0.42.1 importlib_metadata==8.7.0
#     unzip -p .whl/diffusers-*.whl '*/METADATA' | grep ^Requires-Dist     # skip the 'extra ==' lines
# diffusers 0.42.1 needs importlib_metadata, filelock, huggingface-hub>=1.32,<3, numpy, regex, requests,
# safetensors>=0.8, Pillow.  The device image (KINDS.md) has all of them (huggingface_hub 1.33.0, safetensors
# 0.8.0) except importlib_metadata, which diffusers imports only on Python < 3.8 but which is carried anyway:
# 8.7.0, whose only need (zipp) is in the image (10.x also wants lazy-importer).  Do not carry a second copy of a
# package the image has.  The two wheels come to about 6.4 MB.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${RUN_ALL_BUDGET_S:-570}"
DEADLINE=$((SECONDS + BUDGET))
STEPS="$(mktemp)"
export PYTHONUNBUFFERED=1

# run_step NAME MAX_S RESERVE_S CMD...: run CMD with a timeout of min(MAX_S, time left - RESERVE_S), where
# RESERVE_S is kept for the steps after it; record rc and seconds (124/137: timed out).
run_step() {
    local name="$1" max="$2" reserve="$3"
    shift 3
    local left=$((DEADLINE - SECONDS - reserve))
    local limit=$((max < left ? max : left))
    if ((limit < 20)); then
        echo "=== [$name] skipped: only ${left}s left of the ${BUDGET}s budget"
        printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
        return
    fi
    echo "=== [$name] (timeout ${limit}s) $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    local rc=$?
    echo "=== [$name] rc=$rc in $((SECONDS - t0))s"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS"
}

main() {
    echo "=== run_all_gpu.sh: OUT=$OUT budget ${BUDGET}s, $(date -u +%FT%TZ)"
    if compgen -G ".whl/*.whl" >/dev/null; then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl; then
            export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
            echo "=== installed carried wheels: $(cd .whl && ls *.whl | tr '\n' ' ')"
        else
            echo "=== WARNING: carried wheels failed to install; going on without them"
        fi
    else
        echo "=== no .whl/ carried: diffusers only if the image has it (else the plain DiT fallback)"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # aselect_kernels from this checkout, uninstalled

    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
        --format=csv || echo "nvidia-smi failed"
    "$PY" - <<'EOF' || echo "version probe failed"
import importlib, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for name in ("triton", "diffusers", "numpy", "pytest_benchmark", "huggingface_hub"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "NOT importable:", type(exc).__name__, exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB", f"{p.total_memory / 2**30:.1f} GiB")
else:
    print("NO CUDA DEVICE VISIBLE")
EOF

    run_step gpu_checks 170 330 "$PY" bench/gpu_checks.py --out "$OUT/gpu_checks.json"
    run_step bench_stats 240 250 "$PY" bench/bench_stats.py --out "$OUT"
    run_step pytest_bench 100 210 "$PY" -m pytest bench -q -p no:cacheprovider \
        --benchmark-json="$OUT/pytest_bench.json" --benchmark-columns=min,median,max,rounds

    local cs
    cs="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
        /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)"
    if [[ -n "$cs" ]]; then
        # no caching allocator: every tensor its own cudaMalloc, so an out-of-bounds access cannot hide in a pool
        run_step sanitizer 100 170 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --print-limit 20 \
            --error-exitcode 3 --log-file "$OUT/sanitizer.log" \
            "$PY" bench/gpu_checks.py --sanitizer --out /tmp/gpu_checks_sanitizer.json
        grep -h "ERROR SUMMARY" "$OUT/sanitizer.log" || echo "sanitizer: no ERROR SUMMARY line (see sanitizer.log)"
    else
        echo "=== [sanitizer] compute-sanitizer not found"
        printf 'sanitizer\tnot-found\t0\n' >>"$STEPS"
    fi

    run_step block_sweep 150 80 "$PY" bench/block_sweep.py --out "$OUT"

    local ncu
    ncu="$(command -v ncu || ls /usr/local/cuda/bin/ncu /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu \
        2>/dev/null | head -n 1)"
    if [[ -n "$ncu" ]]; then
        # the fused kernel inside the DiT-XL/2 forward's tap ranges (see python/profile_scored_forward.py)
        run_step ncu 120 0 "$ncu" --nvtx --nvtx-include "aselect.tap/" --set full --clock-control none \
            -k regex:_sample_stats_kernel --launch-count 2 --csv --page details --log-file "$OUT/ncu_tap_kernel.csv" \
            "$PY" python/profile_scored_forward.py --iters 1
    else
        echo "=== [ncu] Nsight Compute not found"
        printf 'ncu\tnot-found\t0\n' >>"$STEPS"
    fi

    if [[ "${RUN_GPU_VALIDATE:-0}" == 1 ]]; then
        run_step gpu_validate 590 0 "$PY" bench/gpu_validate.py --out "$OUT"
    fi

    OUT="$OUT" STEPS="$STEPS" "$PY" - <<'EOF'
import glob, json, os
out, rows = os.environ["OUT"], [line.rstrip("\n").split("\t") for line in open(os.environ["STEPS"])]
steps = {name: {"rc": rc, "seconds": int(sec)} for name, rc, sec in rows}
json.dump(steps, open(os.path.join(out, "steps.json"), "w"), indent=1)
print("\n==================== SUMMARY ====================")
for name, s in steps.items():
    print(f"step {name:13} rc={s['rc']:>9} {s['seconds']:4d}s")
try:
    gc = json.load(open(os.path.join(out, "gpu_checks.json")))
    sm = gc.get("summary", {})
    print("gpu_checks:", "ALL PASSED" if sm.get("passed") else f"FAILED {sm.get('failed')}",
          "| poison hits", sm.get("poison_hits"), "| compile", gc.get("compile", {}).get("fullgraph"),
          gc.get("compile", {}).get("explain"))
except Exception as exc:
    print("gpu_checks: no result:", exc)
skip = {"gpu_checks.json", "pytest_bench.json", "steps.json", "gpu_validate.json"}
for path in sorted(p for p in glob.glob(os.path.join(out, "*.json")) if os.path.basename(p) not in skip):
    r = json.load(open(path))
    print(f"bench {os.path.basename(path)}: {r['env'].get('device')}, torch {r['env']['torch']}, "
          f"triton {r['env'].get('triton')}, errors {list(r.get('errors', {}))}")
    cp = r.get("copy", {})
    if cp:
        print(f"  copy {cp['copy_gbps']:.0f} GB/s, read {cp['read_gbps']:.0f} GB/s")
    for c in r.get("kernel", {}).get("cases", []):
        if "eager" in c:
            print(f"  {c['name']:20} {c['kernel_device_ms'] * 1e3:8.1f} us {c['kernel_gbps']:6.0f} GB/s "
                  f"{c.get('kernel_pct_of_copy', 0):5.1f}% copy  x{c['speedup_vs_eager']:.1f} eager  "
                  f"x{c.get('speedup_vs_compile') or float('nan'):.1f} compile")
    f = r.get("forward", {})
    if "fused" in f:
        print(f"  forward {f['model']} b{f['batch']}: {f['unscored']['median_ms']:.1f} ms unscored, "
              f"eager ref +{f['eager_reference']['overhead_pct']:.1f}%, fused +{f['fused']['overhead_pct']:.2f}% "
              f"time, +{f['fused'].get('extra_peak_pct', float('nan')):.2f}% peak memory")
    for name, t in r.get("targets", {}).items():
        state = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"  target {name:22} {t['target']:>7} value {value:>8} {state}")
try:
    gv = json.load(open(os.path.join(out, "gpu_validate.json")))
    print("gpu_validate:", {k: v.get("wall_s") for k, v in gv["steps"].items()}, "ratios", gv.get("ratios"))
except Exception as exc:
    print("gpu_validate: no result:", exc)
try:
    pb = json.load(open(os.path.join(out, "pytest_bench.json")))
    for b in pb.get("benchmarks", []):
        print(f"pytest {b['name']:48} median {b['stats']['median'] * 1e6:10.1f} us")
except Exception as exc:
    print("pytest_bench: no result:", exc)
EOF
}

main 2>&1 | tee "$OUT/run_all.log"
rm -f "$STEPS"
