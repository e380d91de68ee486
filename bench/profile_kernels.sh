#!/usr/bin/env bash
# Nsight Compute profile of the statistics kernels on the headline shape, and their SASS, in one text file.
#
#     bash bench/profile_kernels.sh OUT_FILE [N,L,C]
#
# 1. ncu on every kernel between the cudaProfilerStart/Stop of
#    `python/profile_scored_forward.py --kernel-only` (each backend once, [128, 256, 1152] bf16 by default; the NVTX
#    range of each kernel names its backend):
#    achieved DRAM and L2 bytes, registers, local-memory (spill) traffic, occupancy, warp stall reasons,
#    global-load requests vs sectors (16-byte loads give 16 sectors per warp request) and the instruction mix.
#    If this ncu rejects one of the extra metrics, the sections alone are collected.
# 2. The SASS of the kernels just compiled: Triton's cubins (TRITON_CACHE_DIR) and any compiled extension of the
#    package (TORCH_EXTENSIONS_DIR, or a built .so in the checkout): resource usage (registers, stack, local,
#    shared memory), a histogram of the load/store/MMA opcodes with their widths, and the opcode totals.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out="${1:?usage: profile_kernels.sh OUT_FILE [N,L,C]}"
shape="${2:-128,256,1152}"
PY="${PYTHON:-python3}"
find_tool() {
    command -v "$1" || ls /usr/local/cuda/bin/"$1" /usr/local/cuda*/bin/"$1" /opt/nvidia/nsight-compute/*/"$1" \
        2>/dev/null | head -n 1
}
ncu="$(find_tool ncu)"
cuobjdump="$(find_tool cuobjdump)"
tmp="$(mktemp)"
: >"$out"

metrics=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,lts__t_sectors_srcunit_tex_op_read.sum
metrics+=,launch__registers_per_thread,launch__occupancy_limit_registers
metrics+=,sm__warps_active.avg.pct_of_peak_sustained_active
metrics+=,l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum,l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum
metrics+=,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum
sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables
    --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats
    --section InstructionStats --section ComputeWorkloadAnalysis)
target=("$PY" python/profile_scored_forward.py --kernel-only --iters 1 --shape "$shape")
if [[ -n "$ncu" ]]; then
    echo "##### ncu $("$ncu" --version | tail -n 1): shape $shape, the kernels of each backend's call" >>"$out"
    if ! "$ncu" --nvtx --profile-from-start off --launch-count 8 --clock-control none "${sections[@]}" \
        --metrics "$metrics" --page details --log-file "$tmp" "${target[@]}"; then
        echo "##### ncu with the extra metrics failed ($(grep -m1 -i error "$tmp")); sections only" >>"$out"
        "$ncu" --nvtx --profile-from-start off --launch-count 8 --clock-control none "${sections[@]}" \
            --page details --log-file "$tmp" "${target[@]}" || echo "##### ncu failed" >>"$out"
    fi
    cat "$tmp" >>"$out"
else
    echo "##### ncu not found" >>"$out"
    "${target[@]}" >>"$out" 2>&1  # still compiles the kernels for the SASS below
fi

if [[ -z "$cuobjdump" ]]; then
    echo "##### cuobjdump not found: no SASS" >>"$out"
    exit 0
fi
mapfile -t binaries < <(
    find "${TRITON_CACHE_DIR:-$HOME/.triton/cache}" -name '*.cubin' 2>/dev/null
    find "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}" -name '*.so' 2>/dev/null | grep -i aselect
    find aselect_kernels csrc build -name '*.so' 2>/dev/null
)
for bin in "${binaries[@]}"; do
    echo "##### SASS of $bin" >>"$out"
    "$cuobjdump" --dump-resource-usage "$bin" 2>&1 | grep -E "Function|REG|STACK|LOCAL|SHARED" | head -n 20 >>"$out"
    "$cuobjdump" -sass "$bin" >"$tmp" 2>&1
    echo "--- load / store / MMA opcodes (with widths), count" >>"$out"
    grep -oE '\b(LDG|STG|LDS|STS|LDSM|LDGSTS|HMMA|IMMA|HGMMA|WGMMA|MMA|UTMALDG|SHFL)[A-Z0-9._]*' "$tmp" |
        sort | uniq -c | sort -rn | head -n 30 >>"$out"
    echo "--- opcode totals" >>"$out"
    grep -oE '^\s+/\*[0-9a-f]{4}\*/\s+[A-Z][A-Z0-9]*' "$tmp" | awk '{print $2}' | sort | uniq -c | sort -rn |
        head -n 25 >>"$out"
done
rm -f "$tmp"
