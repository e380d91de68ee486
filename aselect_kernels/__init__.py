"""aselect-kernels: fused statistics for automatic timestep selection (A-SelecT) on Diffusion Transformers."""

from .forward import Conditioning, run_multi_timestep
from .noise import Noiser, parse_timesteps
from .reference import STAT_NAMES, StatsConfig, reference_stats
from .result import SelectionResult
from .scorers import Moments, Scorer, get_scorer, list_scorers, register_scorer
from .select import extract_features, select_timestep
from .stats import compute_stats
from .taps import TapSet, TapSpec, resolve_taps

__all__ = [
    "STAT_NAMES", "Conditioning", "Moments", "Noiser", "Scorer", "SelectionResult", "StatsConfig", "TapSet",
    "TapSpec", "compute_stats", "extract_features", "get_scorer", "list_scorers", "parse_timesteps",
    "reference_stats", "register_scorer", "resolve_taps", "run_multi_timestep", "select_timestep",
]
__version__ = "0.1.0"

#: Loaders exported lazily (importing them loads diffusers' model classes): name -> defining module.
_LAZY = {"load_embedded": "model", "load_model": "model", "load_embedded_images": "data", "load_images": "data",
         "to_model_range": "data"}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
