"""Several processes, one result: sharding a run across ranks of ``torch.distributed`` (``torchrun``).

When a default process group is initialized (``torchrun`` and :func:`init_from_env`, or the caller's own
``torch.distributed.init_process_group``), selection, feature capture and the probe grids split their work:

* the flattened (image x timestep) samples are cut into one contiguous shard per rank (:func:`shard`); each rank
  runs its shard in chunks under its own memory budget.  With an explicit ``chunk_size`` the shards are made of
  whole chunks, so every chunk is the same batch as in one process and the per-sample statistics are bitwise
  those of a one-process run on the same device type;
* the tap buffers are completed on every rank by :func:`merge_tap_buffers`: each rank zeroes the rows it did not
  run and one ``all_reduce`` (sum) fills them, exactly (``x + 0 = x``); the score table is then computed from the
  same per-sample array on every rank, so it is exact too;
* the probe grid's cells are dealt round-robin (:func:`owns`) and their results summed the same way
  (:func:`sum_over_ranks`).

A rank that fails does not leave the others waiting: the local work runs inside :func:`failing_together`, which
ends with a collective check on a CPU (gloo) group; if any rank raised, every rank raises a ``RuntimeError``
naming it.  A rank that dies or hangs is caught by the process group's timeout (:data:`TIMEOUT_ENV`, seconds),
reported the same way.  Without a process group every function here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

#: Environment variable with the collective timeout in seconds (default :data:`DEFAULT_TIMEOUT_S`).
TIMEOUT_ENV = "ASELECT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0

_control: dict[str, object] = {}  # the gloo group of the error check, its timeout, and the group it belongs to


def active() -> bool:
    """Whether a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints and writes results."""
    return rank() == 0


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive, got {seconds}")
    return seconds


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment).

    NCCL when CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo otherwise; the timeout is
    :func:`timeout_s`.  Returns whether a group was initialized here.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_device())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()))
    return True


def shutdown() -> None:
    """Leave the process group (if one is initialized)."""
    if dist.is_available() and dist.is_initialized():
        _control.clear()
        dist.destroy_process_group()


def local_device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard(total: int, chunk_size: int | None = None) -> range:
    """This rank's contiguous share of ``total`` samples (all of them in a single process).

    Shares differ by at most one sample, or, when ``chunk_size`` is given, by at most one whole chunk (a rank
    may get none when there are fewer chunks than ranks).
    """
    if not active():
        return range(total)
    unit = max(1, chunk_size or 1)
    units = -(-total // unit)
    per, extra = divmod(units, world_size())
    r = rank()
    first = r * per + min(r, extra)
    last = first + per + (1 if r < extra else 0)
    return range(min(first * unit, total), min(last * unit, total))


def owns(index: int) -> bool:
    """Whether this rank does work item ``index`` (items are dealt round-robin)."""
    return index % world_size() == rank()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _check_collective(exc: BaseException) -> RuntimeError:
    seconds = _control.get("timeout", timeout_s())
    return RuntimeError(
        f"rank {rank()} of {world_size()}: the other processes did not answer within {seconds:g} s or went "
        f"away (did a rank fail, die or hang?): {_first_line(exc)}"
    )


def _control_group() -> object:
    if _control.get("world") is not dist.group.WORLD:
        set_check_timeout(timeout_s())
    return _control["group"]


def set_check_timeout(seconds: float) -> None:
    """Collective: how long the error check and the exchange of tap shapes wait for the other ranks (by default
    :func:`timeout_s`); a short one ends a job whose rank hangs sooner."""
    if seconds <= 0:
        raise ValueError(f"the timeout must be positive, got {seconds}")
    if not active():
        return
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=seconds))
    _control.update(world=dist.group.WORLD, group=group, timeout=seconds)


def agree(error: BaseException | None) -> None:
    """Collective error check: every rank calls it; if any rank passes an error, every rank raises."""
    if not active():
        return
    mine = None if error is None else f"{type(error).__name__}: {_first_line(error)}"
    states: list[object] = [None] * world_size()
    try:
        dist.all_gather_object(states, mine, group=_control_group())
    except RuntimeError as exc:
        raise _check_collective(exc) from exc
    failed = [(r, m) for r, m in enumerate(states) if m is not None]
    if failed:
        r, message = failed[0]
        others = f" (and ranks {[f[0] for f in failed[1:]]})" if len(failed) > 1 else ""
        raise RuntimeError(f"rank {r} of {world_size()} failed{others}: {message}") from error


@contextmanager
def failing_together() -> Iterator[None]:
    """Run local work; then check, on every rank, that no rank failed (see :func:`agree`)."""
    try:
        yield
    except Exception as exc:
        agree(exc)
        raise
    agree(None)


def _reduce_device() -> torch.device:
    return local_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values: np.ndarray) -> np.ndarray:
    """Element-wise sum of ``values`` over ranks (identity in a single process); dtype kept."""
    if not active():
        return values
    if values.dtype == np.bool_:
        return sum_over_ranks(values.astype(np.int32)) > 0
    t = torch.from_numpy(np.ascontiguousarray(values)).to(_reduce_device())
    try:
        dist.all_reduce(t)
    except RuntimeError as exc:
        raise _check_collective(exc) from exc
    return t.cpu().numpy()


def merge_tap_buffers(tapset: object, rows: range) -> None:
    """Complete a :class:`~aselect_kernels.taps.TapSet`'s buffers on every rank from each rank's ``rows``.

    A rank whose shard was empty (its hooks never fired) learns each buffer's shape, dtype and tapped ``(L, C)``
    from the others.
    """
    if not active():
        return
    buffers, shapes = tapset.buffers, tapset.shapes
    mine = {name: (tuple(b.shape), b.dtype, shapes.get(name)) for name, b in buffers.items()}
    infos: list[dict] = [None] * world_size()  # type: ignore[list-item]
    try:
        dist.all_gather_object(infos, mine, group=_control_group())
    except RuntimeError as exc:
        raise _check_collective(exc) from exc
    device = _reduce_device()
    for spec in tapset.taps:
        known = next((info[spec.name] for info in infos if spec.name in info), None)
        if known is None:
            raise RuntimeError(f"tap {spec.name!r} never fired on any rank: is the module used in the forward?")
        shape, dtype, tapped = known
        buf = buffers.get(spec.name)
        if buf is None:
            buf = torch.zeros(shape, dtype=dtype, device=device)
        else:
            keep = torch.zeros(shape[0], dtype=torch.bool, device=buf.device)
            keep[rows.start:rows.stop] = True
            buf = torch.where(keep[:, None], buf, torch.zeros((), dtype=buf.dtype, device=buf.device)).to(device)
        try:
            dist.all_reduce(buf)
        except RuntimeError as exc:
            raise _check_collective(exc) from exc
        buffers[spec.name] = buf
        shapes[spec.name] = tapped
