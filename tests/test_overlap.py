"""The ``overlap`` option of the taps on the CPU: its plumbing, its results and its hooks (the side-stream path itself
needs CUDA and is checked by ``bench/bench_stats.py``'s ``checks`` section on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aselect_kernels.forward import run_multi_timestep
from aselect_kernels.noise import Noiser
from aselect_kernels.reference import STAT_NAMES, StatsConfig, reference_stats
from aselect_kernels.select import capture_features, select_timestep
from aselect_kernels.taps import TapSet, resolve_taps

from tiny_models import PlainDiT

TS = [0, 300, 999]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return PlainDiT().eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(11))


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_overlap_scores_equal_the_reference_and_leave_no_hooks(model, images):
    taps = ["blocks.0.attn", "blocks.1.mlp", "blocks.1.attn.qkv[k]"]
    res = select_timestep(model, images, TS, taps=taps, backend="matmul", chunk_size=4, overlap=True,
                          progress=False)
    plain = select_timestep(model, images, TS, taps=taps, backend="matmul", chunk_size=4, progress=False)
    assert _hook_count(model) == 0
    assert res.meta["overlap"] is True and plain.meta["overlap"] is False
    np.testing.assert_array_equal(res.per_sample, plain.per_sample)
    feats, _ = capture_features(model, images, TS, taps, pool=False, chunk_size=5, progress=False)
    for p, name in enumerate(res.taps):  # oracle: the fp64 reference on the raw tapped tensors
        x = feats[name].reshape(-1, *feats[name].shape[2:])
        ref = reference_stats(x.double(), StatsConfig(), torch.float64).numpy().reshape(3, len(TS), -1)
        np.testing.assert_array_equal(res.mean, plain.mean)  # sf too
        for s, scorer in [(s, name) for s, name in enumerate(res.scorers) if name in STAT_NAMES]:
            np.testing.assert_allclose(res.per_sample[:, :, p, s], ref[:, :, STAT_NAMES.index(scorer)],
                                       rtol=1e-4, atol=1e-5, err_msg=f"{name} {scorer}")


def test_join_runs_after_every_chunk_forward(model, images):
    specs = resolve_taps(model, ["blocks.1.mlp"])
    events: list[str] = []
    with TapSet(model, specs, total=len(images) * len(TS), backend="matmul", overlap=True) as tapset:
        def on_chunk(rows: torch.Tensor) -> None:
            events.append("start")
            tapset.rows = rows

        def on_end() -> None:
            assert tapset.shapes, "join ran before the chunk's forward"
            events.append("end")
            tapset.join()

        info = run_multi_timestep(model, images, TS, Noiser("ddpm"), on_chunk=on_chunk, on_chunk_end=on_end,
                                  chunk_size=2, progress=False)
        stats = tapset.collect()
    assert info.chunks == 5 and events == ["start", "end"] * info.chunks
    assert not torch.isnan(stats["blocks.1.mlp"]).any()
    assert _hook_count(model) == 0


def test_hooks_are_removed_when_the_forward_fails(model, images):
    specs = resolve_taps(model, ["blocks.0.attn"])
    with pytest.raises(ValueError, match="chunk has 1 samples"), TapSet(model, specs, 8, overlap=True) as tapset:
        tapset.rows = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            model(images[:2], torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert _hook_count(model) == 0


def test_overlap_must_be_a_bool(model):
    with pytest.raises(TypeError, match="overlap must be True or False"):
        TapSet(model, resolve_taps(model, ["blocks.0.attn"]), 4, overlap="yes")
