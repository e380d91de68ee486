"""The first-use check that stands between ``backend="auto"`` and the CUDA kernel (``ops/cuda_canary.py``).

The CUDA kernel cannot run here, so stand-ins take its place: the fp32 reference (a correct kernel, up to
rounding) and kernels with the faults a wrong fragment or tile map makes (tokens out of order, a channel group
lost, a crash).  The oracle is the fp64 reference and a direct numpy computation of the disagreement.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from aselect_kernels.ops import backend_table, cuda_canary, custom_op
from aselect_kernels.ops import cuda_stats as cuda_module
from aselect_kernels.reference import StatsConfig, reference_stats

SHAPES = [(40, 136, torch.float32), (196, 384, torch.bfloat16), (64, 96, torch.float16), (17, 50, torch.float32)]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_canary, "_verdicts", {})


def install(monkeypatch: pytest.MonkeyPatch, kernel) -> list[int]:
    calls: list[int] = []

    def counted(x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
        calls.append(x.shape[0])
        return kernel(x, config)

    monkeypatch.setattr(cuda_module, "cuda_stats", counted)
    return calls


def good(x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    return reference_stats(x.float(), config, torch.float32)


def tokens_out_of_order(x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    perm = torch.arange(x.shape[1]).view(-1, 1) if x.shape[1] % 2 else torch.arange(x.shape[1]).view(-1, 2).flip(1)
    return good(x[:, perm.reshape(-1)], config)


def lost_group(x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    return good(x[:, :, :-16], config)


def crash(x: torch.Tensor, config: StatsConfig) -> torch.Tensor:
    raise RuntimeError("misaligned address")


def x_like(length: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(3, length, channels, dtype=dtype)  # only its instance matters: the check makes its own input


@pytest.mark.parametrize("length,channels,dtype", SHAPES)
@pytest.mark.parametrize("config", [StatsConfig(), StatsConfig(cutoff=0.3, hfr_dims=2)])
def test_a_correct_kernel_passes(monkeypatch, length, channels, dtype, config):
    if config.hfr_dims == 2 and math.isqrt(length) ** 2 != length:
        config = StatsConfig(cutoff=0.3, hfr_dims=2, grid=(1, length))
    calls = install(monkeypatch, good)
    assert cuda_canary.check(x_like(length, channels, dtype), config) is None
    assert calls == [cuda_canary.CANARY_SAMPLES]


@pytest.mark.parametrize("kernel,words", [(tokens_out_of_order, "disagrees"), (lost_group, "disagrees"),
                                          (crash, "misaligned address")])
@pytest.mark.parametrize("length,channels,dtype", SHAPES[:3])
def test_a_wrong_kernel_is_refused_and_named(monkeypatch, kernel, words, length, channels, dtype):
    install(monkeypatch, kernel)
    with pytest.warns(RuntimeWarning, match="Triton kernel instead") as caught:
        reason = cuda_canary.check(x_like(length, channels, dtype), StatsConfig())
    assert reason is not None and words in reason
    assert f"[N, {length}, {channels}] {str(dtype).replace('torch.', '')}" in reason
    assert len(caught) == 1


def test_the_check_runs_once_per_instance(monkeypatch):
    calls = install(monkeypatch, lost_group)
    x = x_like(40, 136, torch.bfloat16)
    with pytest.warns(RuntimeWarning):
        for _ in range(3):
            assert not cuda_canary.trusted(x, StatsConfig(), capturing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same instance
        cuda_canary.trusted(x, StatsConfig(), capturing=False)
    assert len(calls) == 1
    with pytest.warns(RuntimeWarning):
        cuda_canary.trusted(x, StatsConfig(cutoff=0.25), capturing=False)  # another config, another instance
        cuda_canary.trusted(x_like(41, 136, torch.bfloat16), StatsConfig(), capturing=False)
    assert len(calls) == 3


def test_no_check_during_graph_capture(monkeypatch):
    calls = install(monkeypatch, good)
    x = x_like(64, 96, torch.float16)
    assert not cuda_canary.trusted(x, StatsConfig(), capturing=True)  # unchecked: Triton, and no synchronising check
    assert calls == []
    assert cuda_canary.trusted(x, StatsConfig(), capturing=False)  # an eager warm-up checks it
    assert cuda_canary.trusted(x, StatsConfig(), capturing=True)
    assert calls == [cuda_canary.CANARY_SAMPLES]


@pytest.mark.parametrize("kernel,expect", [(good, "cuda"), (tokens_out_of_order, "triton"), (crash, "triton")])
def test_auto_follows_the_verdict(monkeypatch, kernel, expect):
    install(monkeypatch, kernel)
    monkeypatch.setattr(backend_table, "choose_for", lambda x, hfr_dims: "cuda")
    monkeypatch.setattr(cuda_module, "unavailable_reason", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert custom_op.gpu_kernel(x_like(196, 384, torch.bfloat16), StatsConfig()) == expect


def test_disagreement_against_numpy():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 30, 20, generator=gen, dtype=torch.float64) + 2
    ref = reference_stats(x, StatsConfig(), torch.float64)
    out = ref * (1 + 1e-3 * torch.randn(ref.shape, generator=gen, dtype=torch.float64))
    r, o, xs = ref.numpy(), out.numpy(), x.numpy()
    scale = np.abs(r).copy()
    scale[:, 0] = np.maximum(scale[:, 0], np.sqrt((xs**2).mean(axis=(1, 2))))
    scale[:, 3:] = np.maximum(scale[:, 3:], 1.0)
    assert cuda_canary.disagreement(out, ref, x) == pytest.approx(float((np.abs(o - r) / scale).max()), rel=1e-12)
    assert cuda_canary.disagreement(ref, ref, x) == 0.0
    nan_out = out.clone()
    nan_out[0, 4] = float("nan")
    assert cuda_canary.disagreement(nan_out, ref, x) == math.inf


def test_the_check_input_has_structure():
    x = cuda_canary.canary_input(64, 48, torch.float32, "cpu")
    assert torch.equal(x, cuda_canary.canary_input(64, 48, torch.float32, "cpu"))
    stats = reference_stats(x.double(), StatsConfig(), torch.float64)
    means = x.double().mean(1)
    assert means.std(1).min() > 1.0  # channel means far apart: the shifted moments are exercised
    assert (stats[:, 5] < 0.9).all()  # the low band holds energy: the projection is exercised
