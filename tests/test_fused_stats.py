"""The fused Triton statistics kernel, its custom op and the backend dispatcher.

By default (``conftest.py``) the kernel runs in the Triton interpreter on CPU tensors; on a GPU machine,
``TRITON_INTERPRET=0 python -m pytest tests/test_fused_stats.py`` runs the same checks on CUDA tensors.
Every check compares against the fp64 reference evaluated on the *same* input values (a low-precision input
is upcast, not re-drawn), so the tolerances cover only the kernel's fp32 accumulation and its rounded basis.
"""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch
from stats_checks import assert_stats_close, ref64, tolerance

from aselect_kernels import stats
from aselect_kernels.frequency import CutoffWarning, band_counts
from aselect_kernels.ops import custom_op
from aselect_kernels.ops.matmul_stats import matmul_stats
from aselect_kernels.reference import StatsConfig, reference_stats

fused = pytest.importorskip("aselect_kernels.ops.fused_stats", reason="triton is not installed")
fused_stats = fused.fused_stats

if not fused.INTERPRET and not torch.cuda.is_available():
    pytest.skip("the kernel needs a CUDA device or TRITON_INTERPRET=1 (set by conftest.py)", allow_module_level=True)
#: Where the kernel's inputs live: CPU tensors for the interpreter, else the GPU.
DEVICE = torch.device("cpu") if fused.INTERPRET else torch.device("cuda")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

def randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 1.5 + offset).to(dtype=dtype, device=DEVICE)


# (id, N, L, C, config): L and C mostly not powers of two; every config leaves >= 4 frequencies on each side.
SHAPES = [
    ("n1_l49_c200_1d", 1, 49, 200, StatsConfig()),
    ("l100_c17_1d", 2, 100, 17, StatsConfig()),
    ("grid6x8_c40", 2, 48, 40, StatsConfig(cutoff=0.4, hfr_dims=2, grid=(6, 8))),
    ("grid5x7_c24", 2, 35, 24, StatsConfig(cutoff=0.6, hfr_dims=2, grid=(5, 7))),
    ("square7x7_c33", 2, 49, 33, StatsConfig(cutoff=0.5, hfr_dims=2)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n", "length", "channels", "config"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_matches_reference(n: int, length: int, channels: int, config: StatsConfig, dtype: torch.dtype) -> None:
    grid = config.resolve_grid(length)
    assert min(band_counts(length, grid, config.cutoff)) >= 4  # a meaningful ratio, no CutoffWarning
    x = randn((n, length, channels), dtype, seed=length * 1000 + channels)
    out = fused_stats(x, config)
    assert_stats_close(out, ref64(x, config), x, tolerance(dtype, length, channels))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_channel_and_basis_blocks(dtype: torch.dtype) -> None:
    """Small forced blocks: 7 channel blocks (entropy states merged), 3 basis-row blocks, 4 token tiles."""
    config = StatsConfig(cutoff=0.75)
    x = randn((2, 64, 100), dtype, seed=7)
    assert band_counts(64, None, 0.75) == (48, 15)  # K = 48 basis rows = 3 blocks of 16
    out = fused_stats(x, config, block_l=16, block_c=16, block_k=16)
    rtol = tolerance(dtype, 64, 100)
    assert_stats_close(out, ref64(x, config), x, rtol)
    assert_stats_close(fused_stats(x, config), ref64(x, config), x, rtol)  # default blocks agree too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_tile_groups_and_basis_blocks(dtype: torch.dtype) -> None:
    """One tile of all 64 tokens, 16-channel blocks in groups of 3 (row entropy states merged in registers, 3
    items per sample merged by the last), 3 basis-row blocks (the first hoisted, the others on the tile in
    registers), a persistent grid of 2 programs; and the two-launch variant, bitwise equal."""
    config = StatsConfig(cutoff=0.75)
    x = randn((2, 64, 100), dtype, seed=8)
    tile = fused.Tiling(block_l=64, block_c=16, block_k=16, group_c=3)
    assert fused.num_groups(64, 100, tile) == 3
    out = fused_stats(x, config, tile=tile, num_programs=2)
    assert_stats_close(out, ref64(x, config), x, tolerance(dtype, 64, 100))
    if dtype == torch.bfloat16:
        assert torch.equal(out, fused_stats(x, config, tile=tile, merge_in_kernel=False))
        assert torch.equal(out, fused_stats(x, config, tile=tile, hoist_basis=False))


# (block_l, block_c, one tile, EVEN_L, EVEN_C) at L = 96, C = 80: every pairing of the mask-free and masked paths.
_EVEN_CASES = [
    (32, 16, False, True, True),  # token tiles, all full: no mask anywhere
    (64, 16, False, False, True),  # one full tile, then a ragged last tile of 32 tokens
    (32, 32, False, True, False),  # full token tiles, a ragged last channel block (80 = 2 x 32 + 16)
    (64, 32, False, False, False),  # both ragged
    (128, 16, True, False, True),  # one tile longer than L
]


@pytest.mark.parametrize(("block_l", "block_c", "one_tile", "even_l", "even_c"), _EVEN_CASES,
                         ids=[f"{c[0]}x{c[1]}" for c in _EVEN_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_full_and_ragged_tiles(block_l: int, block_c: int, one_tile: bool, even_l: bool, even_c: bool,
                               dtype: torch.dtype) -> None:
    """Full tiles are read and reduced without masks (``EVEN_L`` / ``EVEN_C``), ragged ones on the masked path:
    each pairing against the fp64 reference, for one sample and for a non-contiguous view of two, where the
    mask-free tiles must still skip nothing and read nothing outside ``X``.  A large mean makes a padded channel
    or token that leaked into a moment or a row's softmax visible."""
    config = StatsConfig(cutoff=0.4)
    tile = fused.Tiling(block_l=block_l, block_c=block_c, block_k=16, group_c=2)
    plan = fused.launch_plan(randn((1, 96, 80), dtype, seed=1), config, tile=tile)
    assert (plan.meta["ONE_TILE"], plan.meta["EVEN_L"], plan.meta["EVEN_C"]) == (one_tile, even_l, even_c)
    x1 = randn((1, 96, 80), dtype, seed=block_l + block_c, offset=20.0)
    view = randn((2, 80, 200), dtype, seed=block_l * block_c, offset=-20.0)[:, :, 7:103].transpose(1, 2)
    for x in (x1, view):
        out = fused_stats(x, config, tile=tile, num_programs=2)
        assert_stats_close(out, ref64(x, config), x, tolerance(dtype, 96, 80))


@pytest.mark.parametrize("channels", [1, 17])
def test_few_channels(channels: int) -> None:
    """C below one block (padded channels must not leak); C = 1 has zero entropy."""
    x = randn((2, 40, channels), torch.float32, seed=channels)
    out = fused_stats(x)
    assert_stats_close(out, ref64(x, StatsConfig()), x, tolerance(torch.float32, 40, channels))
    if channels == 1:
        assert torch.equal(out[:, 3].cpu(), torch.zeros(2))


def test_no_low_frequency() -> None:
    """K = 0 (the cutoff is below the first non-DC frequency): hfr_centered is exactly 1."""
    config = StatsConfig(cutoff=0.15)
    x = randn((2, 6, 24), torch.float32, seed=3)
    assert band_counts(6, None, 0.15)[0] == 0
    with pytest.warns(CutoffWarning):
        out = fused_stats(x, config)
    with pytest.warns(CutoffWarning):
        ref = ref64(x, config)
    assert_stats_close(out, ref, x, tolerance(torch.float32, 6, 24))
    assert torch.equal(out[:, 5].cpu(), torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_views(dtype: torch.dtype) -> None:
    """Transposed (channel stride L) and sliced (token stride 2, offset) views are read in place."""
    config = StatsConfig(cutoff=0.5, hfr_dims=2, grid=(6, 8))
    transposed = randn((2, 40, 48), dtype, seed=11).transpose(1, 2)  # [2, 48, 40], stride (1920, 1, 48)
    sliced = randn((2, 96, 45), dtype, seed=12)[:, ::2, 3:43]  # [2, 48, 40], stride (4320, 90, 1)
    for view in (transposed, sliced):
        assert not view.is_contiguous()
        out = fused_stats(view, config)
        assert_stats_close(out, ref64(view, config), view, tolerance(dtype, 48, 40))
        assert torch.equal(out, fused_stats(view.contiguous(), config))


# A child process reads views whose element offsets pass 2^31 (a permuted [1024, 4096, 3072] has token stride
# 1024 x 3072: 32-bit offsets wrapped from token 683).  The storage is 4-5 GB of address space, but only the few
# pages the views touch are ever written or read.  A wrong offset reads outside the storage, which may crash, so
# the kernel runs in a child and writes its result and the view's values for this process to check.
_HUGE_STRIDE_CHILD = """
import sys, torch
from aselect_kernels.ops.fused_stats import fused_stats, launch_plan
from aselect_kernels.reference import StatsConfig
cases = []
# token stride 2^28 + 8, 9 tokens: the tile spans 2^31 elements (64-bit offsets inside the tile)
# token stride 2^23 + 8, 300 tokens: token tiles of 64; tile starts pass 2^31 (64-bit tile base, 32-bit inside)
for stride_l, length, channels in ((2**28 + 8, 9, 24), (2**23 + 8, 300, 20)):
    storage = torch.empty((length - 1) * stride_l + channels, dtype=torch.bfloat16)
    view = storage.as_strided((1, length, channels), (length * stride_l, stride_l, 1))
    g = torch.Generator().manual_seed(length)
    view.copy_((torch.randn(1, length, channels, generator=g) * 1.5 + 0.5).to(torch.bfloat16))
    config = StatsConfig(cutoff=0.5)
    out = fused_stats(view, config)
    cases.append((view.clone(), out, launch_plan(view, config).meta.get("WIDE_INDEX")))
torch.save(cases, sys.argv[1])
"""


@pytest.mark.skipif(not fused.INTERPRET, reason="the child runs the interpreter on CPU tensors")
def test_offsets_past_2_31_elements(tmp_path) -> None:
    """Tile and channel-block starts are 64-bit; offsets inside a tile are 64-bit where a tile spans 2^31."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out_file = tmp_path / "huge.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.run([sys.executable, "-W", "ignore", "-c", _HUGE_STRIDE_CHILD, str(out_file)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, f"child failed (rc {child.returncode}):\n{child.stderr[-2000:]}"
    cases = torch.load(out_file)
    assert [wide for *_, wide in cases] == [True, False]
    config = StatsConfig(cutoff=0.5)
    for values, out, _ in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CutoffWarning)
            ref = ref64(values, config)
        assert_stats_close(out, ref, values, tolerance(torch.bfloat16, values.shape[1], values.shape[2]))


@pytest.mark.parametrize(("dtype", "offset"), [(torch.float32, 1e3), (torch.float32, -3e4), (torch.bfloat16, 100.0)])
def test_large_mean_offset(dtype: torch.dtype, offset: float) -> None:
    """A mean far above the spread: token_var and hfr_centered stay accurate (no E[x^2] - E[x]^2 cancellation),
    and hfr (now tiny, DC dominates) keeps its relative accuracy.  L = 49 is odd, so the rounded basis rows do
    not sum to exactly 0 and the mean's leak into the projection must be subtracted (the rowsum correction)."""
    config = StatsConfig(cutoff=0.3)
    x = randn((2, 49, 48), dtype, seed=5, offset=offset)
    out = fused_stats(x, config)
    ref = ref64(x, config)
    assert ref[:, 4].max() < 1e-3  # the test means something: E_high is a small part of E_total
    assert_stats_close(out, ref, x, tolerance(dtype, 49, 48))


def test_rounded_basis_mean_leak() -> None:
    """bf16 input, odd L: the hi + lo bf16 basis rows sum to ~5e-5, not 0, so a mean of 3000 leaks ~0.15 into
    every projection; with a low-frequency wave shared by all channels the leak adds coherently.  Without the
    rowsum correction hfr_centered is off by about 3.6x the tolerance here; with it, by 0.002x."""
    config = StatsConfig(cutoff=0.3)
    tokens = torch.arange(63, dtype=torch.float64)
    wave = 8 * torch.cos(2 * math.pi * 2 * tokens / 63)
    noise = torch.randn(2, 63, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = (3000 + wave[None, :, None] + 4 * noise).to(dtype=torch.bfloat16, device=DEVICE)
    assert_stats_close(fused_stats(x, config), ref64(x, config), x, tolerance(torch.bfloat16, 63, 48))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_chunk_invariance(dtype: torch.dtype) -> None:
    """A sample's stats do not depend on the batch it is scored in (bitwise), nor on the run."""
    config = StatsConfig(cutoff=0.5, hfr_dims=2)
    x = randn((5, 49, 40), dtype, seed=9)
    full = fused_stats(x, config)
    chunked = torch.cat([fused_stats(x[:2], config), fused_stats(x[2:3], config), fused_stats(x[3:], config)])
    assert torch.equal(full, chunked)
    assert torch.equal(full, fused_stats(x, config))


def test_zero_and_constant_inputs() -> None:
    """E_total = 0 gives NaN like the reference; per-channel constants give hfr = 0 and a NaN centred ratio."""
    zeros = torch.zeros(2, 64, 8, device=DEVICE)
    out = fused_stats(zeros)
    assert_stats_close(out, ref64(zeros, StatsConfig()), zeros, 1e-6)
    assert out[:, 4:].isnan().all() and torch.allclose(out[:, 3].cpu(), torch.full((2,), math.log(8)))

    levels = torch.tensor([0.5, -2.0, 3.25, 0.0, 1.0])  # dyadic: the fp64 reference centres them exactly
    const = levels.expand(2, 64, 5).contiguous().to(DEVICE)
    out = fused_stats(const).cpu()
    assert_stats_close(out, ref64(const, StatsConfig()), const, 1e-6)
    assert torch.equal(out[:, 2], torch.zeros(2)) and torch.equal(out[:, 4], torch.zeros(2))
    assert out[:, 5].isnan().all()


def test_invalid_inputs() -> None:
    with pytest.raises(TypeError, match="fp64"):
        fused_stats(torch.zeros(1, 8, 4, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="rank 3"):
        fused_stats(torch.zeros(8, 4, device=DEVICE))
    with pytest.raises(ValueError, match="grid"):
        fused_stats(torch.zeros(1, 12, 4, device=DEVICE), StatsConfig(hfr_dims=2, grid=(3, 5)))
    with pytest.raises(ValueError, match="power of two"):
        fused_stats(torch.zeros(1, 64, 4, device=DEVICE), block_c=24)


# --- the custom op -------------------------------------------------------------------------------------------


def test_custom_op_cpu_is_the_pytorch_twin() -> None:
    config = StatsConfig(cutoff=0.4, hfr_dims=2, grid=(6, 8))
    x = randn((3, 48, 20), torch.float32, seed=1).cpu()
    args = custom_op.config_to_args(config)
    assert custom_op.config_from_args(*args) == config
    assert custom_op.config_from_args(*custom_op.config_to_args(StatsConfig())) == StatsConfig()
    out = torch.ops.aselect.sample_stats(x, *args)
    assert torch.equal(out, matmul_stats(x, config))
    assert_stats_close(out, ref64(x, config), x, tolerance(torch.float32, 48, 20))
    torch.library.opcheck(torch.ops.aselect.sample_stats.default, (x, *args))
    if DEVICE.type == "cuda":  # the CUDA kernel registration is the fused kernel
        assert torch.equal(torch.ops.aselect.sample_stats(x.to(DEVICE), *args), fused_stats(x.to(DEVICE), config))


def _double_stats(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aselect.sample_stats(x * 2.0, 0.15, 1, 0, 0).sum(dim=1)


def test_custom_op_compiles_without_graph_break() -> None:
    """fullgraph=True fails on any graph break; aot_eager traces the fake kernel without a C++ compiler."""
    torch._dynamo.reset()
    x = randn((2, 49, 16), torch.float32, seed=2)
    compiled = torch.compile(_double_stats, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), _double_stats(x))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_custom_op_inductor() -> None:
    torch._dynamo.reset()
    x = randn((2, 49, 16), torch.float32, seed=2)
    compiled = torch.compile(_double_stats, fullgraph=True)
    torch.testing.assert_close(compiled(x), _double_stats(x))


# --- the dispatcher ------------------------------------------------------------------------------------------


def test_compute_stats_backends() -> None:
    config = StatsConfig(cutoff=0.5, hfr_dims=2)
    x = randn((2, 49, 24), torch.bfloat16, seed=4)
    ref32 = reference_stats(x, config)
    assert torch.equal(stats.compute_stats(x, config, backend="torch"), ref32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" is silent: the PyTorch twin on a CPU, the kernel on a GPU
        auto = stats.compute_stats(x, config)
    assert torch.equal(auto, matmul_stats(x, config) if DEVICE.type == "cpu" else fused_stats(x, config))
    out = stats.compute_stats(x, config, backend="triton")  # on a CPU tensor: the interpreted kernel
    assert torch.equal(out, fused_stats(x, config))
    assert_stats_close(out, ref64(x, config), x, tolerance(torch.bfloat16, 49, 24))
    assert stats.triton_available()
    with pytest.raises(ValueError, match="backend"):
        stats.compute_stats(x, config, backend="fastest")


def test_compute_stats_triton_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    x = randn((1, 64, 8), torch.float32, seed=0).cpu()
    with pytest.raises(RuntimeError, match="float64"):
        stats.compute_stats(x.double(), backend="triton")
    monkeypatch.setattr(fused, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        stats.compute_stats(x, backend="triton")
    monkeypatch.setattr(stats, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="not importable"):
        stats.compute_stats(x, backend="triton")


def test_auto_fallback_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU (simulated), "auto" sends what the kernel cannot take to the reference, warning once per reason."""
    monkeypatch.setattr(stats, "_on_gpu", lambda x: True)
    monkeypatch.setattr(stats, "_warned", set())
    x = randn((2, 64, 8), torch.float64, seed=0).cpu()
    with pytest.warns(RuntimeWarning, match="float64"):
        out = stats.compute_stats(x)
    assert torch.equal(out, reference_stats(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats.compute_stats(x)  # second time: silent

    monkeypatch.setattr(stats, "triton_available", lambda: False)
    x32 = x.float()
    with pytest.warns(RuntimeWarning, match="not importable"):
        out = stats.compute_stats(x32)
    assert torch.equal(out, reference_stats(x32))


def test_auto_backend_on_the_gpu_path_compiles_without_graph_break(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compute_stats(backend="auto")`` on a (simulated) CUDA tensor inside ``torch.compile``: no Python-level
    availability probe may run while tracing (torch 2.11 cannot trace ``importlib.util.find_spec``: a graph break
    on the GPU).  The probe is replaced by a function Dynamo must not trace, so any call to it breaks the graph."""
    monkeypatch.setattr(stats, "_on_gpu", lambda x: True)
    monkeypatch.setattr(stats, "triton_available", torch.compiler.disable(lambda: True))
    torch._dynamo.reset()
    x = randn((2, 49, 16), torch.float32, seed=3).cpu()
    compiled = torch.compile(lambda z: stats.compute_stats(z * 2.0), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), matmul_stats(x * 2.0))
    torch._dynamo.reset()


# --- the GPU tilings, run on the CPU --------------------------------------------------------------------------

#: Capabilities whose tiling rows ship (Ampere, Hopper); distinct rows only are run.
GPU_TARGETS = ((8, 0), (9, 0))
#: (id, L, C, config): the tapped shapes that ship (DiT-XL/2, the embedded model's 96 and 384 channels on its
#: 14 x 14 grid, 1-D and 2-D) and awkward ones: L and C not powers of two, a non-square grid, L past one tile,
#: several basis-row blocks.
SHIPPED_SHAPES = [
    ("xl_1d", 256, 1152, StatsConfig()),
    ("xl_2d", 256, 1152, StatsConfig(hfr_dims=2)),
    ("emb96_1d", 196, 96, StatsConfig()),
    ("emb96_2d", 196, 96, StatsConfig(hfr_dims=2)),
    ("emb384_1d", 196, 384, StatsConfig()),
    ("emb384_2d", 196, 384, StatsConfig(hfr_dims=2)),
    ("grid10x30_c100", 300, 100, StatsConfig(cutoff=0.3, hfr_dims=2, grid=(10, 30))),
    ("l300_c70_kb3", 300, 70, StatsConfig(cutoff=0.45)),
    ("l90_c130_kb2", 90, 130, StatsConfig(cutoff=0.9)),
]


def _gpu_cases() -> list:
    cases = []
    for name, length, channels, config in SHIPPED_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            tiles = {fused.kernel_tiling(length, channels, config, dtype, target) for target in GPU_TARGETS}
            for tile in sorted(tiles, key=repr):
                tag = f"{name}-{str(dtype)[6:]}-{tile.block_l}x{tile.block_c}x{tile.block_k}g{tile.group_c}"
                cases.append(pytest.param(length, channels, config, dtype, tile, id=tag))
    return cases


@pytest.mark.parametrize(("length", "channels", "config", "dtype", "tile"), _gpu_cases())
def test_gpu_tiling_on_the_cpu(length: int, channels: int, config: StatsConfig, dtype: torch.dtype,
                               tile: fused.Tiling) -> None:
    """The exact tiling a GPU gets for a shipped shape, run by the interpreter: the channel blocks, groups and
    basis-row blocks of the GPU, with a persistent grid smaller than the work (so programs take several items and
    the merging item is not the last one launched).  Against the fp64 reference; on the smaller shapes also
    bitwise equal to the two-launch merge and batch-invariant (the interpreter's cost grows with L C)."""
    small = length * channels <= 20_000
    n = 2 if small else 1
    x = randn((n, length, channels), dtype, seed=length + channels)
    items = n * fused.num_groups(length, channels, tile)
    out = fused_stats(x, config, tile=tile, num_programs=max(1, items // 2 - 1))
    assert_stats_close(out, ref64(x, config), x, tolerance(dtype, length, channels))
    if small:
        assert torch.equal(out, fused_stats(x, config, tile=tile, merge_in_kernel=False))
        assert torch.equal(out[1:], fused_stats(x[1:], config, tile=tile))


def test_gpu_tilings_cover_blocks() -> None:
    """The shipped shapes above exercise several channel blocks, channel groups and basis-row blocks, and both
    the one-tile and the token-tiled kernel."""
    tiles = [(p.values[0], p.values[1], p.values[2], p.values[4]) for p in _gpu_cases()]
    assert any(-(-c // t.block_c) > 1 and fused.num_groups(length, c, t) > 1 for length, c, _, t in tiles)
    assert any(-(-fused.low_rows(length, cfg) // t.block_k) > 1 for length, _, cfg, t in tiles)
    assert any(t.one_tile(length) and t.group_c > 1 for length, _, _, t in tiles)
    assert any(not t.one_tile(length) for length, _, _, t in tiles)


def test_tiling_table() -> None:
    """Every row is valid, depends on (L, C, K, dtype, target) only, and bad targets are refused."""
    for length in (16, 49, 196, 256, 300, 1024, 4096):
        for channels in (1, 96, 1152, 3072):
            for k in (0, 4, 38, 200):
                for dtype in DTYPES:
                    for target in ("interpreter", (7, 5), (8, 0), (9, 0)):
                        row = fused.tiling(length, channels, k, dtype, target)
                        row.check()
                        assert row == fused.tiling(length, channels, k, dtype, target)
    with pytest.raises(ValueError, match="target"):
        fused.tiling(256, 1152, 38, torch.bfloat16, "gpu")
    with pytest.raises(ValueError, match="group_c"):
        fused.Tiling(64, 64, 16).with_overrides(group_c=0)
