"""What a selection says about itself: the bootstrap over its images, the tied cells, and the grid's edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aselect_kernels import confidence
from aselect_kernels.embedded.data import load_embedded_images
from aselect_kernels.embedded.model import build_model, load_embedded
from aselect_kernels.images import to_model_range
from aselect_kernels.result import SelectionResult
from aselect_kernels.scorers import Moments
from aselect_kernels.select import select_timestep

from tiny_models import tiny_dit


def _sf_numpy(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    n1 = a.shape[0] - 1
    cov, var = (a * b).sum(0) / n1, (a ** 2 + b ** 2).sum(0) / n1
    live = var > 0
    return float((2 * cov[live] / var[live]).mean())


def test_resampled_cell_means_equal_a_loop_over_the_drawn_images():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((9, 3, 2))
    values[rng.random(values.shape) < 0.1] = np.nan  # flagged scores are left out, as in the table
    counts = confidence.resample_counts(9, resamples=40, seed=int(rng.integers(100)))
    assert (counts.sum(1) == 9).all()
    got = confidence.sample_bootstrap(values, counts)
    for r in range(40):
        drawn = np.repeat(values, counts[r], axis=0)  # the resample, image by image
        ok = np.isfinite(drawn)
        with np.errstate(invalid="ignore"):
            want = np.where(ok, drawn, 0.0).sum(0) / ok.sum(0)
        np.testing.assert_allclose(got[r], want, rtol=1e-12, equal_nan=True)


def test_resampled_signal_fraction_equals_numpy_on_the_drawn_images():
    rng = np.random.default_rng(1)
    n, c = 12, 5
    a = rng.standard_normal((n, c))
    b = a + 0.5 * rng.standard_normal((n, c))
    a[:, 2] = 3.0  # a constant channel in both draws: outside C'
    b[:, 2] = 3.0
    a[4, 0] = np.nan  # image 4 is dropped from both draws
    counts = confidence.resample_counts(n, resamples=30, seed=3)
    got = confidence.pair_bootstrap(confidence.signal_fraction, torch.from_numpy(a), torch.from_numpy(b), counts)
    keep = np.array([i for i in range(n) if i != 4])
    for r in range(30):
        rows = np.repeat(keep, counts[r, keep])
        assert got[r] == pytest.approx(_sf_numpy(a[rows], b[rows]), rel=1e-10)
    # any other across-image scorer goes through its own pair_fn on the drawn images
    other = confidence.pair_bootstrap(lambda x, y: (x - y).abs().mean(), torch.from_numpy(a), torch.from_numpy(b),
                                      counts)
    for r in range(30):
        rows = np.repeat(keep, counts[r, keep])
        assert other[r] == pytest.approx(np.abs(a[rows] - b[rows]).mean())


def _result(mean: np.ndarray, taps: list[str], timesteps: list[int], direction: str = "max") -> SelectionResult:
    count = np.full(mean.shape + (1,), 8)
    m = Moments(count, mean[..., None] * 8, mean[..., None] ** 2 * 8, np.zeros_like(count))
    return SelectionResult(timesteps, taps, ["s"], {"s": direction}, m, "s", {})


def test_ties_separate_a_clear_winner_from_cells_inside_the_noise():
    rng = np.random.default_rng(2)
    n = 64
    base = rng.standard_normal((n, 3, 2))  # per-image scores of 3 t x 2 taps, sd 1 each
    shift = np.array([[0.0, 0.02], [-5.0, -5.0], [-5.0, -0.01]])  # (0, tap0) best, (0, tap1) and (2, tap1) tied
    values = base * 0.2 + shift
    counts = confidence.resample_counts(n, seed=4)
    boot = confidence.sample_bootstrap(values, counts)
    mean = values.mean(0)
    verdict = confidence.assess(boot, mean, "max", [0, 10, 20], ["a", "b"], n)
    tied = {(c["t"], c["tap"]) for c in verdict["tied"]}
    best = np.unravel_index(np.argmax(mean), mean.shape)
    assert (verdict["chosen"]["t"], verdict["chosen"]["tap"]) == ([0, 10, 20][best[0]], "ab"[best[1]])
    assert {(0, "a"), (0, "b"), (20, "b")} <= tied and (10, "a") not in tied and (10, "b") not in tied
    assert not verdict["confident"] and sum(c["share"] for c in verdict["tied"]) == pytest.approx(1.0)
    # the same scores with the winner lifted far above the rest: a confident pick, winning every resample
    values[:, 0, 0] += 5.0
    boot = confidence.sample_bootstrap(values, counts)
    verdict = confidence.assess(boot, values.mean(0), "max", [0, 10, 20], ["a", "b"], n)
    assert verdict["confident"] and verdict["chosen_share"] == 1.0 and len(verdict["tied"]) == 1
    # and a min scorer reads the other way
    verdict = confidence.assess(-boot, -values.mean(0), "min", [0, 10, 20], ["a", "b"], n)
    assert verdict["confident"] and verdict["chosen"] == {"t": 0, "tap": "a"}


def test_cells_that_print_the_same_are_tied_however_sure_the_bootstrap():
    rng = np.random.default_rng()
    n = 64
    values = 0.99990 + 1e-7 * rng.standard_normal((n, 1, 3))  # almost no spread: the bootstrap separates anything
    values[:, 0, 1] += 5e-5  # best, but within the table's four decimals of tap 0
    values[:, 0, 2] -= 3e-4  # apart by more than the resolution and by the bootstrap
    counts = confidence.resample_counts(n, seed=int(rng.integers(100)))
    verdict = confidence.assess(confidence.sample_bootstrap(values, counts), values.mean(0), "max", [0],
                                ["a", "b", "c"], n)
    assert verdict["chosen"]["tap"] == "b" and verdict["chosen_share"] == 1.0
    assert {c["tap"] for c in verdict["tied"]} == {"a", "b"} and not verdict["confident"]


def test_edges_name_the_grid_end_and_the_block():
    rng = np.random.default_rng(5)
    taps = ["transformer_blocks.0.ff", "transformer_blocks.1.ff", "transformer_blocks.2.ff"]
    mean = rng.uniform(0, 1, (4, 3))
    mean[0, 0] = 2.0  # the best at the smallest t and block 0, the score rising toward t = 0
    res = _result(mean, taps, [0, 50, 100, 150])
    res.meta.update(blocks=3, tap_blocks={tap: i for i, tap in enumerate(taps)})
    e = confidence.edges(res)
    assert e == {"t_edge": "smallest", "rises_to_edge": True, "block_edge": "first", "block": 0, "blocks": 3}
    assert any("grid's smallest, and the score still rises toward it" in line for line in res.table().splitlines())
    mean[0, 0] = 0.0
    mean[2, 1] = 2.0  # an interior t at a middle block: nothing to say
    res = _result(mean, taps, [0, 50, 100, 150])
    res.meta.update(blocks=3, tap_blocks={tap: i for i, tap in enumerate(taps)})
    assert confidence.edge_lines(res) == []
    mean[2, 1] = 0.0
    mean[3, 2] = 2.0  # the largest t, last block; timesteps stored out of order are read in t order
    res = _result(mean[[3, 0, 1, 2]], taps, [150, 0, 50, 100])
    res.meta.update(blocks=3, tap_blocks={tap: i for i, tap in enumerate(taps)})
    e = confidence.edges(res)
    assert (e["t_edge"], e["block_edge"], e["rises_to_edge"]) == ("largest", "last", mean[3, 2] > mean[2, 2])


def test_a_selection_records_ties_and_edges_and_they_survive_json(tmp_path):
    model = tiny_dit()
    x = torch.rand(6, 1, 12, 12) * 2 - 1
    res = select_timestep(model, x, [0, 300, 900], taps="all", progress=False, seed=3)
    conf = res.meta["confidence"]
    assert set(conf) == set(res.scorers)
    for name, v in conf.items():
        s = res.scorers.index(name)
        t, tap = res.best(name)
        assert v["chosen"] == {"t": t, "tap": tap} and v["images"] == 6 and v["resamples"] == confidence.RESAMPLES
        assert {"t": t, "tap": tap, "share": v["chosen_share"]} in v["tied"]
        assert v["confident"] == (len(v["tied"]) == 1) and np.isfinite(res.mean[:, :, s]).any()
    assert res.meta["blocks"] == 2 and res.meta["tap_blocks"]["transformer_blocks.1.ff"] == 1
    res.to_json(tmp_path / "r.json")
    back = SelectionResult.from_json(tmp_path / "r.json")
    assert back.meta == res.meta and back.table() == res.table()
    assert confidence.edges(back) == confidence.edges(res)
    import json

    assert json.loads((tmp_path / "r.json").read_text())["edges"] == confidence.edges(res)


@pytest.fixture(scope="module")
def fashion():
    pixels, _ = load_embedded_images("test")
    rows = np.random.default_rng(8).choice(len(pixels), 32, replace=False)
    return to_model_range(pixels[rows])[:, None]


def test_random_weights_give_no_confident_pick_from_the_default(fashion):
    """A DiT of the embedded configuration, randomly initialised: sf is about 1 at t = 0 on every tap, and the
    default must say that it cannot tell them apart."""
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    res = select_timestep(build_model().eval(), fashion, "0,100", progress=False)
    v = res.meta["confidence"]["sf"]
    assert res.primary == "sf" and not v["confident"] and len(v["tied"]) >= 2
    assert "NOT a confident pick" in res.table() and "the pick is the best mean score" in res.table()


def test_the_trained_model_does_separate_its_taps(fashion):
    """The same check on the trained weights, so that the test above can fail: there the default is confident."""
    res = select_timestep(load_embedded(), fashion, "0,100", progress=False)
    v = res.meta["confidence"]["sf"]
    assert v["confident"] and v["chosen"] == {"t": 0, "tap": "transformer_blocks.0.ff.net.0"}
    assert "a confident pick" in res.table()
