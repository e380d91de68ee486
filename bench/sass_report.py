"""A machine-code budget of both statistics kernels for sm_90, read from their cubins on a machine without a GPU.

``python bench/sass_report.py [--out FILE] [--check FILE] [--markdown]``

For every shape of ``bench/RESULTS.md`` and both backends (the Triton kernel as ``fused_stats`` would launch it on
an sm_90 device; the CUDA C++ kernel of ``csrc/`` built by ``nvcc -cubin -arch=sm_90``), the cubin is disassembled
(``nvdisasm -g``, the copy Triton bundles) and read:

* **resources**: registers, local memory (spill) bytes and shared memory per program, from ``cuobjdump
  -res-usage`` and the launch's dynamic shared memory; resident programs and warps per SM from the register file
  (65,536 registers, allocated per warp in units of 256), 228 KB of shared memory (1 KB reserved per program) and
  the 64-warp limit.
* **the steady-state loop**: loops are the spans closed by *backward branches* (a ``BRA`` whose target lies at or
  before it).  Loads of ``X`` are the global loads (``LDG``, ``LDGSTS``) whose line information points at the
  source line that reads ``X``.  The steady-state loop is the first innermost loop, in program order, that holds a
  load of ``X`` (the CUDA kernel: the one closed on its line marked "the steady-state loop" that computes the
  statistics, ``MUFU``; with several basis passes, averaged with the further passes' loop).  Its instructions are
  counted once per iteration (predicated-off instructions issue too; both sides of a branch inside the body are
  counted: an upper bound), nested loops weighted by their trip counts, times the warps of a program, divided by
  the elements of ``X`` one iteration consumes (padding excluded).  Each instruction is sorted into memory (loads,
  stores, copies, shuffles, atomics), tensor core (``HMMA``, ``HGMMA`` and its warpgroup fences), MUFU, ALU, or
  control (branches, barriers, waits).  "Around" adds the rest of the work-item loop (the loop that encloses the
  steady-state loop, outside its nested loops), counted once per item; the CUDA kernel's also adds what its tail
  loop (the tiles whose copies are the next pass's or item's) issues beyond the steady-state loop.
* **loads in flight**: the steady-state loop's ``DEPBAR.LE SB0, n`` says how many copy groups stay outstanding
  while it computes; with ``g`` groups per iteration that is ``n // g`` tiles ahead.  Bytes in flight per SM are
  ``max(1, tiles ahead) x X tile bytes x resident programs``.
* **the grid**: work items, programs, waves on 132 SMs and the fill of the last wave, per N.
* **traffic**: how often ``X`` is read (1.0 = once) and the basis bytes read from L2 per byte of ``X``.

The ceilings (fractions of the read ceiling, capped at 1), for the H100 (3.0 TB/s) and the H200 (4.2 TB/s) at
1.755 GHz on 132 SMs: **issue** (4 warp-instructions per clock per SM against the elements per clock the read
ceiling brings: 6.5 bf16 on the H100, 9.1 on the H200; fp32 half as many), **latency** (Little's law, 700 ns: the
bytes in flight per SM against read ceiling x latency; when the loop waits on the copy it has just issued, a
program moves one tile per latency plus one body's issue time), **tensor** (datasheet dense rates: 2048 bf16/fp16
or 1024 TF32 multiply-adds per clock per SM), and **tail** (the work items over the slots of all waves).  The
prediction is the least of the SM ceilings times the tail.  These are predictions from static facts, not
measurements; ``bench/NOTES.md`` explains the model and how a GPU run calibrates it.

``--check FILE`` regenerates the report and exits 1 when a figure differs from FILE (CI: the committed
``bench/results/sass_sm90.json``), unless the compilers' versions differ from the ones FILE was made with.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aselect_kernels.ops import cuda_stats  # noqa: E402
from aselect_kernels.ops import fused_stats as fused  # noqa: E402
from aselect_kernels.ops.stats_kernel import fused_sample_stats_kernel  # noqa: E402
from aselect_kernels.reference import StatsConfig  # noqa: E402

ARCH = 90
SMS = 132
CLOCK_HZ = 1.755e9
LATENCY_S = 700e-9
ISSUE_PER_CLOCK = 4  # warp-instructions per clock per SM (4 schedulers)
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED = 1024  # per program (block), reserved by the driver on sm_90
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
READ_TBPS = {"h100": 3.0, "h200": 4.2}
TENSOR_FMA_PER_CLOCK = {"bf16": 2048, "fp16": 2048, "tf32": 1024}  # dense, per SM (datasheet rates)

#: The shapes of bench/RESULTS.md: (name, N, L, C, dtype, config).
CASES = [
    *[(f"xl_n{n}_bf16_1d", n, 256, 1152, torch.bfloat16, StatsConfig()) for n in (1, 8, 128, 1024)],
    *[(f"xl_n{n}_bf16_2d", n, 256, 1152, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(16, 16)))
      for n in (1, 8, 128, 1024)],
    ("sd3_n32_bf16_2d", 32, 1024, 1536, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(32, 32))),
    ("flux_n4_bf16_2d", 4, 4096, 3072, torch.bfloat16, StatsConfig(hfr_dims=2, grid=(64, 64))),
    ("emb_n1024_fp32_1d", 1024, 196, 96, torch.float32, StatsConfig()),
    ("emb_n1024_fp32_2d", 1024, 196, 96, torch.float32, StatsConfig(hfr_dims=2, grid=(14, 14))),
    ("emb_hidden_n1024_fp32_1d", 1024, 196, 384, torch.float32, StatsConfig()),
    ("emb_hidden_n1024_bf16_1d", 1024, 196, 384, torch.bfloat16, StatsConfig()),
]
HEADLINE = "xl_n128_bf16_1d"
LARGE_BYTES = 16 * 2**20  # the targets' "every listed shape of >= 16 MB"

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

# Source lines that read X, per backend (matched against the text of the line the line information names).
X_LOAD_LINE = {
    "triton": re.compile(r"tl\.load\(x_(?:base|block|tile) \+"),
    "cuda": re.compile(r"cp\.async\.cg\.shared\.global.*// reads X$|Elem<T>::bits\(\*q\)"),
}
# CUDA: the source lines that close the tile loops of a pass (csrc/aselect_stats.cu): the steady state (the
# producer copies the same pass's tiles) and the tail (it copies the next pass's or item's first tiles).
CUDA_LOOP_LINE = {"steady": re.compile(r"// the steady-state loop"), "tail": re.compile(r"// the next segment's")}

MEMORY_OPS = ("LDG", "STG", "LDS", "STS", "LDSM", "LDGSTS", "LD", "ST", "LDL", "STL", "ATOM", "ATOMG", "ATOMS",
              "RED", "REDG", "SHFL", "UTMALDG", "UBLKCP", "LDC", "ULDC", "UTMASTG", "STSM")
TENSOR_OPS = ("HMMA", "HGMMA", "IMMA", "WARPGROUP", "BMMA", "DMMA")
CONTROL_OPS = ("BRA", "BRX", "JMP", "CALL", "RET", "EXIT", "BAR", "BSSY", "BSYNC", "WARPSYNC", "DEPBAR", "NOP",
               "YIELD", "MEMBAR", "LDGDEPBAR", "SYNCS", "ELECT", "ERRBAR", "CCTL", "FENCE", "BPT", "KILL",
               "NANOSLEEP", "ACQBULK", "ARRIVES", "UCGABAR_ARV", "UCGABAR_WAIT", "PREEXIT", "VOTE", "VOTEU")


# ---- disassembly -------------------------------------------------------------------------------------------
@dataclass
class Instr:
    addr: int
    text: str
    line: tuple[str, int] | None

    @property
    def opcode(self) -> str:
        body = re.sub(r"^@!?U?P[T\d]+\s+", "", self.text)
        return body.split()[0].split(".")[0]


@dataclass
class Function:
    name: str
    instrs: list[Instr] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)


_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_FUNC = re.compile(r"^\.text\.(\S+):")


def disassemble(cubin: Path) -> dict[str, Function]:
    """Every function of a cubin: instructions with their source lines, and the branch labels."""
    text = subprocess.run([str(BIN / "nvdisasm"), "-g", "-c", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    funcs: dict[str, Function] = {}
    cur: Function | None = None
    line: tuple[str, int] | None = None
    pending: list[str] = []
    for raw in text.splitlines():
        s = raw.strip()
        if m := _FUNC.match(s):
            cur = funcs.setdefault(m.group(1), Function(m.group(1)))
            line, pending = None, []
        elif cur is None:
            continue
        elif m := _LINE.search(s):
            line = (m.group(1), int(m.group(2)))
        elif m := _LABEL.match(s):
            pending.append(m.group(1))
        elif m := _INS.search(s):
            addr = int(m.group(1), 16)
            for label in pending:
                cur.labels[label] = addr
            pending = []
            cur.instrs.append(Instr(addr, m.group(2), line))
    return funcs


def resource_usage(cubin: Path) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage``: per function, REG, LOCAL (bytes per thread: spills and stack), SHARED (static)."""
    text = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    out: dict[str, dict[str, int]] = {}
    name = None
    for s in text.splitlines():
        if m := re.match(r"\s*Function (\S+):", s):
            name = m.group(1)
        elif name and "REG:" in s:
            out[name] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", s)}
    return out


@cache
def _source_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def is_x_load(ins: Instr, backend: str) -> bool:
    if ins.opcode not in ("LDG", "LDGSTS") or ins.line is None:
        return False
    lines = _source_lines(ins.line[0])
    return 0 < ins.line[1] <= len(lines) and bool(X_LOAD_LINE[backend].search(lines[ins.line[1] - 1]))


def loops(fn: Function) -> list[tuple[int, int]]:
    """``(first, last)`` address of every loop: the span of each backward branch."""
    spans = []
    for ins in fn.instrs:
        if ins.opcode == "BRA":
            m = re.search(r"(\.L_x_\d+)", ins.text)
            if m and fn.labels.get(m.group(1), ins.addr + 1) <= ins.addr:
                spans.append((fn.labels[m.group(1)], ins.addr))
    return sorted(set(spans))


def inside(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Loop ``a`` lies within loop ``b`` (and is not ``b``)."""
    return b[0] <= a[0] and a[1] <= b[1] and a != b


def classify(op: str) -> str:
    if op in TENSOR_OPS:
        return "tensor"
    if op == "MUFU":
        return "mufu"
    if op in CONTROL_OPS:
        return "control"
    if op in MEMORY_OPS:
        return "memory"
    return "alu"


@dataclass
class LoopReport:
    """The steady-state loop of one kernel and the work-item loop around it, read from the SASS."""

    span: tuple[int, int]
    counts: dict[str, float]  # per iteration and warp, nested loops weighted
    body: int  # instructions of the body, nested loops weighted
    around: int  # instructions of the enclosing loop outside every nested loop, once per item
    nested: list[dict]
    x_loads: int
    copy_groups: int  # LDGDEPBAR per iteration
    wait_groups: int | None  # n of the loop's DEPBAR.LE SB0, n (None: no copy wait)


def innermost_x_loops(fn: Function, backend: str) -> list[tuple[int, int]]:
    """The innermost loops that hold a load of X, in program order."""
    spans = loops(fn)
    x_addrs = [i.addr for i in fn.instrs if is_x_load(i, backend)]
    with_x = [s for s in spans if any(s[0] <= a <= s[1] for a in x_addrs)]
    return sorted(s for s in with_x if not any(inside(t, s) for t in with_x))


def loop_report(fn: Function, backend: str, nested_trips, steady: tuple[int, int] | None = None) -> LoopReport:
    """Find the steady-state loop (see the module docstring; or take ``steady``) and count it;
    ``nested_trips(kind, index)`` gives the trip count of a nested loop of ``kind`` ("mma", "basis", "x", "other"),
    ``index``-th of its kind."""
    spans = loops(fn)
    if steady is None:
        innermost = innermost_x_loops(fn, backend)
        if not innermost:
            raise RuntimeError(f"{fn.name}: no loop holds a load of X")
        steady = innermost[0]
    body = [i for i in fn.instrs if steady[0] <= i.addr <= steady[1]]
    nested = [s for s in spans if inside(s, steady) and not any(inside(s, t) and inside(t, steady) for t in spans)]
    counts: Counter = Counter()
    for ins in body:
        counts[classify(ins.opcode)] += 1
    nested_info = []
    seen: Counter = Counter()
    for s in nested:
        sub = [i for i in body if s[0] <= i.addr <= s[1]]
        ops = {i.opcode for i in sub}
        kind = ("x" if any(is_x_load(i, backend) for i in sub) else "mma" if ops & set(TENSOR_OPS)
                else "basis" if "LDG" in ops else "other")
        trips = nested_trips(kind, seen[kind])
        seen[kind] += 1
        sub_counts = Counter(classify(i.opcode) for i in sub)
        for k, v in sub_counts.items():
            counts[k] += (trips - 1) * v
        nested_info.append({"kind": kind, "instructions": len(sub), "trips": trips})
    enclosing = [s for s in spans if inside(steady, s)]
    around = 0
    if enclosing:
        outer = max(enclosing, key=lambda s: s[1] - s[0])
        inner = [s for s in spans if inside(s, outer)]
        around = sum(1 for i in fn.instrs if outer[0] <= i.addr <= outer[1]
                     and not any(s[0] <= i.addr <= s[1] for s in inner))
    waits = [int(m.group(1), 16) for i in body if (m := re.search(r"DEPBAR\.LE SB0, (0x[0-9a-f]+)", i.text))]
    return LoopReport(
        span=steady, counts=dict(counts), body=int(sum(counts.values())), around=around, nested=nested_info,
        x_loads=sum(1 for i in body if is_x_load(i, backend)),
        copy_groups=sum(1 for i in body if i.opcode == "LDGDEPBAR"), wait_groups=min(waits) if waits else None)


# ---- the Triton kernel -------------------------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def compile_triton(x: torch.Tensor, config: StatsConfig, workdir: Path, tag: str) -> tuple[dict, Path]:
    """Compile the launch ``fused_stats(x, config)`` would make on an sm_90 device; its plan meta and cubin."""
    plan = fused.launch_plan(x, config, target=(ARCH // 10, ARCH % 10))
    fn = fused_sample_stats_kernel
    target = GPUTarget("cuda", ARCH, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*plan.args, **plan.meta)
    options, signature, constexprs, attrs = fn._pack_args(backend, plan.meta, bound, specialization, options)
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    path = workdir / f"triton_{tag}.cubin"
    path.write_bytes(kernel.asm["cubin"])
    return {"meta": dict(plan.meta), "shared": int(kernel.metadata.shared), "num_warps": kernel.metadata.num_warps,
            "args": plan.args}, path


def triton_case(name: str, n: int, length: int, channels: int, dtype: torch.dtype, config: StatsConfig,
                workdir: Path) -> dict:
    x = torch.zeros(1, length, channels, dtype=dtype)
    tile = fused.kernel_tiling(length, channels, config, dtype, (ARCH // 10, ARCH % 10))
    info, cubin = _compiled_triton(length, channels, dtype, config, workdir)
    fn = next(iter(disassemble(cubin).values()))
    res = next(iter(resource_usage(cubin).values()))
    meta = info["meta"]
    one_tile = bool(meta["ONE_TILE"])
    k_low = fused.low_rows(length, config)
    num_kb = max(1, math.ceil(k_low / tile.block_k)) if k_low else 0
    num_cb = triton.cdiv(channels, tile.block_c)
    tiles_l = 1 if one_tile else triton.cdiv(length, tile.block_l)
    groups = fused.num_groups(length, channels, tile)

    def trips(kind: str, index: int) -> int:
        if kind == "x":  # a further basis row block re-reading the tiles
            return max(num_kb - 1, 0) * tiles_l
        if kind == "mma" or kind == "basis":
            return max(num_kb - 1, 0)
        return 1

    lr = loop_report(fn, "triton", trips)
    elem = x.element_size()
    # iterations of the steady-state loop per sample: token tiles x channel blocks (tiled), or channel blocks.
    # The loop walks the full token tiles only; a ragged last tile runs after it, once per item ("around").
    iters = num_cb * (length // tile.block_l) if not one_tile else num_cb
    elems_per_iter = length * channels / iters
    tile_bytes = min(tile.block_l, length) * tile.block_c * elem
    items_per_sample = groups
    x_reads = 1.0 if one_tile or num_kb <= 1 else float(num_kb)
    basis_elem = 4 if dtype == torch.float32 else 2 * elem
    rows = num_kb * tile.block_k
    if one_tile and tile.hoist_basis:
        basis_per_sample = (rows - tile.block_k) * length * basis_elem * num_cb  # first row block stays on chip
    else:
        basis_per_sample = rows * tile.block_l * basis_elem * tiles_l * num_cb
    return _finish(name, "triton", n, length, channels, dtype, config, lr, warps=info["num_warps"],
                   regs=res["REG"], local=res["LOCAL"], smem=info["shared"],
                   programs_per_sm_cap=tile.programs_per_sm, items_per_sample=items_per_sample,
                   elems_per_iter=elems_per_iter, tile_bytes=tile_bytes, x_reads=x_reads,
                   basis_l2_per_x=basis_per_sample / (length * channels * elem), fma_per_element=_fma(dtype, rows),
                   tiling={"block_l": tile.block_l, "block_c": tile.block_c, "block_k": tile.block_k,
                           "group_c": tile.group_c if one_tile else 1, "num_stages": tile.num_stages,
                           "num_warps": info["num_warps"], "one_tile": one_tile})


_TRITON_CACHE: dict = {}


def _compiled_triton(length, channels, dtype, config, workdir):
    key = (length, channels, dtype, config)
    if key not in _TRITON_CACHE:
        x = torch.zeros(1, length, channels, dtype=dtype)
        _TRITON_CACHE[key] = compile_triton(x, config, workdir, f"{length}_{channels}_{_dtype_name(dtype)}_"
                                            f"{config.hfr_dims}d")
    return _TRITON_CACHE[key]


def _fma(dtype: torch.dtype, rows: int) -> tuple[float, str]:
    """Tensor-core multiply-adds per element of X and their rate's key: hi/lo split (2 dots) or tf32x3 (3)."""
    return (3.0 * rows, "tf32") if dtype == torch.float32 else (2.0 * rows, "bf16")


# ---- the CUDA C++ kernel -----------------------------------------------------------------------------------
K_THREADS, K_BLOCK_C, K_TILE_L = 256, 128, 32
PLAN_FIELDS = ("num_cb", "num_tiles", "kp", "frags", "pass_rows", "num_pass", "resident", "stages", "stage_bytes",
               "vec", "smem_bytes")


def _align128(b: int) -> int:
    return (b + 127) // 128 * 128


@lru_cache(maxsize=1)
def _plan_library(workdir: Path) -> ctypes.CDLL:
    """``csrc/emulate_stats.cpp`` built for the host: its ``aselect_emulate_plan`` is the launcher's ``make_plan``."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise RuntimeError("sass_report: the CUDA plan needs a host C++ compiler (g++, c++ or clang++)")
    lib = workdir / "libaselect_plan.so"
    subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", f"-I{cuda_stats.CSRC}",
                    str(cuda_stats.CSRC / "emulate_stats.cpp"), "-o", str(lib)], check=True, capture_output=True,
                   text=True)
    dll = ctypes.CDLL(str(lib))
    i64 = ctypes.c_int64
    dll.aselect_emulate_plan.argtypes = [i64, i64, ctypes.c_int, ctypes.c_int, ctypes.c_uint64, i64, i64, i64,
                                         ctypes.c_void_p]
    dll.aselect_emulate_plan.restype = None
    return dll


def cuda_plan(length: int, channels: int, kp: int, dtype: torch.dtype, workdir: Path) -> dict:
    """The launch plan of ``csrc/aselect_stats_math.h`` (``make_plan``) for a contiguous, aligned ``[N, L, C]``."""
    out = (ctypes.c_int * len(PLAN_FIELDS))()
    code = cuda_stats.DTYPE_CODES[dtype]
    _plan_library(workdir).aselect_emulate_plan(length, channels, kp, code, 0, length * channels, channels, 1, out)
    return dict(zip(PLAN_FIELDS, out, strict=True))


@lru_cache(maxsize=1)
def compile_cuda(workdir: Path) -> Path:
    path = workdir / "aselect_stats.cubin"
    subprocess.run(["nvcc", f"-arch=sm_{ARCH}", "-O3", "-std=c++17", "-lineinfo", "-cubin", "-o", str(path),
                    str(cuda_stats.CSRC / "aselect_stats.cu")], check=True, capture_output=True, text=True)
    return path


def cuda_loops(fn: Function) -> dict[str, tuple[int, int]]:
    """The tile loops of the CUDA kernel, by the source line that closes them: ``steady`` and ``tail`` of pass 0
    (they compute the statistics: MUFU.EX2), ``further`` (the steady state of the further passes, projection only)."""
    found: dict[str, tuple[int, int]] = {}
    for span in innermost_x_loops(fn, "cuda"):
        body = [i for i in fn.instrs if span[0] <= i.addr <= span[1]]
        close = body[-1].line
        text = _source_lines(close[0])[close[1] - 1] if close else ""
        stats = any(i.opcode == "MUFU" for i in body)
        for role, pattern in CUDA_LOOP_LINE.items():
            if pattern.search(text):
                key = role if stats else ("further" if role == "steady" else "further_tail")
                found.setdefault(key, span)
    if "steady" not in found:
        raise RuntimeError(f"{fn.name}: no steady-state loop (a loop closed on a line marked {CUDA_LOOP_LINE})")
    return found


def cuda_case(name: str, n: int, length: int, channels: int, dtype: torch.dtype, config: StatsConfig,
              workdir: Path) -> dict:
    """The CUDA kernel's budget.  Per tile the loop counted is pass 0's steady state, averaged with the further
    passes' steady state when there are several passes (each re-reads X: the prediction divides by the reads).
    Per item it adds the rest of the item loop (the tile whose copy is a pass's last, the reductions) and the
    tail loop's excess over the steady state for its ``lead`` tiles."""
    cubin = compile_cuda(workdir)
    k_low = fused.low_rows(length, config)
    kp = triton.cdiv(k_low, cuda_stats.ROW_PAD) * cuda_stats.ROW_PAD
    plan = cuda_plan(length, channels, kp, dtype, workdir)
    tname = {torch.bfloat16: "13__nv_bfloat16", torch.float16: "6__half", torch.float32: "f"}[dtype]
    # the 16-byte vector path (contiguous, aligned views), with the plan's row fragments and basis residency
    want = f"aselect_stats_main_kernelI{tname}Lb1ELi{plan['frags']}ELb{plan['resident']}E"
    funcs = disassemble(cubin)
    fname = next(k for k in funcs if want in k)
    fn = funcs[fname]
    res = resource_usage(cubin)[fname]
    spans = cuda_loops(fn)
    lr = loop_report(fn, "cuda", lambda kind, index: 1, steady=spans["steady"])
    if lr.nested:
        raise RuntimeError(f"{fname}: the steady-state loop has nested loops {lr.nested}")
    passes = plan["num_pass"]
    if passes > 1:  # the further passes' steady state, weighted by their count
        further = loop_report(fn, "cuda", lambda kind, index: 1, steady=spans["further"])
        counts = {k: (lr.counts.get(k, 0) + (passes - 1) * further.counts.get(k, 0)) / passes
                  for k in lr.counts.keys() | further.counts.keys()}
        lr.counts, lr.body = counts, round(sum(counts.values()))
    lead = min(plan["stages"] - 1, plan["num_tiles"])
    tail = sum(1 for i in fn.instrs if spans["tail"][0] <= i.addr <= spans["tail"][1]) if "tail" in spans else 0
    steady_body = sum(1 for i in fn.instrs if spans["steady"][0] <= i.addr <= spans["steady"][1])
    # per item: the steady loop counts every tile; the peeled tile (in "around") and the tail's tiles cost more
    lr.around += lead * (tail - steady_body) - steady_body
    elem = 4 if dtype == torch.float32 else 2
    iters = plan["num_cb"] * plan["num_tiles"]
    if kp == 0 or plan["resident"]:
        basis_per_sample = 0  # loaded once per program for its whole life (counted as on chip)
    else:  # a [pass_rows, kTileL] hi + lo slice per tile, pass and channel block
        basis_per_sample = passes * plan["pass_rows"] * plan["num_tiles"] * K_TILE_L * 2 * elem * plan["num_cb"]
    return _finish(name, "cuda", n, length, channels, dtype, config, lr, warps=K_THREADS // 32, regs=res["REG"],
                   local=res["LOCAL"], smem=plan["smem_bytes"], programs_per_sm_cap=2,
                   items_per_sample=plan["num_cb"], elems_per_iter=length * channels / iters,
                   tile_bytes=K_TILE_L * K_BLOCK_C * elem, x_reads=float(max(passes, 1)),
                   basis_l2_per_x=basis_per_sample / (length * channels * elem),
                   fma_per_element=_fma(dtype, passes * plan["pass_rows"]),  # the last pass's rows past kp too
                   tiling={"block_l": K_TILE_L, "block_c": K_BLOCK_C, "kp": kp, "frags": plan["frags"],
                           "num_pass": passes, "resident_basis": bool(plan["resident"]),
                           "num_stages": plan["stages"], "num_warps": K_THREADS // 32})


# ---- occupancy, ceilings, prediction -----------------------------------------------------------------------
def occupancy(regs: int, warps: int, smem: int) -> dict:
    """Programs per SM allowed by registers, shared memory, warps and blocks (sm_90 limits)."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = REGS_PER_SM // (regs_per_warp * warps)
    by_smem = SMEM_PER_SM // (_align128(smem) + SMEM_RESERVED)
    by_warps = MAX_WARPS_PER_SM // warps
    return {"by_registers": by_regs, "by_shared": by_smem, "by_warps": by_warps,
            "programs": max(0, min(by_regs, by_smem, by_warps, MAX_BLOCKS_PER_SM))}


def _finish(name, backend, n, length, channels, dtype, config, lr: LoopReport, *, warps, regs, local, smem,
            programs_per_sm_cap, items_per_sample, elems_per_iter, tile_bytes, x_reads, basis_l2_per_x,
            fma_per_element, tiling) -> dict:
    elem = 4 if dtype == torch.float32 else 2
    occ = occupancy(regs, warps, smem)
    programs = occ["programs"] if programs_per_sm_cap == 0 else min(occ["programs"], programs_per_sm_cap)
    loop_wipe = lr.body * warps / elems_per_iter
    elems_per_item = length * channels / items_per_sample
    around_wipe = lr.around * warps / elems_per_item
    wipe = loop_wipe + around_wipe
    # loads in flight: tiles the loop keeps outstanding while it computes
    ahead = 0 if lr.wait_groups is None or lr.copy_groups == 0 else lr.wait_groups // lr.copy_groups
    in_flight = max(1, ahead) * tile_bytes * programs
    items = n * items_per_sample
    slots = SMS * max(programs, 1)
    waves = items / slots
    full_waves = math.ceil(waves)
    last_fill = (items - (full_waves - 1) * slots) / slots
    tail = items / (full_waves * slots)
    body_s = lr.body / CLOCK_HZ  # one body's issue time for one warp (a warp issues at most 1 per clock)
    fma, rate_key = fma_per_element
    out = {
        "name": name, "backend": backend, "shape": [n, length, channels], "dtype": _dtype_name(dtype),
        "hfr_dims": config.hfr_dims, "x_mb": round(n * length * channels * elem / 1e6, 1), "tiling": tiling,
        "registers": regs, "spill_bytes": local, "shared_bytes": smem,
        "programs_per_sm": programs, "warps_per_sm": programs * warps, "occupancy_limits": occ,
        "loop": {"span": [f"{lr.span[0]:#06x}", f"{lr.span[1]:#06x}"], "instructions_per_warp": lr.body,
                 "by_class": {k: round(v * warps / elems_per_iter, 4) for k, v in sorted(lr.counts.items())},
                 "nested": lr.nested, "x_loads": lr.x_loads, "copy_groups": lr.copy_groups,
                 "wait_groups": lr.wait_groups, "tiles_ahead": ahead, "elements_per_iteration":
                 round(elems_per_iter, 1)},
        "warp_instr_per_element": round(loop_wipe, 4),
        "warp_instr_per_element_with_item": round(wipe, 4),
        "bytes_in_flight_per_sm": in_flight, "work_items": items, "waves": round(waves, 3),
        "sms_busy": min(SMS, items), "last_wave_fill": round(last_fill, 3), "x_reads": x_reads,
        "basis_l2_per_x": round(basis_l2_per_x, 4),
    }
    for card, tbps in READ_TBPS.items():
        bytes_per_clock = tbps * 1e12 / (SMS * CLOCK_HZ)
        elems_per_clock = bytes_per_clock / elem
        issue = ISSUE_PER_CLOCK / (wipe * elems_per_clock)
        need = tbps * 1e12 / SMS * LATENCY_S  # bytes in flight per SM that sustain the read ceiling
        if ahead >= 1:
            latency = in_flight / need
        else:  # each program waits for its tile, then computes: one tile per (latency + body issue time)
            latency = programs * tile_bytes / (LATENCY_S + body_s) / (tbps * 1e12 / SMS)
        tensor = TENSOR_FMA_PER_CLOCK[rate_key] / (fma * elems_per_clock) if fma else math.inf
        ceilings = {"issue": min(1.0, issue), "latency": min(1.0, latency), "tensor": min(1.0, tensor),
                    "tail": tail}
        pred = min(ceilings["issue"], ceilings["latency"], ceilings["tensor"]) * tail * x_reads_factor(x_reads)
        out[f"ceilings_{card}"] = {k: round(100 * v, 1) for k, v in ceilings.items()}
        out[f"predicted_pct_read_{card}"] = round(100 * pred, 1)
    return out


def x_reads_factor(x_reads: float) -> float:
    """Reading X r times takes r times the bytes (re-reads assumed from DRAM: a sample's slices outgrow L2)."""
    return 1.0 / max(x_reads, 1.0)


# ---- targets -----------------------------------------------------------------------------------------------
def auto_backend(case: dict) -> str:
    """The backend ``auto`` ships for a case (ops/backend_table: the table's entry, else its default)."""
    from aselect_kernels.ops import backend_table

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[case["dtype"]]
    return backend_table.choose((ARCH // 10, ARCH % 10), dtype, case["shape"][1], case["shape"][2],
                                case["hfr_dims"])


def targets(cases: list[dict]) -> dict:
    shipped = [c for c in cases if c["backend"] == auto_backend(c)]
    head = next(c for c in shipped if c["name"] == HEADLINE)
    large = [c for c in shipped if c["x_mb"] * 1e6 >= LARGE_BYTES]
    worst_fill = min(large, key=lambda c: (c["sms_busy"] == SMS, c["last_wave_fill"]))
    worst_pred = min(large, key=lambda c: c["predicted_pct_read_h100"])

    def t(value, met, **extra):
        return {"value": value, "met": bool(met), **extra}

    return {
        "backend": head["backend"],
        "headline_warp_instr_per_element": t(head["warp_instr_per_element"], head["warp_instr_per_element"] <= 0.40,
                                             threshold="<= 0.40"),
        "headline_bytes_in_flight_per_sm": t(
            head["bytes_in_flight_per_sm"], head["bytes_in_flight_per_sm"] >= 32 * 1024
            and head["loop"]["tiles_ahead"] >= 1, threshold=">= 32768, kept in flight while the loop computes",
            tiles_ahead=head["loop"]["tiles_ahead"]),
        "headline_spill_bytes": t(head["spill_bytes"], head["spill_bytes"] == 0, threshold="0"),
        "headline_x_reads": t(head["x_reads"], head["x_reads"] <= 1.0, threshold="1.0"),
        "headline_basis_l2_per_x": t(head["basis_l2_per_x"], head["basis_l2_per_x"] <= 0.1, threshold="<= 0.1"),
        "headline_predicted_pct_read_h100": t(head["predicted_pct_read_h100"],
                                              head["predicted_pct_read_h100"] >= 85, threshold=">= 85"),
        "headline_predicted_pct_read_h200": t(head["predicted_pct_read_h200"],
                                              head["predicted_pct_read_h200"] >= 80, threshold=">= 80"),
        "large_all_sms_busy_last_wave_fill": t(
            worst_fill["last_wave_fill"] if worst_fill["sms_busy"] == SMS else 0.0,
            all(c["sms_busy"] == SMS and c["last_wave_fill"] >= 0.9 for c in large), threshold=">= 0.90 on 132 SMs",
            worst=worst_fill["name"]),
        "large_predicted_pct_read_h100": t(worst_pred["predicted_pct_read_h100"],
                                           all(c["predicted_pct_read_h100"] >= 70 for c in large), threshold=">= 70",
                                           worst=worst_pred["name"]),
    }


# ---- report ------------------------------------------------------------------------------------------------
def versions() -> dict:
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    return {"triton": triton.__version__, "nvcc": re.search(r"release [\d.]+, V[\d.]+", nvcc).group(0)}


def build(backends: tuple[str, ...] = ("triton", "cuda")) -> dict:
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, n, length, channels, dtype, config in CASES:
            for backend in backends:
                fn = triton_case if backend == "triton" else cuda_case
                cases.append(fn(name, n, length, channels, dtype, config, workdir))
                c = cases[-1]
                print(f"{name:26s} {backend:6s} wi/el {c['warp_instr_per_element']:.3f} "
                      f"(+item {c['warp_instr_per_element_with_item']:.3f}) regs {c['registers']} "
                      f"spill {c['spill_bytes']} warps/SM {c['warps_per_sm']} "
                      f"in flight {c['bytes_in_flight_per_sm'] // 1024} KB fill {c['last_wave_fill']:.2f} "
                      f"pred {c['predicted_pct_read_h100']} / {c['predicted_pct_read_h200']} %", flush=True)
        compile_cuda.cache_clear()
        _plan_library.cache_clear()
    _TRITON_CACHE.clear()
    model = {"sms": SMS, "clock_hz": CLOCK_HZ, "latency_s": LATENCY_S, "issue_per_clock": ISSUE_PER_CLOCK,
             "read_tbps": READ_TBPS, "tensor_fma_per_clock": TENSOR_FMA_PER_CLOCK, "regs_per_sm": REGS_PER_SM,
             "smem_per_sm": SMEM_PER_SM}
    return {"arch": f"sm_{ARCH}", "versions": versions(), "model": model, "cases": cases, "targets": targets(cases)}


def figures(report: dict) -> dict:
    """Every figure of a report, flattened to ``path: value`` (for the drift check)."""
    out = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, w in v.items():
                walk(f"{prefix}.{k}", w)
        elif isinstance(v, list) and v and isinstance(v[0], dict) and "name" in v[0]:
            for w in v:
                walk(f"{prefix}[{w['name']}/{w.get('backend', '')}]", w)
        else:
            out[prefix] = v
    walk("", {k: report[k] for k in ("cases", "targets")})
    return out


def markdown(report: dict) -> str:
    rows = ["| case | backend | regs | spill B | warps/SM | warp-instr/el loop (+item) | mem / tc / mufu / alu / ctl "
            "| in flight KB/SM | items, waves, last fill | X reads | basis L2/X | pred H100 / H200 % |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        bc = c["loop"]["by_class"]
        split = " / ".join(f"{bc.get(k, 0):.2f}" for k in ("memory", "tensor", "mufu", "alu", "control"))
        rows.append(f"| `{c['name']}` | {c['backend']} | {c['registers']} | {c['spill_bytes']} | {c['warps_per_sm']} "
                    f"| {c['warp_instr_per_element']:.2f} ({c['warp_instr_per_element_with_item']:.2f}) | {split} "
                    f"| {c['bytes_in_flight_per_sm'] / 1024:.0f} | {c['work_items']}, {c['waves']:.2f}, "
                    f"{c['last_wave_fill']:.2f} | {c['x_reads']:.0f} | {c['basis_l2_per_x']:.2f} "
                    f"| {c['predicted_pct_read_h100']} / {c['predicted_pct_read_h200']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--check", type=Path, help="exit 1 when a figure differs from this committed report")
    parser.add_argument("--markdown", action="store_true", help="print the budget table as markdown")
    parser.add_argument("--backend", choices=("triton", "cuda"), action="append", help="only these backends")
    args = parser.parse_args(argv)
    report = build(tuple(args.backend) if args.backend else ("triton", "cuda"))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        print(markdown(report))
    for k, v in report["targets"].items():
        if isinstance(v, dict):
            print(f"target {k}: {v['value']} ({v['threshold']}) {'met' if v['met'] else 'MISSED'}")
    if args.check:
        committed = json.loads(args.check.read_text(encoding="utf-8"))
        if committed.get("versions") != report["versions"]:
            print(f"sass_report: compilers differ from {args.check} ({committed.get('versions')} vs "
                  f"{report['versions']}): figures not compared")
            return 0
        old, new = figures(committed), figures(report)
        drift = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        for k in drift[:40]:
            print(f"drift {k}: committed {old.get(k)!r} now {new.get(k)!r}")
        if drift:
            print(f"sass_report: {len(drift)} figures drifted from {args.check}; regenerate it with "
                  f"python bench/sass_report.py --out {args.check}")
            return 1
        print(f"sass_report: every figure matches {args.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
