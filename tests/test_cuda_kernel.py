"""The CUDA C++ kernel (csrc/) on a machine without a GPU.

* ``nvcc`` compiles the kernel source for sm_90 with no register spills (skipped without nvcc).
* A host compiler builds ``csrc/emulate_stats.cpp``, which runs the kernel's block algorithm serially (same plan,
  tile map, shifts, reduction orders and shared arithmetic header; the tensor-core products emulated in fp32 from
  the same rounded operands).  Its statistics are checked against the fp64 reference on random inputs: awkward
  shapes, several channel blocks, several basis passes, a basis too large for shared memory, strided views.
  This checks the algorithm and its index arithmetic, not the device code paths (loads, shared memory, MMA
  fragments, races): those are checked on a GPU by ``bench/gpu_checks.py --backend cuda``.
* The Python side without CUDA: the basis the kernel reads, the backend table, the dispatch and its errors.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from stats_checks import BASIS_ERR, U32, assert_stats_close, ref64

from aselect_kernels.frequency import CutoffWarning, low_frequency_basis
from aselect_kernels.ops import backend_table, custom_op
from aselect_kernels.ops.cuda_stats import (
    CSRC,
    DTYPE_CODES,
    TILE_L,
    CudaStatsUnavailable,
    kernel_basis,
    kernel_operands,
)
from aselect_kernels.reference import StatsConfig
from aselect_kernels.stats import BACKENDS, compute_stats

HOST_CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
NVCC = shutil.which("nvcc")
#: fp32 inputs go through 3xTF32: both operands split into TF32 halves (11 significant bits each); the dropped
#: lo * lo term and the rounding of the lo halves leave about 2^-21 relative per product (E_low: twice that).
OPERAND_ERR = {**BASIS_ERR, torch.float32: 4 * 2.0**-21}


def tolerance(dtype: torch.dtype, length: int, channels: int) -> float:
    return OPERAND_ERR[dtype] + 8 * U32 * (length * channels) ** 0.5


# ---- nvcc: compile check and resource report ---------------------------------------------------------------

def parse_resource_usage(report: str) -> dict[str, dict[str, int]]:
    """``{kernel: {registers, stack, spill_stores, spill_loads}}`` from ptxas' ``--resource-usage`` output."""
    kernels: dict[str, dict[str, int]] = {}
    name = None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            name = m.group(1)
            kernels[name] = {}
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            kernels[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[name]["registers"] = int(m.group(1))
    return kernels


def test_parse_resource_usage() -> None:
    report = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 8 bytes cumulative stack size"""
    assert parse_resource_usage(report) == {
        "_Z3fooPf": {"stack": 8, "spill_stores": 12, "spill_loads": 16, "registers": 128}}


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_kernel_source_compiles_for_sm90_without_spills(tmp_path: Path) -> None:
    """With the flags torch's extension builds add (no implicit half/bf16 conversions), as the install would."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    proc = subprocess.run(
        [NVCC, "-arch=sm_90", "-O3", "-std=c++17", *COMMON_NVCC_FLAGS, "--resource-usage", "-c",
         str(CSRC / "aselect_stats.cu"), "-o", str(tmp_path / "aselect_stats.o")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    kernels = parse_resource_usage(proc.stdout + proc.stderr)
    main = [k for k in kernels if "aselect_stats_main_kernel" in k]
    # per dtype and load path (16-byte copies, scalar loads): no basis, and 1 .. 3 row fragments per warp (fp32:
    # 1 .. 2) with the basis resident or streamed
    assert len(main) == 2 * 2 * (1 + 2 * 3) + 2 * (1 + 2 * 2), sorted(kernels)
    assert any("aselect_stats_combine_kernel" in k for k in kernels), kernels
    for name, usage in kernels.items():
        assert usage["spill_stores"] == 0 and usage["spill_loads"] == 0, (name, usage)
        assert usage["registers"] <= 128, (name, usage)  # __launch_bounds__(256, 2)


# ---- host emulation of the block algorithm ------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if HOST_CXX is None:
        pytest.skip("no host C++ compiler")
    lib = tmp_path_factory.mktemp("emulate") / "libaselect_emulate.so"
    subprocess.run([HOST_CXX, "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{CSRC}", str(CSRC / "emulate_stats.cpp"),
                    "-o", str(lib)], check=True, capture_output=True, timeout=300)
    dll = ctypes.CDLL(str(lib))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    dll.aselect_emulate_stats.argtypes = [ptr, ctypes.c_int, i64, i64, i64, i64, i64, i64, ptr, ptr, ptr,
                                          ctypes.c_int, ctypes.c_int, ptr]
    dll.aselect_emulate_stats.restype = ctypes.c_int
    dll.aselect_emulate_plan.argtypes = [i64, i64, ctypes.c_int, ctypes.c_int, ctypes.c_uint64, i64, i64, i64, ptr]
    dll.aselect_emulate_plan.restype = None
    dll.aselect_emulate_row_entropy.restype = ctypes.c_float
    return dll


PLAN_FIELDS = ("num_cb", "num_tiles", "kp", "frags", "pass_rows", "num_pass", "resident", "stages", "stage_bytes",
               "vec", "smem_bytes")


def plan_of(dll: ctypes.CDLL, x: torch.Tensor, kp: int) -> dict[str, int]:
    out = (ctypes.c_int * len(PLAN_FIELDS))()
    dll.aselect_emulate_plan(x.shape[1], x.shape[2], kp, DTYPE_CODES[x.dtype], x.data_ptr(), *x.stride(), out)
    return dict(zip(PLAN_FIELDS, out, strict=True))


def emulate(dll: ctypes.CDLL, x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    """The kernel's algorithm on ``x`` (its values as float, its strides kept)."""
    xf = torch.empty_strided(x.shape, x.stride(), dtype=torch.float32).copy_(x)
    hi, lo, rowsum = kernel_operands(x.shape[1], config.resolve_grid(x.shape[1]), float(config.cutoff), x.dtype,
                                     torch.device("cpu"))
    hi, lo = hi.float().contiguous(), lo.float().contiguous()
    out = torch.empty(x.shape[0], 6, dtype=torch.float32)
    rc = dll.aselect_emulate_stats(xf.data_ptr(), DTYPE_CODES[x.dtype], *x.shape, *xf.stride(), hi.data_ptr(),
                                   lo.data_ptr(), rowsum.data_ptr(), hi.shape[0], 1, out.data_ptr())
    assert rc == 0
    return out


def randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5 + offset
    return (x + 0.3 * torch.randn((shape[0],) + (1,) * (len(shape) - 1), generator=g)).to(dtype)


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = [  # n, L, C, config
    (1, 49, 200, StatsConfig()),  # N = 1, two channel blocks, the second partial
    (3, 100, 17, StatsConfig()),  # one partial channel block, a partial last tile
    (2, 48, 300, StatsConfig(cutoff=0.4, hfr_dims=2, grid=(6, 8))),  # 2-D non-square, three channel blocks
    (2, 35, 24, StatsConfig(cutoff=0.6, hfr_dims=2, grid=(5, 7))),
    (2, 196, 40, StatsConfig(hfr_dims=2)),  # 14 x 14
    (4, 40, 136, StatsConfig()),  # two tiles, the second ragged; a partial second channel block (fill channels)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_emulated_kernel_matches_reference(emulator: ctypes.CDLL, case: int, dtype: torch.dtype) -> None:
    n, length, channels, config = CASES[case]
    x = randn((n, length, channels), dtype, seed=100 + case)
    assert_stats_close(emulate(emulator, x, config), ref64(x, config), x, tolerance(dtype, length, channels))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("length", "channels"), [(1024, 20), (1000, 200)])
def test_emulated_several_passes_and_streamed_basis(emulator: ctypes.CDLL, dtype: torch.dtype, length: int,
                                                     channels: int) -> None:
    # 1-D at cutoff 0.15: 152 (150) basis rows, 160 padded; (1000, 200): a ragged last tile, two channel blocks
    x = randn((1, length, channels), dtype, seed=7)
    k = low_frequency_basis(length, None, 0.15).shape[0]
    plan = plan_of(emulator, x, -(-k // 16) * 16)
    assert plan["num_pass"] == -(-plan["kp"] // plan["pass_rows"]) >= 3 and plan["resident"] == 0, plan
    assert_stats_close(emulate(emulator, x, StatsConfig()), ref64(x, StatsConfig()), x,
                       tolerance(dtype, length, channels))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_emulated_strided_views(emulator: ctypes.CDLL, dtype: torch.dtype) -> None:
    config = StatsConfig(cutoff=0.3, hfr_dims=2, grid=(8, 8))
    views = {
        "token_stride": randn((2, 128, 130), dtype, seed=11)[:, ::2, :],
        "transposed": randn((2, 130, 64), dtype, seed=12).transpose(1, 2),
        "channel_slice": randn((2, 64, 390), dtype, seed=13)[:, :, 131:261],
        "every_third_channel": randn((2, 64, 390), dtype, seed=14)[:, :, ::3],
    }
    for name, view in views.items():
        assert not view.is_contiguous(), name
        assert plan_of(emulator, view, 16)["vec"] == 0, name
        assert_stats_close(emulate(emulator, view, config), ref64(view, config), view,
                           tolerance(dtype, 64, view.shape[2]))


def test_vector_path_rule(emulator: ctypes.CDLL) -> None:
    """16-byte loads exactly when the channel stride is 1 and every row start is 16-byte aligned."""
    base = torch.zeros(2, 64, 136, dtype=torch.bfloat16)
    assert plan_of(emulator, base, 16)["vec"] == 1
    assert plan_of(emulator, base[:, :, 8:136], 16)["vec"] == 1  # offset 16 bytes
    assert plan_of(emulator, base[:, :, 1:129], 16)["vec"] == 0  # offset 2 bytes
    assert plan_of(emulator, base[:, :, :128], 16)["vec"] == 1  # 136-element rows: 272 bytes apart
    assert plan_of(emulator, base[:, :, :132], 16)["vec"] == 0  # a partial 16-byte group at the end of a row
    assert plan_of(emulator, torch.zeros(2, 64, 132, dtype=torch.bfloat16), 16)["vec"] == 0  # C % 8 != 0
    assert plan_of(emulator, torch.zeros(2, 64, 132, dtype=torch.float32), 16)["vec"] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("length", "grid", "cutoff"), [
    (256, None, 0.15), (256, (16, 16), 0.15), (196, (14, 14), 0.15), (1024, None, 0.15), (1024, (32, 32), 0.15),
    (4096, (64, 64), 0.15), (4096, None, 0.15), (49, None, 0.9),
])
def test_shared_memory_plan(emulator: ctypes.CDLL, dtype: torch.dtype, length: int, grid: tuple[int, int] | None,
                            cutoff: float) -> None:
    """Every plan fits a block's shared memory on sm_90 (227 KiB); the DiT-XL/2 and embedded-model taps fit two
    blocks per SM (228 KiB, 1 KiB reserved per block), the occupancy that __launch_bounds__(256, 2) is built for."""
    k = low_frequency_basis(length, grid, cutoff).shape[0]
    plan = plan_of(emulator, torch.zeros(1, length, 128, dtype=dtype), -(-k // 16) * 16)
    assert 0 < plan["smem_bytes"] <= 227 * 1024, plan
    if length in (196, 256):
        assert 2 * (plan["smem_bytes"] + 1024) <= 228 * 1024, plan


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_emulated_large_mean_and_constant_tokens(emulator: ctypes.CDLL, dtype: torch.dtype) -> None:
    x = randn((3, 64, 96), dtype, seed=5, offset=30.0)  # DC-dominated: the mean leak must be removed exactly
    assert_stats_close(emulate(emulator, x, StatsConfig()), ref64(x, StatsConfig()), x, tolerance(dtype, 64, 96))
    g = torch.Generator().manual_seed(6)
    levels = torch.randint(-12, 13, (2, 1, 150), generator=g).float() / 4
    const = levels.expand(2, 40, 150).contiguous().to(dtype)  # token_var 0, hfr 0, hfr_centered NaN
    ref = ref64(const, StatsConfig())
    assert ref[:, 5].isnan().all()
    assert_stats_close(emulate(emulator, const, StatsConfig()), ref, const, tolerance(dtype, 40, 150))


def test_emulated_without_low_frequencies(emulator: ctypes.CDLL) -> None:
    """A cutoff below the first frequency: no basis rows, E_low = 0, hfr = hfr_centered = fraction of non-DC."""
    config = StatsConfig(cutoff=0.1)
    x = randn((2, 6, 24), torch.float32, seed=9)
    with pytest.warns(CutoffWarning):
        assert low_frequency_basis(6, None, 0.1).shape[0] == 0
        ref = ref64(x, config)
    assert plan_of(emulator, x, 0)["num_pass"] == 1
    assert_stats_close(emulate(emulator, x, config), ref, x, tolerance(torch.float32, 6, 24))


# ---- the Python side without a GPU -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_basis(dtype: torch.dtype) -> None:
    grid = (12, 20)
    b64 = low_frequency_basis(240, grid, 0.3, dtype=torch.float64)
    hi, lo, rowsum = kernel_basis(240, grid, 0.3, dtype, torch.device("cpu"))
    assert hi.dtype == lo.dtype == dtype and hi.shape == lo.shape and hi.shape[0] % 16 == 0
    assert b64.shape[0] <= hi.shape[0] < b64.shape[0] + 16 and hi.shape[1] == 240
    rounded = hi.double() + (lo.double() if dtype != torch.float32 else 0.0)
    assert torch.all(rounded[b64.shape[0]:] == 0)
    err = (rounded[:b64.shape[0]] - b64).abs().max().item()
    assert err <= {torch.float32: 2.0**-24, torch.float16: 2.0**-21, torch.bfloat16: 2.0**-16}[dtype] * 2
    torch.testing.assert_close(rowsum.double(), rounded.sum(dim=1), rtol=1e-6, atol=1e-6)


def test_cuda_backend_needs_cuda() -> None:
    assert "cuda" in BACKENDS
    x = randn((2, 16, 8), torch.float32, seed=1)
    with pytest.raises(CudaStatsUnavailable, match="backend='cuda' unavailable: .*CUDA tensor"):
        compute_stats(x, backend="cuda")
    with pytest.raises(TypeError, match="fp32, fp16 or bf16"):
        compute_stats(x.double(), backend="cuda")


def test_committed_table_parses() -> None:
    data = json.loads(backend_table.TABLE_PATH.read_text(encoding="utf-8"))
    default, choices = backend_table.parse_table(data)
    assert default in backend_table.GPU_BACKENDS
    for key, backend in choices.items():
        assert backend_table.choose(key[:2], getattr(torch, key[2]), *key[3:]) == backend


def test_table_from_timings(tmp_path: Path) -> None:
    rows = [
        {"capability": (9, 0), "dtype": torch.bfloat16, "length": 256, "channels": 1152, "hfr_dims": 1,
         "triton_us": 40.0, "cuda_us": 30.0},
        {"capability": (9, 0), "dtype": "float32", "length": 196, "channels": 96, "hfr_dims": 2,
         "triton_us": 20.0, "cuda_us": 20.0},
    ]
    table = backend_table.table_from_timings(rows)
    assert table == backend_table.table_from_timings(rows[::-1])  # order-independent
    path = tmp_path / "table.json"
    backend_table.write_table(table, path)
    default, choices = backend_table.load_table(path)
    assert default == "triton"
    assert choices == {(9, 0, "bfloat16", 256, 1152, 1): "cuda", (9, 0, "float32", 196, 96, 2): "triton"}
    with pytest.raises(ValueError, match="not one of"):
        backend_table.write_table({**table, "default": "fast"}, path)
    assert backend_table.load_table(path) == (default, choices)  # the bad table was not written


def test_table_choosing_cuda_falls_back_to_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CUDA kernel cannot run, a table entry for it runs the Triton kernel, with one warning."""
    from aselect_kernels.ops.fused_stats import fused_stats

    monkeypatch.setattr(backend_table, "choose_for", lambda x, hfr_dims: "cuda")
    monkeypatch.setattr(custom_op, "_warned", set())
    x = randn((2, 32, 24), torch.float32, seed=3)
    with pytest.warns(RuntimeWarning, match="CUDA.*using the Triton kernel instead"):
        out = custom_op.gpu_stats(x, StatsConfig())
    assert torch.equal(out, fused_stats(x, StatsConfig()))


# ---- the arithmetic the kernel shares with the emulation, against numpy -------------------------------------

def _floats(values: np.ndarray) -> ctypes.Array:
    return (ctypes.c_float * len(values))(*values.astype(np.float32).tolist())


def test_exp2_flushes_and_matches(emulator: ctypes.CDLL) -> None:
    """exp2_ftz: 2^y in fp32, with denormal inputs taken as 0 and results under 2^-126 flushed to 0 (what
    ex2.approx.ftz.f32 does; the device's result is within 2 ulp of this one)."""
    rng = np.random.default_rng(3)
    y = np.concatenate([rng.uniform(-150.0, 0.0, 2000), [0.0, -0.0, -126.0, -126.5, -149.0, 1e-40, -1e-40, -np.inf]])
    y32 = y.astype(np.float32)
    out = (ctypes.c_float * len(y))()
    emulator.aselect_emulate_exp2(_floats(y32), len(y), out)
    got = np.array(out, dtype=np.float64)
    want = np.exp2(y32.astype(np.float64))
    want[np.abs(y32) < 2.0**-126] = 1.0
    want[want < 2.0**-126] = 0.0
    assert np.all((got == 0.0) == (want == 0.0))
    assert np.all(np.abs(got - want) <= 2.0**-23 * want)


@pytest.mark.parametrize("sizes", [(1,), (16,), (16, 16, 16), (7, 128, 3), (128,) * 9])
def test_row_entropy_in_base_two_matches_softmax_entropy(emulator: ctypes.CDLL, sizes: tuple[int, ...]) -> None:
    """A row's entropy from per-block base-2 states (maximum, s, t) merged in order equals -sum p log p of its
    softmax (fp64), also with logits far from 0 and a block far below the others."""
    rng = np.random.default_rng(len(sizes) + sum(sizes))
    for offset, spread in ((0.0, 1.5), (3000.0, 4.0), (-40.0, 0.01), (0.0, 60.0)):
        v = (offset + spread * rng.standard_normal(sum(sizes))).astype(np.float32)
        if len(sizes) > 1:
            v[: sizes[0]] -= 150.0  # a whole block whose terms flush to 0 against the row maximum
        got = emulator.aselect_emulate_row_entropy(_floats(v), (ctypes.c_int * len(sizes))(*sizes), len(sizes))
        z = v.astype(np.float64) - v.max()
        p = np.exp(z) / np.exp(z).sum()
        want = -(p[p > 0] * np.log(p[p > 0])).sum()
        assert abs(got - want) <= 4e-6 * max(1.0, want), (offset, spread, got, want)


@pytest.mark.parametrize("elem", [2, 4])
def test_tile_map_covers_the_block_once(emulator: ctypes.CDLL, elem: int) -> None:
    """The 8 threads of a row hold its 128 channels once; each thread's values are 16-byte pieces of consecutive
    channels, and the 8 threads' pieces of one index are 128 consecutive bytes (conflict-free 16-byte reads)."""
    emulator.aselect_emulate_chan.restype = ctypes.c_int
    vec = 16 // elem
    chans = [[emulator.aselect_emulate_chan(elem, g, v) for v in range(16)] for g in range(8)]
    assert sorted(c for row in chans for c in row) == list(range(128))
    for p in range(16 // vec):
        starts = [chans[g][p * vec] for g in range(8)]
        assert starts == [starts[0] + g * vec for g in range(8)]
        for g in range(8):
            assert chans[g][p * vec:(p + 1) * vec] == list(range(starts[g], starts[g] + vec))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_operands(emulator: ctypes.CDLL, dtype: torch.dtype) -> None:
    """The basis as the kernel reads it: zero columns up to whole tiles; fp32: the TF32 halves of the fp32 basis,
    rounded as the kernel's cvt.rna.tf32 would round them."""
    length, grid = 77, None
    b_hi, b_lo, rowsum = kernel_basis(length, grid, 0.3, dtype, torch.device("cpu"))
    hi, lo, rs = kernel_operands(length, grid, 0.3, dtype, torch.device("cpu"))
    assert hi.shape == lo.shape == (b_hi.shape[0], -(-length // TILE_L) * TILE_L) and hi.dtype == dtype
    assert torch.equal(rs, rowsum)
    assert not hi[:, length:].any() and not lo[:, length:].any()
    if dtype != torch.float32:
        assert torch.equal(hi[:, :length], b_hi) and torch.equal(lo[:, :length], b_lo)
        return
    flat = b_hi.flatten().numpy()
    want_hi = (ctypes.c_float * flat.size)()
    emulator.aselect_emulate_tf32(_floats(flat), flat.size, want_hi)
    want_hi = np.array(want_hi, dtype=np.float32).reshape(b_hi.shape)
    rest = (b_hi.numpy() - want_hi).flatten()
    want_lo = (ctypes.c_float * rest.size)()
    emulator.aselect_emulate_tf32(_floats(rest), rest.size, want_lo)
    assert np.array_equal(hi[:, :length].numpy(), want_hi)
    assert np.array_equal(lo[:, :length].numpy(), np.array(want_lo, dtype=np.float32).reshape(b_hi.shape))
    assert (hi[:, :length].numpy().view(np.uint32) & 0x1FFF == 0).all()  # 10 explicit mantissa bits
    err = np.abs(hi[:, :length].double().numpy() + lo[:, :length].double().numpy() - b_hi.double().numpy())
    assert (err <= 2.0**-22 * np.abs(b_hi.double().numpy())).all()
