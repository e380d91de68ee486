"""validation/confirm.py: the chosen cells re-scored on unused training images, against one-at-a-time probes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aselect_kernels.embedded.model import load_embedded
from aselect_kernels.images import to_model_range
from aselect_kernels.select import capture_features
from aselect_kernels.validation import confirm
from aselect_kernels.validation.datasets import load_dataset
from aselect_kernels.validation.probe import linear_probe_correct

TAPS = ["transformer_blocks.1.ff.net.0", "transformer_blocks.4.ff.net.0"]


def _joint(t: int, tap: str) -> dict:
    return {"joint": {"t": t, "tap": tap, "metric": 0.0, "gap": 0.0}}


def _report(n_train: int) -> dict:
    """A validation report as ``aselect validate`` writes it, reduced to what confirm.py reads."""
    tap_set = {"best": {"t": 100, "tap": TAPS[1], "metric": 0.0},
               "scorers": {"token_var:max": _joint(0, TAPS[0]), "hfr:max": _joint(100, TAPS[0])},
               "trivial": {"smallest_t": _joint(0, TAPS[1]), "t100": _joint(100, TAPS[1])}}
    return {"n_train": n_train, "seed": 0,
            "classification": {"grid": {"timesteps": [0, 100]}, "tap_sets": {"mlp_hidden": tap_set}}}


def test_confirm_rescoring_matches_independent_probes(tmp_path: Path):
    n_train, pool = 24, 40
    (tmp_path / "validation_fashion.json").write_text(json.dumps(_report(n_train)))
    rep = confirm.confirm(tmp_path, "fashion", pool=pool)
    assert rep["n_confirm"] == pool - n_train
    cells = rep["cells"]
    assert (cells["grid best"]["t"], cells["grid best"]["tap"]) == (100, TAPS[1])
    assert (cells["grid best's tap at the smallest t"]["t"], cells["token_var:max"]["tap"]) == (0, TAPS[0])
    assert cells["grid best"]["below_grid_best"]["gap"] == 0.0
    # oracle: the same images' features, probed one cell at a time with the unbatched fit
    (x, y), _, k = load_dataset("fashion", n_train=pool)
    feats, _ = capture_features(load_embedded(), to_model_range(x)[:, None], [0, 100], TAPS,
                                progress=False)
    raw = linear_probe_correct(x[:n_train].flatten(1).double(), y[:n_train], x[n_train:].flatten(1).double(),
                               y[n_train:], k).numpy()
    assert abs(rep["raw_pixels"] - 100 * raw.mean()) <= 100 / (pool - n_train) + 1e-9
    for row in cells.values():
        f = feats[row["tap"]][:, [0, 100].index(row["t"])]
        ok = linear_probe_correct(f[:n_train], y[:n_train], f[n_train:], y[n_train:], k).numpy()
        assert abs(row["accuracy"] - 100 * ok.mean()) <= 100 / (pool - n_train) + 1e-9
        assert np.isclose(row["vs_raw_pixels"]["margin"], row["accuracy"] - rep["raw_pixels"])
