r"""Reference statistics: the definition of record of every per-sample statistic (pure PyTorch).

A tapped tensor ``X`` has shape ``[N, L, C]``: N samples (images x timesteps), L image tokens on an
``h x w`` patch grid in row-major order, C channels.  For each sample (indices ``l`` token, ``c`` channel):

``mean``
    :math:`\frac{1}{LC}\sum_{l,c} x_{lc}` (raw first moment).
``mean_sq``
    :math:`\frac{1}{LC}\sum_{l,c} x_{lc}^2` (raw second moment).
``token_var``
    mean over channels of the *unbiased* variance across tokens:
    :math:`\frac{1}{C}\sum_c \frac{1}{L-1}\sum_l (x_{lc}-\mu_c)^2`, with :math:`\mu_c=\frac1L\sum_l x_{lc}`.
``chan_entropy``
    mean over tokens of the Shannon entropy, in nats (natural log), of the softmax over channels:
    :math:`\frac1L\sum_l -\sum_c p_{lc}\ln p_{lc}`, :math:`p_{lc}=e^{x_{lc}}/\sum_{c'}e^{x_{lc'}}`.
    Equivalently :math:`\frac1L\sum_l (\mathrm{logsumexp}_c x_{lc} - \sum_c p_{lc}x_{lc})`.
``hfr``
    high-frequency energy ratio :math:`E_{high}/E_{total}` of the token signal, the per-channel mean kept.
    :math:`X_{kc}` is the DFT of :math:`x_{\cdot c}` along the tokens (1-D) or over the ``h x w`` grid (2-D);
    :math:`E_{total}=\sum_{c,k}|X_{kc}|^2`, :math:`E_{high}=\sum_c\sum_{k: r(k)>\text{cutoff}}|X_{kc}|^2`, with
    ``r`` the normalized frequency of :mod:`aselect_kernels.frequency` (a fraction of Nyquist, radial in 2-D).
``hfr_centered``
    the same ratio after removing each channel's token mean :math:`\mu_c` (the DC term); then
    :math:`E_{total}=L\sum_c\sum_l(x_{lc}-\mu_c)^2`.

Per channel, beside the per-sample statistics, the fused paths also return

``channel_means``
    the token mean of every channel, :math:`\mu_c = \frac1L\sum_l x_{lc}` (``[N, C]``), from which
    :func:`signal_fraction` is taken across images.

and across images, for one cell (t, tap), from two noise draws ``a`` and ``b`` of the same N images:

``sf`` (signal fraction)
    the share of the across-image variance of the token means that the image explains rather than the noise
    draw, averaged over channels:
    :math:`\frac{1}{|C'|}\sum_{c\in C'} \frac{2\,\mathrm{Cov}_n(\mu^a_{nc}, \mu^b_{nc})}
    {\mathrm{Var}_n\,\mu^a_{nc} + \mathrm{Var}_n\,\mu^b_{nc}}`, with unbiased (N - 1) moments over the images
    and :math:`C'` the channels whose denominator is positive.  It equals
    :math:`1 - \mathrm{Var}_n(\mu^a - \mu^b) / (\mathrm{Var}_n\mu^a + \mathrm{Var}_n\mu^b)`: 1 when the
    two draws give the same features, about 0 when the features are noise; NaN with fewer than 2 images or no
    varying channel.

The two ratios behave differently: on the embedded Fashion-MNIST DiT, ``hfr`` falls with t while
``hfr_centered`` rises.  A sample whose ``E_total`` is 0 gets NaN (and is flagged by the scorer); so does the
``hfr_centered`` of a sample constant across tokens (``token_var`` 0), exactly, on every backend.

Statistics are computed in float32 by default (``compute_dtype=torch.float64`` for tests), whatever the
input dtype (fp32, fp16, bf16).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache

import torch

from .frequency import check_grid, check_grid_pair, high_frequency_mask, warn_if_degenerate

#: Every statistic, in the order of the columns of a stats tensor ``[N, len(STAT_NAMES)]``.
STAT_NAMES: tuple[str, ...] = ("mean", "mean_sq", "token_var", "chan_entropy", "hfr", "hfr_centered")

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class StatsConfig:
    """How the frequency statistics are taken.

    Attributes:
        cutoff: high/low boundary as a fraction of Nyquist (A-SelecT's config: 0.15).
        hfr_dims: 1 = DFT along the token order; 2 = DFT over the ``h x w`` patch grid (radial frequency).
        grid: ``(h, w)`` positive ints, only with ``hfr_dims == 2`` (an error otherwise); inferred as square
            from L when ``None``.
    """

    cutoff: float = 0.15
    hfr_dims: int = 1
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cutoff, bool) or not isinstance(self.cutoff, numbers.Real):
            raise TypeError(f"hfr cutoff must be a number (a fraction of Nyquist), got {type(self.cutoff).__name__} "
                            f"{self.cutoff!r}")
        if not (math.isfinite(self.cutoff) and self.cutoff > 0.0):
            raise ValueError(f"hfr cutoff must be > 0 (a fraction of Nyquist), got {self.cutoff}")
        if isinstance(self.hfr_dims, bool) or self.hfr_dims not in (1, 2):
            raise ValueError(f"hfr_dims must be 1 or 2, got {self.hfr_dims!r}")
        if self.grid is not None:
            object.__setattr__(self, "grid", check_grid_pair(self.grid))
            if self.hfr_dims != 2:
                raise ValueError(f"grid={self.grid} is used only by 2-D frequencies: pass hfr_dims=2, or drop the "
                                 "grid (1-D frequencies run along the token order)")

    def resolve_grid(self, length: int) -> tuple[int, int] | None:
        """The grid the DFT runs over for ``length`` tokens (``None`` in 1-D); raises if h*w != L."""
        return check_grid(length, self.hfr_dims, self.grid)


def check_features(x: torch.Tensor) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the problem if ``x`` is not a valid ``[N, L, C]`` tap."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"tapped feature must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"tapped feature must have rank 3 [N, L, C], got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"tapped feature dtype {x.dtype} is not supported (fp32, fp16, bf16, fp64)")
    if x.shape[1] < 2:
        raise ValueError(f"need at least 2 tokens for token_var, got L={x.shape[1]}")
    if x.shape[2] < 1 or x.shape[0] < 1:
        raise ValueError(f"empty tapped feature of shape {tuple(x.shape)}")


@lru_cache(maxsize=64)
def _half_spectrum_weights(length: int, grid: tuple[int, int] | None, cutoff: float) -> tuple[torch.Tensor, ...]:
    """Weights over the bins that ``rfft``/``rfft2`` keep: each bin's multiplicity in the full DFT (1, or 2 for a
    bin that stands for itself and its conjugate partner), and that times the high-frequency mask.  Flattened in
    the order of the half spectrum, float64 on the CPU."""
    n_last = length if grid is None else grid[1]
    half = n_last // 2 + 1
    mult = torch.full((half,), 2.0, dtype=torch.float64)
    mult[0] = 1.0
    if n_last % 2 == 0:
        mult[-1] = 1.0  # the Nyquist bin is its own partner
    high = high_frequency_mask(length, grid, cutoff)
    if grid is not None:
        mult = mult.expand(grid[0], half)
        high = high[:, :half]
    else:
        high = high[:half]
    mult = mult.reshape(-1)
    return mult, mult * high.reshape(-1)


def _hfr_pair(xc: torch.Tensor, mu: torch.Tensor, grid: tuple[int, int] | None,
              cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``hfr``, ``hfr_centered``) from one real DFT of the centred signal ``xc = x - mu``.

    Removing ``mu_c`` changes only the DC bin, which is always low, so ``E_high`` is the same for ``x`` and
    ``x - mu``; the DC energy of ``x`` is ``sum_c (L mu_c)^2``.  The spectrum of a real signal is Hermitian, so
    the half that ``rfft`` keeps, each bin counted with its multiplicity, holds every energy of the full DFT of
    the definition.  Every energy is a sum of non-negative terms.
    """
    n, length, c = xc.shape
    if grid is None:
        spec = torch.fft.rfft(xc, dim=1)  # [N, L//2+1, C]
    else:
        spec = torch.fft.rfft2(xc.reshape(n, grid[0], grid[1], c), dim=(1, 2))  # [N, h, w//2+1, C]
    per_bin = (spec.real.square() + spec.imag.square()).sum(dim=-1).reshape(n, -1)  # summed over channels
    mult, mult_high = (w.to(device=xc.device, dtype=xc.dtype) for w in _half_spectrum_weights(length, grid, cutoff))
    e_high = per_bin @ mult_high
    e_centred = per_bin @ mult
    e_total = e_centred + (length * mu).square().sum(dim=(1, 2))
    nan = torch.full_like(e_high, float("nan"))
    return (torch.where(e_total > 0, e_high / e_total, nan), torch.where(e_centred > 0, e_high / e_centred, nan))


def reference_stats(
    x: torch.Tensor, config: StatsConfig = StatsConfig(), compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All statistics of :data:`STAT_NAMES` for each sample of ``x`` ``[N, L, C]`` -> ``[N, 6]``.

    The formulas are in this module's docstring.  ``compute_dtype`` is float32 by default; tests use float64.
    """
    check_features(x)
    grid = config.resolve_grid(x.shape[1])
    warn_if_degenerate(x.shape[1], grid, config.cutoff)
    xf = x.to(compute_dtype)
    # mu_c = k_c + mean_l (x_lc - k_c) with k_c the first token: the same number in exact arithmetic, and a channel
    # that is constant across tokens gets mu_c = k_c and x - mu = 0 exactly (token_var 0, hfr_centered NaN), in any
    # compute dtype, as on the fast paths
    shift = xf[:, :1, :]
    mu = shift + (xf - shift).mean(dim=1, keepdim=True)  # [N, 1, C] per-channel token mean
    xc = xf - mu
    mean = mu.mean(dim=(1, 2))
    mean_sq = xf.square().mean(dim=(1, 2))
    token_var = xc.square().sum(dim=1).mean(dim=1) / (x.shape[1] - 1)
    logp = torch.log_softmax(xf, dim=2)
    chan_entropy = -(logp.exp() * logp).sum(dim=2).mean(dim=1)
    hfr, hfr_centered = _hfr_pair(xc, mu, grid, config.cutoff)
    return torch.stack([mean, mean_sq, token_var, chan_entropy, hfr, hfr_centered], dim=1)


def effective_rank(x: torch.Tensor, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Effective rank of each sample's token-centred features ``[N, L, C] -> [N]`` (a candidate criterion).

    With singular values :math:`s_i` of :math:`x_{lc}-\mu_c` and :math:`p_i = s_i/\sum_j s_j`:
    :math:`\exp(-\sum_i p_i \ln p_i)` (Roy & Vetterli), between 1 and ``min(L, C)``.  Not fused: an SVD per
    sample; validation tries it as a scorer.
    """
    check_features(x)
    xf = x.to(compute_dtype)
    s = torch.linalg.svdvals(xf - xf.mean(dim=1, keepdim=True))
    p = s / s.sum(dim=1, keepdim=True)
    return torch.exp(-torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim=1))


def channel_means(x: torch.Tensor, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The token mean of each channel of each sample of ``x`` ``[N, L, C]`` -> ``[N, C]`` (``channel_means``).

    Shifted by the first token, as :func:`reference_stats` takes it, so a constant channel gives its value
    exactly."""
    check_features(x)
    xf = x.to(compute_dtype)
    shift = xf[:, :1, :]
    return (shift + (xf - shift).mean(dim=1, keepdim=True))[:, 0, :]


def signal_fraction(means_a: torch.Tensor, means_b: torch.Tensor) -> torch.Tensor:
    """``sf`` of one cell from the channel means ``[N, C]`` of two noise draws of the same N images (the formula
    is in this module's docstring); a scalar float64 tensor, NaN when undefined.  Rows that are not finite in
    either draw are dropped from both."""
    if means_a.shape != means_b.shape or means_a.dim() != 2:
        raise ValueError(f"signal_fraction needs two [N, C] arrays of one shape, got {tuple(means_a.shape)} and "
                         f"{tuple(means_b.shape)}")
    a, b = means_a.to(torch.float64), means_b.to(torch.float64)
    ok = torch.isfinite(a).all(1) & torch.isfinite(b).all(1)
    a, b = a[ok], b[ok]
    if a.shape[0] < 2:
        return torch.tensor(float("nan"), dtype=torch.float64)
    a, b = a - a.mean(0), b - b.mean(0)
    n1 = a.shape[0] - 1
    cov, var = (a * b).sum(0) / n1, (a.square().sum(0) + b.square().sum(0)) / n1
    live = var > 0
    if not live.any():
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (2 * cov[live] / var[live]).mean()
