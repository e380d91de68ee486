"""Progress bars: the forward's bar moves inside a chunk and is closed on error; probe fits show theirs."""

from __future__ import annotations

import pytest
import torch
import tqdm.auto

from aselect_kernels.forward import _ChunkProgress, run_multi_timestep
from aselect_kernels.noise import Noiser
from aselect_kernels.select import select_timestep
from aselect_kernels.validation.grids import _fit_progress, probe_grid

from tiny_models import PlainDiT, tiny_dit


@pytest.fixture
def bars(monkeypatch):
    """Every progress bar the code under test opens (real tqdm bars, recorded)."""
    opened = []

    class Recorded(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen = []
            opened.append(self)

        def update(self, n=1):
            super().update(n)
            self.seen.append(self.n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    return opened


def hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_bar_moves_inside_a_single_chunk(bars):
    """One chunk of 12 samples through a 3-block DiT: before block 2 runs, blocks 0 and 1 have moved the bar."""
    model = tiny_dit(layers=3)
    images = torch.randn(4, 1, 12, 12)
    during = []
    handle = model.transformer_blocks[2].register_forward_pre_hook(lambda m, a: during.append(bars[-1].n))
    try:
        select_timestep(model, images, [0, 400, 900], taps="query:0", scorer="token_var", extra_scorers=[],
                        backend="torch", chunk_size=12)
    finally:
        handle.remove()
    (bar,) = bars
    assert during == [8] and bar.seen == [4, 8, 12] and bar.total == 12 and bar.disable  # closed
    assert hooks_left(model) == 0


def test_bar_closed_and_hooks_removed_when_a_chunk_raises(bars):
    model = tiny_dit(layers=2)
    calls = []

    def call(model, x_t, t_model, b, cond, n_images):
        calls.append(x_t.shape[0])
        if len(calls) == 2:
            raise ValueError("the model failed")
        return model(hidden_states=x_t, timestep=t_model, class_labels=torch.full_like(b, 10))

    with pytest.raises(ValueError, match="the model failed"):
        run_multi_timestep(model, torch.randn(3, 1, 12, 12), [0, 500], Noiser("ddpm"), chunk_size=4, call=call)
    (bar,) = bars
    assert bar.n == 4 and bar.disable and hooks_left(model) == 0


def test_no_bar_without_progress(bars):
    model = tiny_dit(layers=2)
    run_multi_timestep(model, torch.randn(2, 1, 12, 12), [0, 500], Noiser("ddpm"), chunk_size=2, progress=False)
    assert bars == [] and hooks_left(model) == 0


def test_block_hooks_do_not_break_a_compiled_graph():
    model = PlainDiT().eval()
    progress = _ChunkProgress(model, 4)
    try:
        progress.start_chunk(4)
        x, t, y = torch.randn(4, 1, 12, 12), torch.tensor([1, 50, 300, 900]), torch.tensor([1, 2, 3, 4])
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(x, t, y)
    finally:
        progress.close()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert hooks_left(model) == 0


def test_probe_grid_shows_its_fits(bars):
    model = PlainDiT().eval()
    gen = torch.Generator().manual_seed(0)
    train = (torch.rand(8, 1, 12, 12, generator=gen) * 2 - 1, torch.arange(8) % 2)
    test = (torch.rand(6, 1, 12, 12, generator=gen) * 2 - 1, torch.arange(6) % 2)
    grid = probe_grid(model, train, test, [500], "block_out:1", 2)
    fits = [b for b in bars if b.desc == "probe fits"]
    assert len(fits) == 1 and fits[0].total == len(grid.taps) + 1 and fits[0].seen[-1] == fits[0].total
    assert fits[0].disable


def test_fit_progress_calls_on_fit_instead_of_a_bar(bars):
    calls = []
    with _fit_progress(True, lambda done, total: calls.append((done, total)), 3, "probe fits") as fitted:
        for done in (1, 2, 3):
            fitted(done)
    assert calls == [(1, 3), (2, 3), (3, 3)] and bars == []
    with pytest.raises(RuntimeError), _fit_progress(True, None, 3, "probe fits") as fitted:
        fitted(1)
        raise RuntimeError("a fit failed")
    (bar,) = bars
    assert bar.seen == [1] and bar.disable  # closed on the error
