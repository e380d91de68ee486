"""Boolean arrays in JSON, compactly: bits packed (``np.packbits``, big-endian bit order) then base64."""

from __future__ import annotations

import base64

import numpy as np

ENCODING = "packbits-base64"


def pack_bool(values: np.ndarray) -> dict:
    """``{"encoding", "shape", "data"}`` of a boolean array of any shape (C order, padded to whole bytes)."""
    arr = np.asarray(values)
    if arr.dtype != np.bool_:
        raise TypeError(f"pack_bool needs a boolean array, got {arr.dtype}")
    data = base64.b64encode(np.packbits(arr.reshape(-1)).tobytes()).decode("ascii")
    return {"encoding": ENCODING, "shape": list(arr.shape), "data": data}


def unpack_bool(packed: dict) -> np.ndarray:
    """The boolean array written by :func:`pack_bool`."""
    if packed.get("encoding") != ENCODING:
        raise ValueError(f"unknown encoding {packed.get('encoding')!r}; expected {ENCODING!r}")
    shape = tuple(int(s) for s in packed["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(base64.b64decode(packed["data"]), dtype=np.uint8)
    if raw.size != (size + 7) // 8:
        raise ValueError(f"{raw.size} bytes cannot hold an array of shape {shape}")
    return np.unpackbits(raw, count=size).astype(bool).reshape(shape)


def grid_correct(classification: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(correct [T, P, n_test], floor_correct [n_test])`` from a validation report's ``classification`` part."""
    grid = classification["grid"]
    if "correct" not in grid:
        raise KeyError("this validation report keeps no per-sample correctness (written by later versions)")
    return unpack_bool(grid["correct"]), unpack_bool(grid["floor_correct"])
