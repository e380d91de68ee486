"""The committed table that decides, per shape, which GPU kernel ``backend="auto"`` runs: Triton or CUDA C++.

The table (``backend_table.json`` beside this module) is the single source of truth: a benchmark that times both
kernels on the same device fills it with :func:`table_from_timings` and :func:`write_table`, and the choice is a
pure lookup of ``(compute capability, dtype, L, C, hfr_dims)``; shapes not listed take the table's ``default``.
No timing happens at run time, so the choice (and hence the result) is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

TABLE_PATH = Path(__file__).with_name("backend_table.json")
#: The GPU kernels the table chooses between.
GPU_BACKENDS = ("triton", "cuda")

Key = tuple[int, int, str, int, int, int]  # (major, minor, dtype, L, C, hfr_dims)


def _dtype_name(dtype: torch.dtype | str) -> str:
    return str(dtype).replace("torch.", "")


def entry_key(entry: Mapping[str, Any]) -> Key:
    """The lookup key of one table entry."""
    major, minor = entry["capability"]
    return (int(major), int(minor), _dtype_name(entry["dtype"]), int(entry["length"]), int(entry["channels"]),
            int(entry["hfr_dims"]))


def parse_table(data: Mapping[str, Any]) -> tuple[str, dict[Key, str]]:
    """``(default, {key: backend})`` of a table; raises ``ValueError`` on an unknown backend."""
    choices = {entry_key(e): e["backend"] for e in data["entries"]}
    for backend in [data["default"], *choices.values()]:
        if backend not in GPU_BACKENDS:
            raise ValueError(f"backend table: {backend!r} is not one of {GPU_BACKENDS}")
    return data["default"], choices


def load_table(path: Path = TABLE_PATH) -> tuple[str, dict[Key, str]]:
    """:func:`parse_table` of a table file."""
    return parse_table(json.loads(path.read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def _table() -> tuple[str, dict[Key, str]]:
    return load_table()


def choose(capability: tuple[int, int], dtype: torch.dtype, length: int, channels: int, hfr_dims: int) -> str:
    """``"triton"`` or ``"cuda"`` for a shape, from the committed table."""
    default, choices = _table()
    return choices.get((capability[0], capability[1], _dtype_name(dtype), length, channels, hfr_dims), default)


@lru_cache(maxsize=16)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def choose_for(x: torch.Tensor, hfr_dims: int) -> str:
    """The table's backend for a CUDA tensor ``x`` ``[N, L, C]``."""
    return choose(_capability(x.device.index if x.device.index is not None else torch.cuda.current_device()),
                  x.dtype, x.shape[1], x.shape[2], hfr_dims)


def table_from_timings(rows: Iterable[Mapping[str, Any]], default: str = "triton") -> dict[str, Any]:
    """A table from measurements: each row has ``capability``, ``dtype``, ``length``, ``channels``, ``hfr_dims``,
    ``triton_us``, ``cuda_us`` (and may name the ``device``); the faster backend wins, Triton on a tie.  Entries
    are sorted by key, so the same measurements always give the same file."""
    entries = {}
    for row in rows:
        entry = {k: row[k] for k in ("capability", "dtype", "length", "channels", "hfr_dims", "triton_us", "cuda_us")}
        entry["capability"] = list(entry["capability"])
        entry["dtype"] = _dtype_name(entry["dtype"])
        if "device" in row:
            entry["device"] = row["device"]
        entry["backend"] = "cuda" if float(row["cuda_us"]) < float(row["triton_us"]) else "triton"
        entries[entry_key(entry)] = entry
    about = ("Which GPU kernel backend='auto' runs per shape: the faster of triton and cuda, measured. Keys: compute "
             "capability, input dtype, L, C, hfr_dims; shapes not listed take 'default'.")
    return {"about": about, "default": default, "entries": [entries[k] for k in sorted(entries)]}


def write_table(table: Mapping[str, Any], path: Path = TABLE_PATH) -> None:
    """Write a table, checked first; a running process keeps the table it has already read."""
    parse_table(table)
    path.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
