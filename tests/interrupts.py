"""Ctrl-C at a chosen file-system step: a real SIGINT sent to this process at the k-th write, rename, removal or
folder creation under a folder, seen through Python's audit hooks (``open`` for writing, ``os.rename``, ...)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_EVENTS = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "shutil.move", "shutil.copyfile")
_state: dict = {"root": None, "k": None, "seen": []}
_installed = [False]


def _inside(path: object, root: str) -> bool:
    if isinstance(path, int):
        return False
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return False
    full = os.path.abspath(text)
    return full == root or full.startswith(root + os.sep)


def _writing(mode: object, flags: object) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def _hook(event: str, args: tuple) -> None:
    root = _state["root"]
    if root is None:
        return
    if event == "open":
        if not (len(args) >= 3 and _writing(args[1], args[2]) and _inside(args[0], root)):
            return
    elif event not in _EVENTS or not any(_inside(a, root) for a in args[:2]):
        return
    _state["seen"].append(event)
    if len(_state["seen"]) == _state["k"]:
        os.kill(os.getpid(), signal.SIGINT)


@contextmanager
def ctrl_c_at(root: Path, k: int | None) -> Iterator[list[str]]:
    """Within the block, send SIGINT at the ``k``-th (1-based) file-system step under ``root`` (none when ``k`` is
    ``None``); yields the list of the steps seen, to count them."""
    if not _installed[0]:
        sys.addaudithook(_hook)
        _installed[0] = True
    seen: list[str] = []
    _state.update(root=os.path.abspath(root), k=k, seen=seen)
    try:
        yield seen
    finally:
        _state.update(root=None, k=None)
