r"""The CUDA C++ statistics kernel of ``csrc/`` from Python: load (or build) the extension, prepare the basis, launch.

The kernel computes the six statistics of :data:`~aselect_kernels.reference.STAT_NAMES` with the algorithm of the
Triton kernel (:mod:`~aselect_kernels.ops.fused_stats`); ``csrc/aselect_stats.cu`` explains its CUDA side.  The
extension is found, in this order:

1. prebuilt: ``aselect_kernels._cuda_stats``, built by ``setup.py`` at install when a CUDA build of torch and
   ``nvcc`` are present (``pip install --no-build-isolation -e .``);
2. built on first use with :func:`torch.utils.cpp_extension.load` from the ``csrc/`` sources of a source checkout,
   on a machine with a CUDA device and the CUDA toolkit (cached in :func:`build_directory`, so later processes
   only load it).  A failed build is remembered: for the rest of the process, and, when ``ASELECT_RUN_ID`` is
   set (``bench/run_all_gpu.sh`` sets it), by every process of that run, through ``build_failed.json`` in the
   build directory, with its reason.  A lock file left there by a killed build is detected and named
   (:func:`guarded_build`);
3. otherwise :class:`CudaStatsUnavailable`, with one message saying what is missing
   (:func:`~aselect_kernels.stats.compute_stats` then keeps to the Triton kernel, see
   :mod:`~aselect_kernels.ops.backend_table`).

The kernel needs compute capability 8.0 or newer (bf16 and TF32 tensor cores).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
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
#: Tokens per tile of the kernel: the basis operands' columns are padded with zeros to a multiple of it.
TILE_L = 32

_DEFAULT_CONFIG = StatsConfig()
#: Name of the JIT-built extension.
EXT_NAME = "aselect_cuda_stats"
#: Environment variable naming one run of several processes (a failed build is not retried within it).
RUN_ID_ENV = "ASELECT_RUN_ID"
#: Files in the build directory: torch's build lock, the builder's identity while it builds, a failed build.
LOCK_FILE, OWNER_FILE, FAILED_FILE = "lock", "build_owner.json", "build_failed.json"
#: A lock with no known builder is taken as stale after this many seconds (a build takes a few minutes at most).
STALE_LOCK_S = 900.0

_failure: list[str] = []  # this process's failed build, if any


class CudaStatsUnavailable(RuntimeError):
    """The CUDA C++ kernel cannot run here; the message says why."""


def build_directory() -> Path:
    """Where the extension is built: ``$TORCH_EXTENSIONS_DIR`` (else torch's default root), one folder per Python
    and CUDA version."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    cuda = (torch.version.cuda or "none").replace(".", "")
    return Path(root) / f"{EXT_NAME}_py{sys.version_info[0]}{sys.version_info[1]}_cu{cuda}"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_lock(folder: Path) -> str | None:
    """Why the build lock in ``folder`` is stale (``None``: no lock, or a build that may still be running).

    The lock is stale when the builder recorded in :data:`OWNER_FILE` is gone (a process of this host that no
    longer exists), or, with no builder recorded, when the lock is older than :data:`STALE_LOCK_S`.
    """
    lock = folder / LOCK_FILE
    if not lock.exists():
        return None
    owner = _read_json(folder / OWNER_FILE)
    if owner and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if _alive(owner["pid"]):
            return None
        return (f"left by a killed build (pid {owner['pid']}, run {owner.get('run')}, started "
                f"{time.time() - owner.get('time', time.time()):.0f} s ago)")
    age = time.time() - lock.stat().st_mtime
    return f"{age:.0f} s old with no live builder" if age > STALE_LOCK_S else None


def _record_failure(folder: Path, run: str | None, reason: str) -> None:
    _failure[:] = [reason]
    data = {"run": run, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "reason": reason}
    try:
        (folder / FAILED_FILE).write_text(json.dumps(data, indent=1), encoding="utf-8")
    except OSError:
        pass


def guarded_build(folder: Path, build: Callable[[], ModuleType]) -> ModuleType:
    """``build()`` (which builds in ``folder``), unless it failed before in this run; with a stale lock named.

    * A failure earlier in this process, or in this run (``$ASELECT_RUN_ID`` equal to the one recorded in
      :data:`FAILED_FILE`), raises :class:`CudaStatsUnavailable` with its reason at once, without a new build.
    * A stale lock (:func:`stale_lock`) is named; when its builder was killed in this same run, that counts as a
      failed build of this run; otherwise the lock is removed (with a warning naming it) and the build goes on.
    * A build that raises (or is interrupted) is recorded in :data:`FAILED_FILE` with its reason; a build that
      succeeds removes the record.
    """
    run = os.environ.get(RUN_ID_ENV) or None
    if _failure:
        raise CudaStatsUnavailable(f"{_failure[0]} (failed earlier in this process; not retried)")
    folder.mkdir(parents=True, exist_ok=True)
    earlier = _read_json(folder / FAILED_FILE)
    if run and earlier and earlier.get("run") == run:
        _failure[:] = [str(earlier.get("reason"))]
        raise CudaStatsUnavailable(
            f"{earlier.get('reason')} (failed earlier in this run, {RUN_ID_ENV}={run}, pid {earlier.get('pid')}; "
            f"not retried: {folder / FAILED_FILE})")
    lock = folder / LOCK_FILE
    why = stale_lock(folder)
    if why is not None:
        owner = _read_json(folder / OWNER_FILE) or {}
        lock.unlink(missing_ok=True)
        (folder / OWNER_FILE).unlink(missing_ok=True)
        if run and owner.get("run") == run:
            reason = f"the CUDA statistics extension's build was killed earlier in this run: stale lock {lock} {why}"
            _record_failure(folder, run, reason)
            raise CudaStatsUnavailable(f"{reason} (removed; not retried in this run)")
        warnings.warn(f"removed the stale build lock {lock} ({why}); building again", RuntimeWarning, stacklevel=2)
    owner_path = folder / OWNER_FILE
    owner_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run": run,
                                      "time": time.time()}), encoding="utf-8")
    try:
        module = build()
    except BaseException as exc:
        why_failed = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        _record_failure(folder, run, f"building the CUDA statistics extension failed: {why_failed}"[:4000])
        if isinstance(exc, CudaStatsUnavailable) or not isinstance(exc, Exception):
            raise
        raise CudaStatsUnavailable(_failure[0]) from exc
    finally:
        owner_path.unlink(missing_ok=True)
    (folder / FAILED_FILE).unlink(missing_ok=True)
    return module


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
    folder = build_directory()

    def build() -> ModuleType:  # compiler errors, missing ninja, ... are recorded by guarded_build
        return cpp_extension.load(
            name=EXT_NAME, sources=[str(CSRC / s) for s in SOURCES], extra_include_paths=[str(CSRC)],
            extra_cflags=["-O3"], extra_cuda_cflags=["-O3"], build_directory=str(folder), verbose=False,
        )

    return guarded_build(folder, build)


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


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to TF32 (10 explicit mantissa bits, ties away from zero: ``cvt.rna.tf32.f32``) for
    finite inputs, as fp32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


@lru_cache(maxsize=32)
def kernel_operands(
    length: int, grid: tuple[int, int] | None, cutoff: float, dtype: torch.dtype, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hi, lo, rowsum)`` as the kernel reads them: :func:`kernel_basis` with its columns zero-padded to a
    multiple of :data:`TILE_L`.  fp32: the TF32 halves ``hi = tf32(B)``, ``lo = tf32(B - hi)`` of the fp32 basis
    (what 3xTF32 multiplies; ``rowsum`` stays that of ``B``); fp16/bf16: ``B_hi``, ``B_lo`` unchanged."""
    hi, lo, rowsum = kernel_basis(length, grid, cutoff, dtype, torch.device("cpu"))
    if dtype == torch.float32:
        hi, lo = tf32_round(hi), tf32_round(hi - tf32_round(hi))
    cols = math.ceil(length / TILE_L) * TILE_L
    pad = (0, cols - length)
    return (torch.nn.functional.pad(hi, pad).to(device), torch.nn.functional.pad(lo, pad).to(device),
            rowsum.to(device))


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
    hi, lo, rowsum = kernel_operands(length, grid, float(config.cutoff), x.dtype, x.device)
    return torch.ops.aselect_cuda.sample_stats(x, hi, lo, rowsum)
