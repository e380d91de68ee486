"""aselect-kernels: fused statistics for automatic timestep selection (A-SelecT) on Diffusion Transformers."""

from .reference import STAT_NAMES, StatsConfig, reference_stats

__all__ = ["STAT_NAMES", "StatsConfig", "reference_stats"]
__version__ = "0.1.0"
