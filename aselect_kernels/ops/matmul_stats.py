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
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..frequency import low_frequency_basis, warn_if_degenerate
from ..reference import StatsConfig, check_features

#: float32 bytes of input per block of samples (keeps a block's temporaries in the last-level cache).
BLOCK_BYTES = 4 << 20

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
    out = torch.empty(n, 6, dtype=torch.float32, device=x.device)
    means = torch.empty(n, channels, dtype=torch.float32, device=x.device) if with_means else None
    with torch.no_grad():
        for s in range(0, n, block):
            out[s:s + block], mu = _block_stats(x[s:s + block].to(torch.float32), basis, rowsum)
            if means is not None:
                means[s:s + block] = mu
    return (out, means) if with_means else out
