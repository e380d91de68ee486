r"""The fused kernel's algorithm in plain PyTorch ops: the fast path for CPU tensors.

The definition of record is :func:`aselect_kernels.reference.reference_stats`, which takes an FFT and a
``log_softmax`` per sample.  This module computes the same six numbers the way
:mod:`~aselect_kernels.ops.fused_stats` does, which costs fewer passes over ``X [N, L, C]``:

* **moments with a shift** ``k_c = x[n, 0, c]``: ``a_c = sum_l (x_lc - k_c)``, ``b_c = sum_l (x_lc - k_c)^2``,
  ``mu_c = k_c + a_c / L``, ``M2_c = b_c - a_c^2 / L``; then ``mean``, ``mean_sq`` and ``token_var``;
* **entropy with one exponential**: ``H = log s - t / s`` with ``m = max_c x``, ``s = sum_c e^{x-m}``,
  ``t = sum_c e^{x-m} (x - m)`` (the reference takes ``log_softmax`` and then ``exp``);
* **frequency ratios without an FFT**: ``E_low = ||B (x - mu)||^2`` with the low-frequency basis
  ``B [K, L]`` of :func:`~aselect_kernels.frequency.low_frequency_basis` (one batched matmul against ``K``
  rows, ``K << L``), the total energies from Parseval, and ``E_high = L sum_c M2_c - E_low``.

Samples go in blocks of about :data:`BLOCK_BYTES` of float32 so the intermediates stay in cache.  Every
sample's result depends only on that sample (no cross-sample reduction), so chunking never changes it.

**Threads on a CPU.**  A block is about thirty small ops; run with torch's intra-op threads, each op is one OpenMP
parallel region that every thread must reach, thousands of them per tapped tensor.  On cores that other processes
share, a thread that is not scheduled holds all the others at each region's barrier, and the statistics took
several times the forward they sit in (bench/NOTES.md, *The CPU path*).  So CPU tensors are scored one block per
task: each block runs single-threaded, start to end, on one of :func:`torch.get_num_threads` workers that take the
next block as they finish; the caller waits once per tensor.  A block's arithmetic does not depend on which worker
runs it, nor on how many there are, so the result is bitwise the same for any thread count.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch

from ..frequency import low_frequency_basis, warn_if_degenerate
from ..reference import StatsConfig, check_features

#: float32 bytes of input per block of samples (keeps a block's temporaries in the last-level cache).
BLOCK_BYTES = 4 << 20
#: Score CPU tensors one single-threaded block per task (``False``: every op on torch's intra-op threads, the
#: earlier path, kept for ``bench/cpu_overhead.py``'s side-by-side comparison).
BLOCK_TASKS = True

_DEFAULT_CONFIG = StatsConfig()


@lru_cache(maxsize=64)
def _basis(length: int, grid: tuple[int, int] | None, cutoff: float,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B fp32 [K, L], rowsum(B fp32) computed in fp64 then rounded [K])`` on ``device``."""
    basis = low_frequency_basis(length, grid, cutoff, dtype=torch.float32)
    return basis.to(device), basis.double().sum(dim=1).float().to(device)


def _block_stats(x: torch.Tensor, basis: torch.Tensor,
                 rowsum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics ``[n, 6]`` and channel means ``mu [n, C]`` of one block ``x [n, L, C]`` (float32)."""
    length, channels = x.shape[1], x.shape[2]
    shift = x[:, :1, :]
    d = x - shift
    a = d.sum(dim=1)  # [n, C]
    m2 = (d * d).sum(dim=1) - a * a / length
    mu_off = a / length  # mu_c - k_c
    mu = shift[:, 0, :] + mu_off
    sum_x = (length * mu).sum(dim=1)
    sum_m2 = m2.sum(dim=1)
    sum_dc = (length * mu * mu).sum(dim=1)  # sum_c L mu_c^2
    sum_sq = sum_m2 + sum_dc
    numel = length * channels
    mean, mean_sq, token_var = sum_x / numel, sum_sq / numel, sum_m2 / (channels * (length - 1))

    top = x.amax(dim=2, keepdim=True)
    z = x - top
    e = torch.exp(z)
    s = e.sum(dim=2)
    t = (e * z).sum(dim=2)
    chan_entropy = (torch.log(s) - t / s).mean(dim=1)

    if basis.shape[0]:
        proj = torch.matmul(basis, d)  # [n, K, C]: B (x - k)
        proj = proj - rowsum[None, :, None] * mu_off[:, None, :]  # B (x - mu), exact leak removed
        e_low = (proj * proj).sum(dim=(1, 2))
    else:
        e_low = torch.zeros_like(sum_m2)
    e_centred = length * sum_m2
    e_high = (e_centred - e_low).clamp_min(0.0)  # near-equal sums may round below 0: clamp, as the kernel does
    e_total = length * sum_sq
    nan = torch.full_like(e_high, float("nan"))
    hfr = torch.where(e_total > 0, e_high / e_total, nan)
    hfr_centered = torch.where(e_centred > 0, e_high / e_centred, nan)
    return torch.stack([mean, mean_sq, token_var, chan_entropy, hfr, hfr_centered], dim=1), mu


def _block_means(x: torch.Tensor) -> torch.Tensor:
    """Channel means ``[n, C]`` of one block ``x [n, L, C]`` (float32), shifted by the first token as
    :func:`_block_stats` takes them."""
    shift = x[:, 0, :]
    return shift + (x - shift[:, None, :]).sum(dim=1) / x.shape[1]


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, made once per process (a forked child makes its own)."""
    key = (os.getpid(), workers)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aselect-stats")
    return pool


def _single_threaded(fn: Callable[[], object], inference: bool) -> object:
    """``fn()`` with one intra-op thread in this thread, without autograd (grad and inference modes are per thread:
    a worker takes the caller's)."""
    torch.set_num_threads(1)
    with torch.inference_mode() if inference else torch.no_grad():
        return fn()


def _map_blocks(fn: Callable[[torch.Tensor], object], x: torch.Tensor, block: int) -> list:
    """``fn`` of every block of ``block`` samples of ``x``, in order.  CPU tensors: one single-threaded task per
    block on the worker pool (module docstring); other devices, or ``BLOCK_TASKS = False``: in this thread."""
    starts = range(0, x.shape[0], block)

    def one(s: int) -> object:
        return fn(x[s:s + block].to(torch.float32))

    if x.device.type != "cpu" or not BLOCK_TASKS:
        with torch.no_grad():
            return [one(s) for s in starts]
    threads = torch.get_num_threads()
    inference = torch.is_inference_mode_enabled()
    workers = min(threads, len(starts))
    try:
        if workers == 1 or threading.current_thread().name.startswith("aselect-stats"):  # no nested pool
            return _single_threaded(lambda: [one(s) for s in starts], inference)
        pool = _pool(workers)
        return list(pool.map(lambda s: _single_threaded(lambda: one(s), inference), starts))
    finally:
        torch.set_num_threads(threads)  # torch's thread count is process-wide: the caller's, back


def matmul_stats(
    x: torch.Tensor, config: StatsConfig = _DEFAULT_CONFIG, with_means: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """All statistics of :data:`~aselect_kernels.reference.STAT_NAMES` for each sample of ``x`` ``[N, L, C]``
    (fp32, fp16, bf16 or fp64, any device, any strides) -> ``[N, 6]`` float32, computed in float32.

    ``with_means=True`` returns ``(stats, means)``, ``means`` the ``[N, C]`` float32 token mean of every channel
    (:func:`~aselect_kernels.reference.channel_means`): the ``mu_c`` of the moments, no second pass."""
    check_features(x)
    n, length, channels = x.shape
    grid = config.resolve_grid(length)
    warn_if_degenerate(length, grid, config.cutoff)
    basis, rowsum = _basis(length, grid, float(config.cutoff), x.device)
    block = max(1, BLOCK_BYTES // (4 * length * channels))
    parts = _map_blocks(lambda xb: _block_stats(xb, basis, rowsum), x, block)
    out = torch.cat([p[0] for p in parts])
    return (out, torch.cat([p[1] for p in parts])) if with_means else out


def matmul_means(x: torch.Tensor) -> torch.Tensor:
    """The token mean of every channel of each sample of ``x`` ``[N, L, C]`` -> ``[N, C]`` float32, as
    :func:`~aselect_kernels.reference.channel_means` defines it and as ``matmul_stats(..., with_means=True)``
    returns it (the same formula, block by block): the second noise draw of ``sf`` takes only these."""
    check_features(x)
    n, length, channels = x.shape
    block = max(1, BLOCK_BYTES // (4 * length * channels))
    return torch.cat(_map_blocks(_block_means, x, block))
