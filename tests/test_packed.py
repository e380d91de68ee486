"""Per-sample correctness in JSON: bit-packed boolean arrays round-trip, and the probe grid's report carries them."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from aselect_kernels.validation.grids import ProbeGrid
from aselect_kernels.validation.packed import grid_correct, pack_bool, unpack_bool


def _bits_by_hand(packed: dict) -> list[bool]:
    """Oracle: the stored bits read one at a time, most significant bit of each byte first."""
    raw = base64.b64decode(packed["data"])
    return [bool((byte >> (7 - i)) & 1) for byte in raw for i in range(8)]


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_random_shapes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 9, size=rng.integers(1, 4)))
    shape = (*shape[:-1], int(rng.integers(1, 40)))  # the last axis (test samples) rarely a multiple of 8
    arr = rng.random(shape) < rng.uniform(0.1, 0.9)
    packed = json.loads(json.dumps(pack_bool(arr)))  # through JSON text, as written
    assert packed["shape"] == list(shape)
    back = unpack_bool(packed)
    assert back.dtype == np.bool_ and back.shape == shape
    np.testing.assert_array_equal(back, arr)
    bits = _bits_by_hand(packed)
    assert len(bits) == 8 * ((arr.size + 7) // 8)
    assert bits[: arr.size] == arr.reshape(-1).tolist() and not any(bits[arr.size:])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(TypeError):
        pack_bool(np.zeros(3, dtype=np.int64))
    packed = pack_bool(np.ones(9, dtype=bool))
    with pytest.raises(ValueError, match="encoding"):
        unpack_bool({**packed, "encoding": "raw"})
    with pytest.raises(ValueError, match="bytes"):
        unpack_bool({**packed, "shape": [17]})


def test_grid_report_carries_correctness() -> None:
    rng = np.random.default_rng(7)
    correct = rng.random((3, 4, 13)) < 0.6
    floor = rng.random(13) < 0.3
    grid = ProbeGrid([0, 10, 20], ["a", "b", "c", "d"], correct.mean(-1), "accuracy", float(floor.mean()), 10, 1.0,
                     correct=correct, floor_correct=floor)
    report = json.loads(json.dumps({"grid": grid.to_dict()}))
    got, got_floor = grid_correct(report)
    np.testing.assert_array_equal(got, correct)
    np.testing.assert_array_equal(got_floor, floor)
    np.testing.assert_allclose(got.mean(-1), np.asarray(report["grid"]["metric"]), rtol=0, atol=1e-15)
    bare = ProbeGrid([0], ["a"], np.zeros((1, 1)), "mIoU", 0.1, 1, 1.0).to_dict()
    assert "correct" not in bare
    with pytest.raises(KeyError):
        grid_correct({"grid": bare})
