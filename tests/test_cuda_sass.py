"""The CUDA kernel's machine code for sm_90 (compiled here, not run): the steady-state loop of every 16-byte-copy
instantiation has the shape the kernel is written for (skipped without nvcc).

Per tile and warp the loop must: wait once for the copies (``DEPBAR``), meet the block once (``BAR``), commit one
copy group and copy X with ``LDGSTS``; read shared memory with ``LDS``/``LDSM`` only (no generic ``LD``/``ST``),
use no local memory, call nothing and branch only back to its start (no divergent ``BSSY``); take one
``MUFU.EX2`` per value with no denormal range check (``FSETP``); and issue the tensor-core work of its row
fragments (``kTileL / k`` steps of ``LDSM`` + ``HMMA``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from aselect_kernels.ops.cuda_stats import CSRC

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")

KERNEL = re.compile(r"aselect_stats_main_kernelI(\w+?)Lb1ELi(\d)ELb(\d)E")
TILE_L, VALUES_PER_THREAD = 32, 16


@pytest.fixture(scope="module")
def sass(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import sass_report

    cubin = tmp_path_factory.mktemp("sass") / "aselect_stats.cubin"
    subprocess.run([NVCC, "-arch=sm_90", "-O3", "-std=c++17", "-lineinfo", "-cubin", "-o", str(cubin),
                    str(CSRC / "aselect_stats.cu")], check=True, capture_output=True, timeout=600)
    return {name: fn for name, fn in sass_report.disassemble(cubin).items() if KERNEL.search(name)}


def test_every_vector_instantiation_is_checked(sass: dict) -> None:
    kinds = {KERNEL.search(name).groups() for name in sass}
    assert len(kinds) == 2 * (1 + 2 * 3) + (1 + 2 * 2), sorted(kinds)  # bf16, fp16: 0..3 fragments; fp32: 0..2


def test_steady_state_loop_shape(sass: dict) -> None:
    import sass_report

    for name, fn in sass.items():
        dtype, frags, _ = KERNEL.search(name).groups()
        frags = int(frags)
        loops = sass_report.cuda_loops(fn)
        assert {"steady", "tail"} <= loops.keys(), name
        first, last = loops["steady"]
        body = [i for i in fn.instrs if first <= i.addr <= last]
        ops = Counter(i.opcode for i in body)
        texts = [re.sub(r"^@!?U?P[T\d]+\s+", "", i.text) for i in body]
        assert ops["DEPBAR"] == 1 and ops["BAR"] == 1 and ops["LDGDEPBAR"] == 1, (name, ops)
        fp32 = dtype == "f"
        # this thread's 16 values of its tile row: two 16-byte copies (fp32: four)
        assert sum(sass_report.is_x_load(i, "cuda") for i in body) == (4 if fp32 else 2), (name, ops)
        for op in ("LD", "ST", "LDL", "STL", "CALL", "BSSY", "BSYNC", "FSETP"):
            assert ops[op] == 0, (name, op, ops)
        assert ops["BRA"] == 1 and body[-1].opcode == "BRA", name
        assert sum(t.startswith("MUFU.EX2") for t in texts) == ops["MUFU"] == VALUES_PER_THREAD, (name, ops)
        k = 8 if fp32 else 16
        steps = TILE_L // k
        # per k step: the warp's 16 channels (two 8-channel MMAs) x fragments x (hi, lo) (fp32: 3xTF32)
        assert ops["HMMA"] == steps * frags * 2 * (3 if fp32 else 2), (name, ops)
        # per k step and fragment: basis hi and lo by ldmatrix; 16-bit X by one transposing ldmatrix per step
        assert ops["LDSM"] == steps * (2 * frags + (0 if fp32 or frags == 0 else 1)), (name, ops)
