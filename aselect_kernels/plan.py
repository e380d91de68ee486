"""The command line's plan: one line per forward before it runs, a time estimate after its first chunk, a dry run
that stops before the forward, and a refusal of costly grids without ``--yes``.

Light on imports: the cost check runs before torch is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, TextIO

#: Samples of one draw above which a command runs only with ``--yes``.
SAMPLES_LIMIT = 20_000


@dataclass(frozen=True)
class RunPlan:
    """A multi-timestep run as planned before its first chunk: ``samples`` of the whole run (every rank),
    ``rank_samples`` of this process, run in ``chunks`` of ``chunk_size``; ``label`` names the run."""

    label: str
    samples: int
    rank_samples: int
    chunk_size: int
    chunks: int
    world_size: int


class RunWatcher(Protocol):
    """Told of each run's plan before its first chunk, and of each chunk's end (the command line's plan line and
    time estimate).  Raising from :meth:`planned` ends the run before its forward."""

    def planned(self, plan: RunPlan) -> None: ...

    def chunk_done(self, plan: RunPlan, done: int, elapsed_s: float) -> None: ...


_WATCHERS: ContextVar[tuple[RunWatcher, ...]] = ContextVar("aselect_run_watchers", default=())


def run_watchers() -> tuple[RunWatcher, ...]:
    """The watchers of the runs started now (innermost last)."""
    return _WATCHERS.get()


@contextmanager
def watch_runs(watcher: RunWatcher) -> Iterator[None]:
    """Report every :func:`~aselect_kernels.forward.run_multi_timestep` inside the block to ``watcher``."""
    token = _WATCHERS.set((*run_watchers(), watcher))
    try:
        yield
    finally:
        _WATCHERS.reset(token)


class DryRunDone(Exception):
    """Raised by a dry run at the first forward's plan: the plan is printed and nothing runs."""


class CostRefused(ValueError):
    """A run over :data:`SAMPLES_LIMIT` samples per draw without ``--yes``."""


def _n(value: int) -> str:
    return f"{value:,}"


def _s(value: int, noun: str) -> str:
    return f"{_n(value)} {noun}{'' if value == 1 else 's'}"


def duration(seconds: float) -> str:
    """``seconds`` as ``"42 s"``, ``"7 min 5 s"`` or ``"3 h 20 min"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def check_cost(samples_per_draw: int, draws: int, yes: bool, limit: int | None = None) -> None:
    """Refuse a run of more than ``limit`` (default :data:`SAMPLES_LIMIT`) samples in a draw unless ``yes``, with a
    line that states its cost."""
    limit = SAMPLES_LIMIT if limit is None else limit
    if yes or samples_per_draw <= limit:
        return
    total = samples_per_draw * draws
    raise CostRefused(f"this run is {_s(samples_per_draw, 'sample')} per draw x {_s(draws, 'draw')} = "
                      f"{_s(total, 'forward sample')}, over the {_n(limit)} per draw that run without asking: pass "
                      "--yes to run it, --dry-run to see the plan, or fewer --timesteps or images")


def plan_line(plan: RunPlan) -> str:
    """One line for a forward about to run: its samples, and its chunks, per rank under ``torchrun``."""
    if plan.world_size > 1:
        where = (f"{_s(plan.samples, 'sample')} over {plan.world_size} ranks; this rank "
                 f"{_s(plan.rank_samples, 'sample')} in {_s(plan.chunks, 'chunk')} of {_n(plan.chunk_size)}")
    else:
        where = f"{_s(plan.samples, 'sample')} in {_s(plan.chunks, 'chunk')} of {_n(plan.chunk_size)}"
    return f"plan: {plan.label}: {where}"


class CommandPlan:
    """A :class:`~aselect_kernels.forward.RunWatcher` for a command: prints each forward's plan, refuses one over
    ``limit`` samples without ``yes``, stops a ``dry_run`` at the first plan, and estimates each forward's time
    from its first chunk."""

    def __init__(self, dry_run: bool = False, yes: bool = False, limit: int | None = None,
                 stream: TextIO | None = None) -> None:
        self.dry_run, self.yes, self.limit = dry_run, yes, limit
        self.stream = stream
        self.lines: list[str] = []

    def _say(self, text: str) -> None:
        self.lines.append(text)
        print(text, file=self.stream or sys.stdout, flush=True)

    def planned(self, plan: RunPlan) -> None:
        self._say(plan_line(plan))
        if self.dry_run:
            raise DryRunDone
        check_cost(plan.samples, 1, self.yes, self.limit)

    def chunk_done(self, plan: RunPlan, done: int, elapsed_s: float) -> None:
        if done == 1 and plan.chunks > 1:
            self._say(f"  first chunk {duration(elapsed_s)}: about {duration(elapsed_s * plan.chunks)} for the "
                      f"{_s(plan.chunks, 'chunk')} of {plan.label}")
