"""A selection result survives its JSON round trip whole: flagged samples, dead (all-NaN) cells, the choices and the
table, checked field by field against the original and against numpy on the per-sample scores it was built from."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from aselect_kernels import select_timestep
from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments

from tiny_models import tiny_dit


def _scores_with_holes(b: int, seed: int) -> np.ndarray:
    """Random per-sample scores ``[B, T=4, P=3, S=2]`` with flagged samples (NaN, +-Inf) and dead cells: tap 1
    dead at every t under every scorer, tap 2 dead at the last t under scorer 0 only."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((b, 4, 3, 2)) * rng.uniform(0.1, 10.0, size=(1, 4, 3, 2))
    v[:, :, 1, :] = np.nan
    v[:, 3, 2, 0] = np.where(rng.random(b) < 0.5, np.inf, np.nan)
    if b > 1:  # scattered flagged samples in live cells
        v[0, 0, 0, 1] = np.nan
        v[b - 1, 1, 2, 0] = -np.inf
    return v


def _result(values: np.ndarray, moments: Moments | None = None) -> SelectionResult:
    return SelectionResult(
        [999, 0, 500, 250], ["tb0.attn1", "tb1.ff", "blocks.2.attn.qkv[q]"], ["hfr", "token_var"],
        {"hfr": "max", "token_var": "min"}, moments or Moments.from_samples(values), "token_var",
        meta={"model": "tiny", "images": values.shape[0], "grid": None, "cutoff": 0.15, "nested": {"a": [1, 2.5]}},
    )


def _choices(res: SelectionResult) -> dict:
    """Everything the result reports, per scorer and direction (an error message stands for a refused choice)."""
    out: dict = {"n_flagged": res.n_flagged}
    for name in res.scorers:
        for d in ("max", "min"):
            out[name, d, "per_tap"] = res.best_t_per_tap(name, d)
            try:
                out[name, d, "best"] = res.best(name, d)
            except ValueError as exc:
                out[name, d, "best"] = str(exc)
        out[name, "dead"] = res.dead_cells(name)
        out[name, "table"] = res.table(name, max_taps=2)
    return out


def _assert_same_result(back: SelectionResult, res: SelectionResult) -> None:
    """Field by field: the axes, directions, primary and meta equal; the moments equal exactly (counts as integers);
    the derived mean/std equal, NaN where the original has NaN; every choice and table equal."""
    assert (back.timesteps, back.taps, back.scorers) == (res.timesteps, res.taps, res.scorers)
    assert (back.directions, back.primary, back.meta) == (res.directions, res.primary, res.meta)
    for field in ("count", "flagged"):
        got, want = getattr(back.moments, field), getattr(res.moments, field)
        assert np.issubdtype(got.dtype, np.integer) and np.array_equal(got, want), field
    for field in ("total", "total_sq"):
        assert np.array_equal(getattr(back.moments, field), getattr(res.moments, field)), field
    np.testing.assert_array_equal(back.mean, res.mean)  # NaN matches NaN
    np.testing.assert_array_equal(back.std, res.std)
    assert _choices(back) == _choices(res)


def _assert_matches_numpy(res: SelectionResult, values: np.ndarray) -> None:
    """The result against numpy on the per-sample scores ``[B, T, P, S]``: counts, flags, mean and std over the
    finite samples (ddof=1; 0 for one sample), the dead cells and the best cell of each scorer."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    np.testing.assert_array_equal(res.count, ok.sum(0))
    np.testing.assert_array_equal(res.flagged, (~ok).sum(0))
    live = np.where(ok, values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # dead cells: mean of nothing
        mean = np.nanmean(live, axis=0)
        std = np.where(ok.sum(0) > 1, np.nanstd(live, axis=0, ddof=1), np.where(ok.sum(0) == 1, 0.0, np.nan))
    np.testing.assert_allclose(res.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.std, std, rtol=1e-9, atol=1e-12)
    for s, name in enumerate(res.scorers):
        dead = [(res.timesteps[t], res.taps[p]) for t, p in zip(*np.nonzero(ok[..., s].sum(0) == 0), strict=True)]
        assert res.dead_cells(name) == dead
        sign = 1.0 if res.directions[name] == "max" else -1.0
        masked = np.where(np.isfinite(mean[..., s]), sign * mean[..., s], -np.inf)
        t, p = np.unravel_index(np.argmax(masked), masked.shape)
        assert res.best(name) == (res.timesteps[t], res.taps[p])


@pytest.mark.parametrize("b,seed", [(1, 0), (2, 1), (7, 2)])
def test_round_trip_keeps_flags_dead_cells_and_choices(tmp_path, b, seed):
    values = _scores_with_holes(b, seed)
    res = _result(values)
    assert res.n_flagged > 0 and res.dead_cells("hfr") and res.dead_cells("token_var")  # the holes are there
    path = tmp_path / "r.json"
    text = res.to_json(path)
    for back in (SelectionResult.from_json(text), SelectionResult.from_json(path)):
        _assert_same_result(back, res)
        _assert_matches_numpy(back, values)
        assert back.to_json() == text  # a fixed point: nothing drifts on a second trip
    d = json.loads(text)
    assert d["dead_cells"] == {name: [list(c) for c in res.dead_cells(name)] for name in res.scorers}
    assert d["best"] == {"t": res.best()[0], "tap": res.best()[1]}


def test_round_trip_equals_a_result_recomputed_from_chunks(tmp_path):
    """The same per-sample scores aggregated chunk by chunk (as a sharded run would): one result, read back."""
    values = _scores_with_holes(9, 3)
    merged = Moments.from_samples(values[:1]).merge(Moments.from_samples(values[1:5])).merge(
        Moments.from_samples(values[5:]))
    back = SelectionResult.from_json(_result(values, merged).to_json())
    whole = _result(values)
    for field in ("count", "flagged"):
        np.testing.assert_array_equal(getattr(back.moments, field), getattr(whole.moments, field))
    np.testing.assert_allclose(back.mean, whole.mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(back.std, whole.std, rtol=1e-10, atol=1e-15)
    for name in whole.scorers:
        assert back.dead_cells(name) == whole.dead_cells(name) and back.best(name) == whole.best(name)
        assert back.best_t_per_tap(name) == whole.best_t_per_tap(name)


def test_round_trip_of_a_scored_run_with_poisoned_features(tmp_path):
    """A real run in which block 1's query is NaN for every image at the first t (dead cells) and Inf for one
    sample at another t (a flagged sample): the result read back equals the original and numpy on its per-sample
    scores."""
    model = tiny_dit()
    images = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    ts = [0, 400, 999]

    def poison(module, args, out):
        out = out.clone()
        out[0:: len(ts)] = float("nan")  # one chunk of all 9 samples, row = image * len(ts) + t index
        out[len(ts) + 1, 0, 0] = float("inf")  # image 1 at t=400
        return out

    handle = model.transformer_blocks[1].attn1.to_q.register_forward_hook(poison)
    try:
        res = select_timestep(model, images, ts, taps="query", scorer="token_var",
                              extra_scorers=["hfr", "chan_entropy"], backend="torch", chunk_size=9, progress=False)
        pairs = select_timestep(model, images, ts, taps="query", extra_scorers=[], backend="torch", chunk_size=9,
                                progress=False)
    finally:
        handle.remove()
    tap = "transformer_blocks.1.attn1.to_q"
    assert res.dead_cells() == [(0, tap)] and res.flagged[1, res.taps.index(tap)].all()
    assert res.n_flagged == 4 * len(res.scorers)
    path = tmp_path / "r.json"
    res.to_json(path)
    back = SelectionResult.from_json(path)
    _assert_same_result(back, res)
    _assert_matches_numpy(back, res.per_sample)
    # the across-image scorer sf (both draws see the same poisoned rows): a dead t = 0 cell, one image dropped at
    # t = 400 on block 1, every image elsewhere; its one value per cell round-trips exactly
    assert pairs.scorers == ["sf"] and pairs.dead_cells() == [(0, tap)]
    p = pairs.taps.index(tap)
    assert pairs.count[:, p, 0].tolist() == [0, 2, 3] and pairs.flagged[:, p, 0].tolist() == [3, 1, 0]
    assert (pairs.count[:, [q for q in range(len(pairs.taps)) if q != p], 0] == 3).all()
    pairs.to_json(path)
    back = SelectionResult.from_json(path)
    _assert_same_result(back, pairs)
    assert "one value per cell" in back.table()
