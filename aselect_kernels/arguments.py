"""The argument checks of every public function and of the command line, run at their door before any forward.

Each check returns the value in its canonical form, or raises one ``TypeError`` (wrong kind) or ``ValueError``
(wrong value) whose message names the argument, what was given and what is accepted::

    seed must be an integer in [0, 2**63 - 2], got int 1180591620717411303424

The checks against the model (image geometry, class labels) are in :mod:`.geometry`.  Nothing here imports torch
at module level, so the command line can check its arguments before paying for that import.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .constants import BACKENDS

#: The largest seed: selection with an across-image scorer draws its second noise with ``seed + 1``, and the
#: noise generator takes a signed 64-bit seed.
MAX_SEED = 2**63 - 2
#: Noise names a selection takes (beside a :class:`~aselect_kernels.noise.Noiser`).
NOISE_NAMES = ("ddpm", "flow", "flux")
#: Longest text of a given value quoted in a message.
_SHOWN = 80


def shown(value: object) -> str:
    """A given value in a message: its type, then its repr cut short (``int 3``, ``str 'hfr'``, ``Block``)."""
    kind = type(value).__name__
    if _is_module(value):
        return f"the module {kind}"
    text = repr(value)
    if len(text) > _SHOWN or "\n" in text:
        text = " ".join(text.split())[: _SHOWN - 3] + "..."
    return f"{kind} {text}"


def _is_module(value: object) -> bool:
    return any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(value).__mro__)


def wrong_type(name: str, accepted: str, value: object, hint: str = "") -> TypeError:
    return TypeError(f"{name} must be {accepted}, got {shown(value)}{hint}")


def wrong_value(name: str, accepted: str, value: object, hint: str = "") -> ValueError:
    return ValueError(f"{name} must be {accepted}, got {shown(value)}{hint}")


def check_bool(name: str, value: object) -> bool:
    """``True`` or ``False`` (NumPy bools too); a string such as ``"no"`` is refused, never read as true."""
    if type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    raise wrong_type(name, "True or False", value)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and type(value).__name__ not in ("bool", "bool_")


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """An integer (Python or NumPy; not a bool, never a rounded float) in ``[low, high]``."""
    bounds = (f" in [{low}, {high}]" if high is not None else f" >= {low}") if low is not None else ""
    if not _is_integer(value):
        raise wrong_type(name, f"an integer{bounds}", value)
    value = int(value)  # type: ignore[arg-type]
    if (low is not None and value < low) or (high is not None and value > high):
        raise wrong_value(name, f"an integer{bounds}", value)
    return value


def check_optional_int(name: str, value: object, low: int = 1) -> int | None:
    """``None`` or an integer >= ``low``."""
    return None if value is None else check_int(name, value, low)


def check_seed(value: object, name: str = "seed") -> int:
    """A noise and split seed: an integer in ``[0, MAX_SEED]``."""
    accepted = "an integer in [0, 2**63 - 2]"
    if not _is_integer(value):
        raise wrong_type(name, accepted, value)
    if not 0 <= int(value) <= MAX_SEED:  # type: ignore[call-overload]
        raise wrong_value(name, accepted, value)
    return int(value)  # type: ignore[call-overload]


def check_fraction(name: str, value: object) -> float:
    """A real number strictly between 0 and 1."""
    if not isinstance(value, numbers.Real) or type(value).__name__ in ("bool", "bool_"):
        raise wrong_type(name, "a number in (0, 1)", value)
    if not 0.0 < float(value) < 1.0:
        raise wrong_value(name, "a number in (0, 1)", value)
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of ``choices`` (strings)."""
    accepted = "one of " + ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise wrong_type(name, accepted, value)
    if value not in choices:
        raise wrong_value(name, accepted, value)
    return value


def check_callable(name: str, value: object) -> Callable | None:
    """``None`` or a callable."""
    if value is not None and not callable(value):
        raise wrong_type(name, "a callable or None", value)
    return value  # type: ignore[return-value]


def check_text(name: str, value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise wrong_type(name, "a string", value)
    if not value.strip():
        raise wrong_value(name, "a non-empty string", value)
    return value


def check_path(name: str, value: object) -> Path:
    """A file or folder path: a ``str`` or an ``os.PathLike``, not empty."""
    if not isinstance(value, (str, os.PathLike)):
        raise wrong_type(name, "a path (str or pathlib.Path)", value)
    if not str(value).strip():
        raise wrong_value(name, "a non-empty path", value)
    return Path(value).expanduser()


def _module_path(model: Any, module: object) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None) if model is not None else None


def check_taps(taps: object, model: Any = None, name: str = "taps") -> str | list[str]:
    """Tap presets or module paths: a string (``"mlp_hidden"``, ``"block_out:0,3"``) or a list or tuple of
    strings.  A module object is refused with its path in ``model`` when it is found there."""
    accepted = "a preset or module path (a string) or a list of them"
    if isinstance(taps, str):
        return taps
    if _is_module(taps):
        path = _module_path(model, taps)
        hint = f" (name it by its path: {path!r})" if path else " (name it by its path, see model.named_modules())"
        raise wrong_type(name, accepted, taps, hint)
    if not isinstance(taps, (list, tuple)):
        raise wrong_type(name, accepted, taps)
    for i, tap in enumerate(taps):
        if not isinstance(tap, str):
            path = _module_path(model, tap) if _is_module(tap) else None
            raise wrong_type(f"{name}[{i}]", "a preset or module path (a string)", tap,
                             f" (name it by its path: {path!r})" if path else "")
    if not taps:
        raise wrong_value(name, accepted + " (at least one)", taps)
    return list(taps)


def check_tap(tap: object, model: Any = None, name: str = "tap") -> str:
    """One tap: a preset of one block or a module path (a string)."""
    if isinstance(tap, str):
        return tap
    if _is_module(tap) and _module_path(model, tap):
        raise wrong_type(name, "one tap name (a string)", tap, f" (name it by its path: {_module_path(model, tap)!r})")
    raise wrong_type(name, "one tap name (a string)", tap)


def check_scorer(scorer: object, name: str = "scorer") -> Any:
    """A registered scorer's name or a :class:`~aselect_kernels.scorers.Scorer`; returns the scorer."""
    from .scorers import Scorer, get_scorer, list_scorers

    accepted = "a registered scorer name (" + ", ".join(s.name for s in list_scorers()) + ") or a Scorer"
    if isinstance(scorer, Scorer):
        return scorer
    if not isinstance(scorer, str):
        raise wrong_type(name, accepted, scorer)
    try:
        return get_scorer(scorer)
    except ValueError:
        raise wrong_value(name, accepted, scorer) from None


def check_scorers(scorers: object, name: str = "extra_scorers") -> list | None:
    """``None`` or a list or tuple of scorers (names or :class:`~aselect_kernels.scorers.Scorer`); a bare string
    is refused (it would be read letter by letter)."""
    if scorers is None:
        return None
    if isinstance(scorers, str):
        raise wrong_type(name, "a list of scorers or None", scorers, f" (one scorer is a list: [{scorers!r}])")
    if not isinstance(scorers, (list, tuple)):
        raise wrong_type(name, "a list of scorers or None", scorers)
    return [check_scorer(s, f"{name}[{i}]") for i, s in enumerate(scorers)]


def check_direction(direction: object, name: str = "direction") -> str | None:
    """``None`` (the scorer's own), ``"max"`` or ``"min"``."""
    return None if direction is None else check_choice(name, direction, ("max", "min"))


def check_noise(noise: object, names: Sequence[str] = NOISE_NAMES, name: str = "noise") -> Any:
    """A noise name of ``names`` or a :class:`~aselect_kernels.noise.Noiser` (when ``names`` is the full list)."""
    from .noise import Noiser

    if isinstance(noise, Noiser) and tuple(names) == NOISE_NAMES:
        return noise
    accepted = "one of " + ", ".join(repr(n) for n in names) + (
        " or a Noiser" if tuple(names) == NOISE_NAMES else "")
    if not isinstance(noise, str):
        raise wrong_type(name, accepted, noise)
    if noise not in names:
        raise wrong_value(name, accepted, noise)
    return noise


def check_backend(backend: object, name: str = "backend") -> str:
    return check_choice(name, backend, BACKENDS)


def check_backend_device(backend: str, device: Any, name: str = "backend") -> None:
    """Refuse a backend that cannot run on the model's device: ``"cuda"`` needs CUDA tensors, and ``"triton"``
    CUDA tensors or the Triton interpreter (``TRITON_INTERPRET=1``)."""
    if device.type == "cuda" or backend not in ("cuda", "triton"):
        return
    if backend == "triton" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return
    raise wrong_value(name, f"'auto', 'matmul' or 'torch' for a model on {device.type}", backend,
                      f" ({backend!r} runs on CUDA tensors" + (", or on the CPU with TRITON_INTERPRET=1 set)"
                                                               if backend == "triton" else ")"))


def check_config(config: object, name: str = "config") -> Any:
    """A :class:`~aselect_kernels.reference.StatsConfig` (a dict is refused with the way to build one)."""
    from .reference import StatsConfig

    if isinstance(config, StatsConfig):
        return config
    hint = " (build one: StatsConfig(**config))" if isinstance(config, dict) else ""
    raise wrong_type(name, "a StatsConfig", config, hint)


def check_conditioning(conditioning: object, name: str = "conditioning") -> Any:
    """``None`` or a :class:`~aselect_kernels.forward.Conditioning` whose fields are tensors (or ``None``) and whose
    ``model_kwargs`` is a dict with string keys."""
    import torch

    from .conditioning import Conditioning

    if conditioning is None:
        return None
    if not isinstance(conditioning, Conditioning):
        hint = " (build one: Conditioning(**conditioning))" if isinstance(conditioning, dict) else ""
        raise wrong_type(name, "a Conditioning or None", conditioning, hint)
    for field in ("class_labels", "encoder_hidden_states", "pooled_projections"):
        value = getattr(conditioning, field)
        if value is not None and not isinstance(value, torch.Tensor):
            raise wrong_type(f"{name}.{field}", "a torch.Tensor or None", value)
    kwargs = conditioning.model_kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise wrong_type(f"{name}.model_kwargs", "a dict of keyword arguments (string keys)", kwargs)
    return conditioning


def check_grid(grid: object, name: str = "grid") -> tuple[int, int] | None:
    """``None`` or a pair ``(h, w)`` of positive integers."""
    if grid is None:
        return None
    accepted = "None or a pair (h, w) of positive integers"
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise wrong_type(name, accepted, grid)
    if not all(_is_integer(g) for g in grid):
        raise wrong_type(name, accepted, grid)
    if not all(int(g) >= 1 for g in grid):
        raise wrong_value(name, accepted, grid)
    return int(grid[0]), int(grid[1])


def check_count(name: str, value: object, low: int = 1) -> int:
    """A whole number of items, at least ``low``."""
    return check_int(name, value, low)


def check_run_options(seed: object, chunk_size: object, memory_budget: object, progress: object, call: object
                      ) -> tuple[int, int | None, int | None, bool]:
    """The options every forward takes: ``(seed, chunk_size, memory_budget, progress)`` checked (``call`` too)."""
    from .forward import check_chunk_size, check_memory_budget

    check_callable("call", call)
    return check_seed(seed), check_chunk_size(chunk_size), check_memory_budget(memory_budget), check_bool(
        "progress", progress)
