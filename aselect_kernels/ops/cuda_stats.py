r"""The CUDA C++ statistics kernel of ``csrc/`` from Python: load (or build) the extension, prepare the basis, launch.

The kernel computes the six statistics of :data:`~aselect_kernels.reference.STAT_NAMES` with the algorithm of the
Triton kernel (:mod:`~aselect_kernels.ops.fused_stats`); ``csrc/aselect_stats.cu`` explains its CUDA side.  The
extension is found, in this order:

1. prebuilt: ``aselect_kernels._cuda_stats``, built by ``setup.py`` at install when a CUDA build of torch and
   ``nvcc`` are present (``pip install --no-build-isolation -e .``);
2. built on first use with :func:`torch.utils.cpp_extension.load` from the ``csrc/`` sources of a source checkout,
   on a machine with a CUDA device and the CUDA toolkit (cached in torch's extension directory, so later
   processes only load it);
3. otherwise :class:`CudaStatsUnavailable`, with one message saying what is missing
   (:func:`~aselect_kernels.stats.compute_stats` then keeps to the Triton kernel, see
   :mod:`~aselect_kernels.ops.backend_table`).

The kernel needs compute capability 8.0 or newer (bf16 and TF32 tensor cores).
"""

from __future__ import annotations

import importlib
import math
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from ..frequency import low_frequency_basis, warn_if_degenerate
from ..reference import StatsConfig, check_features

#: The kernel's source directory in a source checkout.
CSRC = Path(__file__).resolve().parents[2] / "csrc"
#: Sources of the extension (kernel and binding), relative to :data:`CSRC`.
SOURCES = ("aselect_stats.cu", "binding.cpp")
#: Input dtypes of the kernel and their codes in the C interface.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: Basis rows are padded to a multiple of this (the tensor-core fragment edge).
ROW_PAD = 16

_DEFAULT_CONFIG = StatsConfig()


class CudaStatsUnavailable(RuntimeError):
    """The CUDA C++ kernel cannot run here; the message says why."""


def _jit_build() -> ModuleType:
    """Build the extension from ``csrc/`` with ``torch.utils.cpp_extension.load`` (cached across processes)."""
    if not torch.cuda.is_available() or torch.version.cuda is None:
        raise CudaStatsUnavailable("the CUDA statistics kernel needs a CUDA build of torch and a CUDA device")
    missing = [s for s in SOURCES if not (CSRC / s).is_file()]
    if missing:
        raise CudaStatsUnavailable(
            f"the CUDA statistics extension is not installed and its sources are missing ({', '.join(missing)} "
            f"under {CSRC}): install from a source checkout with a CUDA torch and nvcc present"
        )
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise CudaStatsUnavailable("building the CUDA statistics extension needs the CUDA toolkit (nvcc not found)")
    try:
        return cpp_extension.load(
            name="aselect_cuda_stats", sources=[str(CSRC / s) for s in SOURCES], extra_include_paths=[str(CSRC)],
            extra_cflags=["-O3"], extra_cuda_cflags=["-O3"], verbose=False,
        )
    except Exception as exc:  # compiler errors, missing ninja, ...
        raise CudaStatsUnavailable(f"building the CUDA statistics extension failed: {exc}") from exc


@lru_cache(maxsize=1)
def load_extension() -> ModuleType:
    """The extension module (importing it registers ``torch.ops.aselect_cuda.sample_stats``); raises
    :class:`CudaStatsUnavailable` when neither a prebuilt nor a JIT build is possible."""
    try:
        return importlib.import_module("aselect_kernels._cuda_stats")
    except ImportError:
        return _jit_build()


def unavailable_reason() -> str | None:
    """Why the CUDA kernel cannot run here (``None`` when it can); builds it on first call on a CUDA machine."""
    try:
        load_extension()
    except CudaStatsUnavailable as exc:
        return str(exc)
    return None


@lru_cache(maxsize=32)
def kernel_basis(
    length: int, grid: tuple[int, int] | None, cutoff: float, dtype: torch.dtype, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B_hi, B_lo, rowsum)``: the low-frequency basis ``[K, L]`` with rows zero-padded to a multiple of
    :data:`ROW_PAD`, as the kernel reads it.  fp32 inputs: ``B`` in fp32 (``B_lo`` is the same tensor, unused);
    fp16/bf16: ``B = B_hi + B_lo``, both in the input dtype.  ``rowsum`` is the fp32 row sum of the rounded basis,
    computed in fp64 (the mean-leak correction)."""
    b64 = low_frequency_basis(length, grid, cutoff, dtype=torch.float64)
    padded = torch.zeros(math.ceil(b64.shape[0] / ROW_PAD) * ROW_PAD, length, dtype=torch.float64)
    padded[:b64.shape[0]] = b64
    hi = padded.to(dtype)
    lo = hi if dtype == torch.float32 else (padded - hi.double()).to(dtype)
    rowsum = (hi.double() + (0.0 if lo is hi else lo.double())).sum(dim=1).to(torch.float32)
    return hi.to(device), lo.to(device), rowsum.to(device)


def cuda_stats(x: torch.Tensor, config: StatsConfig = _DEFAULT_CONFIG) -> torch.Tensor:
    """All statistics for each sample of ``x`` ``[N, L, C]`` (fp32/fp16/bf16, CUDA, any strides) -> ``[N, 6]``
    float32, by the CUDA C++ kernel.  Raises :class:`CudaStatsUnavailable` when the kernel cannot run here."""
    check_features(x)
    if x.dtype not in DTYPE_CODES:
        raise TypeError(f"the CUDA statistics kernel reads fp32, fp16 or bf16, got {x.dtype}")
    if not x.is_cuda:
        raise CudaStatsUnavailable(f"the CUDA statistics kernel needs a CUDA tensor, got a {x.device.type} tensor")
    load_extension()
    length = x.shape[1]
    grid = config.resolve_grid(length)
    warn_if_degenerate(length, grid, config.cutoff)
    hi, lo, rowsum = kernel_basis(length, grid, float(config.cutoff), x.dtype, x.device)
    return torch.ops.aselect_cuda.sample_stats(x, hi, lo, rowsum)
