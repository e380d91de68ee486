"""aselect-kernels: fused statistics for automatic timestep selection (A-SelecT) on Diffusion Transformers.

The public names below are imported on first use, so ``import aselect_kernels`` (and the command line's argument
checks) do not wait for torch.  The package has three parts: the scorer core at this level (start at
:mod:`.select`), the validation harness in :mod:`.validation`, the embedded model in :mod:`.embedded`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .old_paths import install

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "Conditioning": "conditioning", "run_multi_timestep": "forward",
    "load_embedded": "embedded.model", "load_model": "models",
    "load_embedded_images": "embedded.data", "load_images": "images", "to_model_range": "images",
    "Noiser": "noise", "parse_timesteps": "noise",
    "STAT_NAMES": "reference", "StatsConfig": "reference", "reference_stats": "reference",
    "SelectionResult": "result",
    "Moments": "scorers", "Scorer": "scorers", "get_scorer": "scorers", "list_scorers": "scorers",
    "register_scorer": "scorers",
    "extract_features": "select", "select_timestep": "select",
    "compute_stats": "stats",
    "TapSet": "taps", "TapSpec": "taps", "resolve_taps": "taps",
}

__all__ = sorted(_EXPORTS)

install()  # the old import paths of moved modules keep working, with a DeprecationWarning


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers see the eager imports
    from .conditioning import Conditioning  # noqa: F401
    from .embedded.data import load_embedded_images  # noqa: F401
    from .embedded.model import load_embedded  # noqa: F401
    from .forward import run_multi_timestep  # noqa: F401
    from .images import load_images, to_model_range  # noqa: F401
    from .models import load_model  # noqa: F401
    from .noise import Noiser, parse_timesteps  # noqa: F401
    from .reference import STAT_NAMES, StatsConfig, reference_stats  # noqa: F401
    from .result import SelectionResult  # noqa: F401
    from .scorers import Moments, Scorer, get_scorer, list_scorers, register_scorer  # noqa: F401
    from .select import extract_features, select_timestep  # noqa: F401
    from .stats import compute_stats  # noqa: F401
    from .taps import TapSet, TapSpec, resolve_taps  # noqa: F401
