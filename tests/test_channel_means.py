"""The per-channel token means returned beside the statistics (``compute_stats(..., with_means=True)``).

The oracle is :func:`aselect_kernels.reference.channel_means` in float64 on the same input values.  A fp16 or
bf16 input is read exactly and accumulated in fp32 like an fp32 one, so one tolerance serves every dtype: the
rounding of ``mu_c`` itself plus the fp32 sum of the shifted tokens, relative to the channel's spread about its
first token and growing with ``L``.  Under ``conftest.py`` the Triton kernel runs in the interpreter.
"""

from __future__ import annotations

import math

import pytest
import torch

from aselect_kernels import stats
from aselect_kernels.ops.matmul_stats import matmul_stats
from aselect_kernels.reference import StatsConfig, channel_means

fused = pytest.importorskip("aselect_kernels.ops.fused_stats", reason="triton is not installed")

if not fused.INTERPRET and not torch.cuda.is_available():
    pytest.skip("the kernel needs a CUDA device or TRITON_INTERPRET=1 (set by conftest.py)", allow_module_level=True)
DEVICE = torch.device("cpu") if fused.INTERPRET else torch.device("cuda")

U32 = 2.0**-24
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("triton", "matmul", "auto", "torch")


def randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int, offset: float = 0.0,
          spread: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * spread + offset).to(dtype=dtype, device=DEVICE)


def assert_means_close(means: torch.Tensor, x: torch.Tensor) -> None:
    """``|means - mu| <= 2 u |mu| + 8 u sqrt(L) max_l |x_lc - x_0c|`` per channel, ``mu`` in float64."""
    n, length, channels = x.shape
    assert means.dtype == torch.float32 and means.shape == (n, channels) and means.device == x.device
    x64 = x.detach().cpu().double()
    ref = channel_means(x64, torch.float64)
    spread = (x64 - x64[:, :1, :]).abs().amax(dim=1)
    tol = 2 * U32 * ref.abs() + 8 * U32 * math.sqrt(length) * spread
    err = (means.cpu().double() - ref).abs()
    assert (err <= tol).all(), f"channel means off by up to {(err / tol.clamp_min(1e-300)).max():.2f} x tolerance"


def stats_and_means(x: torch.Tensor, config: StatsConfig, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute_stats(with_means=True)``, checked to give the same statistics, bit for bit, as without."""
    out, means = stats.compute_stats(x, config, backend, with_means=True)
    assert torch.equal(out, stats.compute_stats(x, config, backend)), "with_means changed the statistics"
    return out, means


# (id, N, L, C): N = 1, L and C not powers of two, one tile (L <= 256) and token tiles (L = 300).
SHAPES = [("n1_l63_c37", 1, 63, 37), ("l300_c130", 2, 300, 130), ("l49_c200", 3, 49, 200)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n", "length", "channels"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_matches_reference(n: int, length: int, channels: int, dtype: torch.dtype, backend: str) -> None:
    x = randn((n, length, channels), dtype, seed=length * 1000 + channels, offset=0.3)
    _, means = stats_and_means(x, StatsConfig(), backend)
    assert_means_close(means, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_views(dtype: torch.dtype, backend: str) -> None:
    """A transposed view (channel stride L) and a sliced one (token stride 2, channel offset)."""
    config = StatsConfig(cutoff=0.5, hfr_dims=2, grid=(6, 8))
    transposed = randn((2, 37, 48), dtype, seed=21).transpose(1, 2)  # [2, 48, 37]
    sliced = randn((2, 96, 45), dtype, seed=22)[:, ::2, 5:42]  # [2, 48, 37]
    for view in (transposed, sliced):
        assert not view.is_contiguous()
        _, means = stats_and_means(view, config, backend)
        assert_means_close(means, view)
        if backend == "triton":  # the kernel's summation order does not depend on the strides
            assert torch.equal(means, stats.compute_stats(view.contiguous(), config, backend, with_means=True)[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_constant_channel_and_large_offset(dtype: torch.dtype, backend: str) -> None:
    """A channel constant across tokens gets its value exactly; channels at mean 3000 with a spread of 0.5 stay
    accurate relative to the spread (the shift by the first token), not to the mean."""
    x = randn((2, 63, 37), dtype, seed=5, offset=3000.0, spread=0.5)
    x[:, :, 4] = torch.tensor([[-1.75], [2.7]]).to(dtype=dtype, device=DEVICE)  # one constant per sample
    x[:, :, 9] = 0.0
    _, means = stats_and_means(x, StatsConfig(), backend)
    assert_means_close(means, x)
    assert torch.equal(means[:, 4], x[:, 0, 4].float())
    assert torch.equal(means[:, 9], torch.zeros(2, device=DEVICE))


# (id, L, C, config, tile): GPU rows of the tiling table (the target given) and forced tilings; every one checks
# what it claims in ``test_tilings``.
TILINGS = [
    ("gpu_one_tile_l196_c96_2d", 196, 96, StatsConfig(hfr_dims=2), (9, 0)),
    ("gpu_tiled_l90_c130_kb2", 90, 130, StatsConfig(cutoff=0.9), (9, 0)),
    ("gpu_tiled_l300_c130", 300, 130, StatsConfig(), (8, 0)),
    ("groups3_l63_c100", 63, 100, StatsConfig(cutoff=0.75), fused.Tiling(block_l=64, block_c=16, block_k=16,
                                                                           group_c=3)),
]


def _tile(length: int, channels: int, config: StatsConfig, dtype: torch.dtype, tile: object) -> fused.Tiling:
    return tile if isinstance(tile, fused.Tiling) else fused.kernel_tiling(length, channels, config, dtype, tile)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("length", "channels", "config", "tile"), [s[1:] for s in TILINGS],
                         ids=[s[0] for s in TILINGS])
def test_tilings(length: int, channels: int, config: StatsConfig, tile: object, dtype: torch.dtype) -> None:
    """Every channel block of every group stores its means, on the one-tile and the token-tiled kernel, with a
    persistent grid smaller than the work; the statistics are the bits of the same launch without means."""
    tile = _tile(length, channels, config, dtype, tile)
    x = randn((2, length, channels), dtype, seed=length + channels, offset=0.3)
    items = 2 * fused.num_groups(length, channels, tile)
    programs = max(1, items // 2 - 1)
    out, means = fused.fused_stats(x, config, tile=tile, num_programs=programs, with_means=True)
    assert_means_close(means, x)
    assert torch.equal(out, fused.fused_stats(x, config, tile=tile, num_programs=programs))
    if length * channels <= 20_000:  # the two-launch merge writes the same means (the interpreter is slow)
        two = fused.fused_stats(x, config, tile=tile, merge_in_kernel=False, with_means=True)
        assert torch.equal(two[0], out) and torch.equal(two[1], means)


def test_tilings_cover_the_kernel() -> None:
    """The cases above reach several channel blocks per group, several groups, several basis-row blocks, and
    both the one-tile and the token-tiled kernel."""
    cases = [(length, c, cfg, _tile(length, c, cfg, dtype, t)) for _, length, c, cfg, t in TILINGS
             for dtype in (torch.float32, torch.bfloat16)]
    assert any(t.one_tile(length) and t.group_c > 1 and fused.num_groups(length, c, t) > 1 for length, c, _, t in cases)
    assert any(not t.one_tile(length) and -(-c // t.block_c) > 1 for length, c, _, t in cases)
    assert any(-(-fused.low_rows(length, cfg) // t.block_k) > 1 for length, _, cfg, t in cases)


def test_launch_plan_and_buffers() -> None:
    """Without means nothing is allocated for them and the kernel is compiled without the store."""
    x = randn((3, 63, 37), torch.float32, seed=1)
    tile = fused.kernel_tiling(63, 37, StatsConfig(), torch.float32, "interpreter")
    plain = fused.launch_plan(x)
    assert plain.means is None and plain.meta["WRITE_MEANS"] is False
    assert plain.args[8] is plain.out  # the unused means pointer is the output buffer
    plan = fused.launch_plan(x, with_means=True)
    assert plan.meta["WRITE_MEANS"] is True and plan.means.shape == (3, 37) and plan.means.dtype == torch.float32
    assert plan.args[8] is plan.means and plan.args[-1] == plan.means.stride(0)
    sizes = fused.buffer_bytes(3, 63, 37, tile)
    assert fused.buffer_bytes(3, 63, 37, tile, with_means=True) == sizes + [3 * 37 * 4]
    assert isinstance(fused.fused_stats(x), torch.Tensor)


def test_dispatch_reads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``matmul``, ``auto`` (CPU) and ``triton`` return the means their kernel computed (the reference's second pass
    is never called); ``torch`` takes the reference's; bad input is refused by name."""
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return channel_means(x)

    monkeypatch.setattr(stats, "channel_means", counted)
    x = randn((2, 49, 24), torch.bfloat16, seed=4)
    config = StatsConfig(cutoff=0.5, hfr_dims=2)
    for backend in ("matmul", "triton") + (("auto",) if DEVICE.type == "cpu" else ()):
        stats_and_means(x, config, backend)
    assert calls == []
    assert torch.equal(stats.compute_stats(x, config, "matmul", with_means=True)[1],
                       matmul_stats(x, config, with_means=True)[1])
    _, means = stats_and_means(x, config, "torch")
    assert len(calls) == 1 and torch.equal(means, channel_means(x))
    with pytest.raises(ValueError, match="backend"):
        stats.compute_stats(x, config, "fastest", with_means=True)
    with pytest.raises(RuntimeError, match="float64"):
        stats.compute_stats(x.double(), config, "triton", with_means=True)
    with pytest.raises(ValueError, match="rank 3"):
        stats.compute_stats(x[0], config, "matmul", with_means=True)


def test_auto_on_a_gpu_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a (simulated) CUDA tensor, ``auto`` takes the fused kernel's means where the table gives the shape to
    Triton; where it gives it to the CUDA kernel (here stood in by the PyTorch twin), the unfused fallback."""
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return channel_means(x)

    monkeypatch.setattr(stats, "_on_gpu", lambda x: True)
    monkeypatch.setattr(stats, "channel_means", counted)
    monkeypatch.setattr(stats.custom_op, "gpu_kernel", lambda x, config: "triton")
    x = randn((2, 63, 37), torch.float32, seed=6)
    config = StatsConfig()
    out, means = stats.compute_stats(x, config, "auto", with_means=True)
    ref_out, ref_means = fused.fused_stats(x, config, with_means=True)
    assert torch.equal(out, ref_out) and torch.equal(means, ref_means) and calls == []

    monkeypatch.setattr(stats.custom_op, "gpu_kernel", lambda x, config: "cuda")
    monkeypatch.setattr(stats, "_run_op", lambda x, config, by_table=True: matmul_stats(x, config))
    out, means = stats.compute_stats(x, config, "auto", with_means=True)
    assert len(calls) == 1 and torch.equal(out, matmul_stats(x, config)) and torch.equal(means, channel_means(x))


def test_compiled_fallback() -> None:
    """Inside ``torch.compile`` the custom op gives the statistics and the reference the means, in one graph."""
    torch._dynamo.reset()
    x = randn((2, 49, 16), torch.float32, seed=3)

    def fn(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stats.compute_stats(z * 2.0, with_means=True)

    out, means = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    assert torch.equal(out, stats.compute_stats(x * 2.0))
    assert_means_close(means, x * 2.0)
