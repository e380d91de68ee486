"""Backend dispatch for the per-sample statistics: the fused Triton kernel on a GPU, its PyTorch twin elsewhere.

``backend="auto"`` runs the kernel on CUDA tensors (through ``torch.ops.aselect.sample_stats``, so
``torch.compile`` does not break the graph) and :func:`~aselect_kernels.ops.matmul_stats.matmul_stats` (the
kernel's algorithm in PyTorch ops, 2-5x faster than the reference on a CPU) elsewhere.  A CUDA tensor the kernel
cannot take (fp64, Triton missing) falls back to the reference with a one-time warning.  ``"triton"`` forces the
kernel (CPU tensors too when ``TRITON_INTERPRET=1``), ``"matmul"`` the PyTorch twin and ``"torch"`` the reference.
``"cuda"`` forces the CUDA C++ kernel of ``csrc/`` (:mod:`~aselect_kernels.ops.cuda_stats`; CUDA tensors only).
On CUDA tensors ``"auto"`` runs the GPU kernel that the committed table :mod:`~aselect_kernels.ops.backend_table`
names for the shape (Triton until both kernels are measured on a GPU).
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache

import torch

from .constants import BACKENDS
from .ops import custom_op
from .ops.matmul_stats import matmul_means, matmul_stats
from .reference import StatsConfig, channel_means, check_features, reference_stats

_DEFAULT_CONFIG = StatsConfig()
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_warned: set[str] = set()


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether Triton can be imported (the kernel's only extra dependency)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton.language  # noqa: F401
    except (ImportError, RuntimeError, OSError):  # a broken install counts as missing
        return False
    return True


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _on_gpu(x: torch.Tensor) -> bool:
    return x.is_cuda


def _kernel_unsupported(x: torch.Tensor) -> str | None:
    """Why the fused kernel cannot score ``x`` (``None`` when it can)."""
    if x.dtype not in _KERNEL_DTYPES:
        return f"the fused stats kernel reads fp32/fp16/bf16, not {x.dtype}"
    if not triton_available():
        return "Triton is not importable"
    return None


def _run_op(x: torch.Tensor, config: StatsConfig, by_table: bool = True) -> torch.Tensor:
    """The GPU kernel: through the custom op while ``torch.compile`` traces (one opaque node, the table's kernel),
    directly in eager mode (no dispatcher overhead per tap): the table's kernel, or Triton's (``by_table=False``)."""
    if torch.compiler.is_compiling() or not x.is_cuda:
        return torch.ops.aselect.sample_stats(x, *custom_op.config_to_args(config))
    if by_table:
        return custom_op.gpu_stats(x, config)
    from .ops.fused_stats import fused_stats

    return fused_stats(x, config)


def compute_stats(
    x: torch.Tensor, config: StatsConfig = _DEFAULT_CONFIG, backend: str = "auto", with_means: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Statistics of :data:`~aselect_kernels.reference.STAT_NAMES` for each sample of ``x`` ``[N, L, C]``.

    Returns ``[N, 6]`` float32 on ``x``'s device.  ``backend`` is one of :data:`BACKENDS`.  ``with_means=True``
    returns ``(stats, channel_means [N, C] float32)`` (:func:`~aselect_kernels.reference.channel_means`), fused
    into the statistics' read of ``x`` on the Triton and PyTorch-twin paths (``_stats_and_means``).
    """
    if with_means:
        return _stats_and_means(x, config, backend)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_features(x)
    if backend == "torch":
        return reference_stats(x, config)
    if backend == "matmul":
        return matmul_stats(x, config)
    if backend == "cuda":
        from .ops.cuda_stats import CudaStatsUnavailable, cuda_stats

        try:
            return cuda_stats(x, config)
        except CudaStatsUnavailable as exc:
            raise CudaStatsUnavailable(f"backend='cuda' unavailable: {exc}") from None
    if backend == "triton":
        reason = _kernel_unsupported(x)
        if reason is not None:
            raise RuntimeError(f"backend='triton' unavailable: {reason}")
        if _on_gpu(x):
            return _run_op(x, config, by_table=False)
        from .ops import fused_stats as fused_module

        if x.device.type != "cpu" or not fused_module.INTERPRET:
            raise RuntimeError(
                f"backend='triton' needs a CUDA tensor, or a CPU tensor with TRITON_INTERPRET=1 set before "
                f"Triton is imported (got a {x.device.type} tensor)"
            )
        return fused_module.fused_stats(x, config)
    if torch.compiler.is_compiling() and x.dtype in _KERNEL_DTYPES:
        # one opaque op in the compiled graph (CPU kernel: matmul_stats; CUDA kernel: the fused kernel, which
        # imports Triton when it runs): no availability probe while tracing (find_spec breaks the graph)
        return _run_op(x, config)
    if not _on_gpu(x):
        return matmul_stats(x, config)
    reason = _kernel_unsupported(x)
    if reason is not None:
        _warn_once(f"{reason}: falling back to the PyTorch reference statistics")
        return reference_stats(x, config)
    return _run_op(x, config)


def _stats_and_means(x: torch.Tensor, config: StatsConfig, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute_stats`` and the per-channel token means of the same tensor, from one read of ``x`` where a kernel
    returns both: the PyTorch twin (``"matmul"``, and ``"auto"`` on a CPU tensor) and the Triton kernel
    (``"triton"``, and ``"auto"`` on a CUDA tensor the table gives to Triton), in eager mode.  Everywhere else
    (``"torch"``, ``"cuda"``, the custom op that ``torch.compile`` traces, the reference fallback of ``"auto"``)
    the unfused fallback: the statistics as :func:`compute_stats` takes them, then
    :func:`~aselect_kernels.reference.channel_means` (a second pass over ``x``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_features(x)
    eager = not torch.compiler.is_compiling()
    if backend == "matmul" or (backend == "auto" and eager and not _on_gpu(x)):
        return matmul_stats(x, config, with_means=True)
    if eager and backend in ("triton", "auto") and _kernel_unsupported(x) is None:
        from .ops import fused_stats as fused_module

        if backend == "triton":
            fused = _on_gpu(x) or (x.device.type == "cpu" and fused_module.INTERPRET)
        else:
            fused = custom_op.gpu_kernel(x, config) == "triton"
        if fused:
            return fused_module.fused_stats(x, config, with_means=True)
    return compute_stats(x, config, backend), channel_means(x)


def compute_means(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """The per-channel token means ``[N, C]`` float32 of ``x`` ``[N, L, C]`` alone
    (:func:`~aselect_kernels.reference.channel_means`), for a pass that needs no statistics (``sf``'s second
    draw): the PyTorch twin's blocks (:func:`~aselect_kernels.ops.matmul_stats.matmul_means`) on a CPU tensor with
    ``"auto"`` or ``"matmul"``, the reference's few ops everywhere else."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "matmul" or (backend == "auto" and not _on_gpu(x) and not torch.compiler.is_compiling()):
        return matmul_means(x)
    return channel_means(x)
