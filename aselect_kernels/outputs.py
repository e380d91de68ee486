"""All-or-nothing output folders.

A command writes its files into a hidden staging folder inside its output folder (:func:`staged_output`) and moves
them into place only once every file is written.  An interrupt or an error before that leaves the earlier outputs
untouched and nothing new (an output folder created for the run is removed again); the moves themselves run with
Ctrl-C held back, and a move that fails puts back what was there before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Name prefix of the staging folder inside the output folder.
STAGE_PREFIX = ".aselect-partial-"
_BACKUP = ".aselect-previous-"


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) for the duration, then raise ``KeyboardInterrupt`` if one came; a no-op outside
    the main thread, where no signal handler can be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _missing_folders(out: Path) -> list[Path]:
    """The folders on the way to ``out`` (``out`` included) that do not exist yet, outermost first."""
    missing = []
    folder = out
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _move_in(stage: Path, out: Path, names: Sequence[str]) -> None:
    """Move ``names`` from ``stage`` into ``out``, replacing what is there; on a failure every move done is undone
    and the replaced entries are put back, then the error is raised."""
    done: list[tuple[str, bool]] = []  # (name, whether an earlier entry was set aside)
    try:
        for name in names:
            target = out / name
            kept = target.exists() or target.is_symlink()
            if kept:
                os.replace(target, stage / (_BACKUP + name))
            done.append((name, kept))
            os.replace(stage / name, target)
    except BaseException:
        for name, kept in reversed(done):
            with contextlib.suppress(OSError):
                if (out / name).exists() and not (stage / name).exists():
                    os.replace(out / name, stage / name)
                if kept:
                    os.replace(stage / (_BACKUP + name), out / name)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def staged_output(out: str | Path, keep_on_error: Sequence[str] = ()) -> Iterator[Path]:
    """A staging folder inside ``out`` (created as needed) for a command's files.

    On a normal exit every entry of the staging folder is moved into ``out`` (replacing entries of the same name);
    on an error or interrupt nothing is moved, except the entries named in ``keep_on_error`` that exist (a training
    run's last complete checkpoint), and folders created for the run are removed when left empty.
    """
    out = Path(out).expanduser()
    created = _missing_folders(out)
    stage: Path | None = None
    try:
        with interrupts_held():  # the folders exist, and are known, or neither
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
        try:
            yield stage
        except BaseException:
            with interrupts_held():
                kept = [n for n in keep_on_error if (stage / n).exists()]
                with contextlib.suppress(OSError):
                    _move_in(stage, out, kept)
            raise
        with interrupts_held():
            _move_in(stage, out, sorted(p.name for p in stage.iterdir()))
    finally:
        with interrupts_held():
            if stage is not None:
                _remove(stage)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: nothing was moved in
