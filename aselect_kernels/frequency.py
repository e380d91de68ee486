"""Frequency conventions of the high-frequency ratio, shared by the reference and the kernels.

A tapped tensor holds L tokens.  Its token signal is transformed either

* in 1-D, along the token order: frequencies ``k = 0 .. L-1``, or
* in 2-D, over the ``h x w`` patch grid (tokens in row-major order): ``(ky, kx)``.

The *normalized frequency* of a DFT index is its distance from DC as a fraction of Nyquist:

* 1-D: ``r(k) = min(k, L - k) / (L / 2)``, in ``[0, 1]``;
* 2-D: ``r(ky, kx) = sqrt((min(ky, h - ky) / (h / 2))**2 + (min(kx, w - kx) / (w / 2))**2)``, radial,
  in ``[0, sqrt 2]``.

A frequency is *high* when ``r > cutoff`` and *low* otherwise (DC, ``r = 0``, is always low).
"""

from __future__ import annotations

import math
import numbers
import warnings
from functools import lru_cache

import torch

#: Fewer low (non-DC) or high frequencies than this and the ratio degenerates: a warning is issued.
MIN_BAND_FREQUENCIES = 4


class CutoffWarning(UserWarning):
    """The cutoff leaves too few frequencies on one side for the ratio to mean much."""


def check_grid_pair(grid: object) -> tuple[int, int]:
    """``grid`` as ``(h, w)``: two positive integers (integral values of any integer type; floats and bools are
    refused, never truncated)."""
    try:
        h, w = grid  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"grid must be a pair (h, w) of positive ints, got {grid!r}") from None
    if not all(isinstance(g, numbers.Integral) and not isinstance(g, bool) and g >= 1 for g in (h, w)):
        raise ValueError(f"grid must be a pair (h, w) of positive ints, got {grid!r}")
    return int(h), int(w)


def check_grid(length: int, dims: int, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate ``dims`` / ``grid`` against the token count and return the grid used (``None`` in 1-D)."""
    if dims not in (1, 2) or isinstance(dims, bool):
        raise ValueError(f"hfr_dims must be 1 or 2, got {dims!r}")
    if dims == 1:
        if grid is not None:
            raise ValueError(f"grid={grid} is used only by 2-D frequencies (hfr_dims=2)")
        return None
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(
                f"2-D frequencies need a patch grid: L={length} tokens is not a square, pass grid=(h, w)"
            )
        return (side, side)
    h, w = check_grid_pair(grid)
    if h * w != length:
        raise ValueError(f"grid h*w must equal the token count L: got grid=({h}, {w}), L={length}")
    return (h, w)


def normalized_frequency(length: int, grid: tuple[int, int] | None) -> torch.Tensor:
    """``r`` of every DFT index, float64, flattened in the same order as the tokens (shape ``[L]``)."""
    if grid is None:
        k = torch.arange(length, dtype=torch.float64)
        return torch.minimum(k, length - k) / (length / 2)
    h, w = grid
    ky = torch.arange(h, dtype=torch.float64)
    kx = torch.arange(w, dtype=torch.float64)
    ry = torch.minimum(ky, h - ky) / (h / 2)
    rx = torch.minimum(kx, w - kx) / (w / 2)
    return torch.sqrt(ry[:, None] ** 2 + rx[None, :] ** 2).reshape(-1)


def high_frequency_mask(length: int, grid: tuple[int, int] | None, cutoff: float) -> torch.Tensor:
    """Boolean ``[L]`` (1-D) or ``[h, w]`` (2-D) mask of the DFT indices with ``r > cutoff``."""
    mask = normalized_frequency(length, grid) > cutoff
    return mask if grid is None else mask.reshape(grid)


@lru_cache(maxsize=256)
def band_counts(length: int, grid: tuple[int, int] | None, cutoff: float) -> tuple[int, int]:
    """(number of low non-DC frequencies, number of high frequencies)."""
    r = normalized_frequency(length, grid)
    high = int((r > cutoff).sum())
    return length - 1 - high, high


def warn_if_degenerate(length: int, grid: tuple[int, int] | None, cutoff: float, stacklevel: int = 3) -> None:
    """Warn (:class:`CutoffWarning`) when ``cutoff`` leaves fewer than :data:`MIN_BAND_FREQUENCIES` on a side."""
    low, high = band_counts(length, grid, cutoff)
    if low < MIN_BAND_FREQUENCIES or high < MIN_BAND_FREQUENCIES:
        shape = f"{grid[0]}x{grid[1]} grid" if grid else f"{length} tokens (1-D)"
        warnings.warn(
            f"hfr cutoff {cutoff} on a {shape} leaves {low} low non-DC and {high} high frequencies "
            f"(fewer than {MIN_BAND_FREQUENCIES} on a side): the high-frequency ratio is degenerate",
            CutoffWarning,
            stacklevel=stacklevel,
        )


@lru_cache(maxsize=64)
def _basis_cpu(length: int, grid: tuple[int, int] | None, cutoff: float) -> torch.Tensor:
    r = normalized_frequency(length, grid)
    if grid is None:
        h, w = 1, length
    else:
        h, w = grid
    pos_y = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    pos_x = torch.arange(w, dtype=torch.float64).repeat(h)
    rows = []
    for flat in torch.nonzero((r <= cutoff) & (r > 0)).reshape(-1).tolist():
        ky, kx = divmod(flat, w)
        conj = ((-ky) % h) * w + (-kx) % w
        if conj < flat:
            continue  # the pair was emitted at its smaller index
        angle = 2 * math.pi * (ky * pos_y / h + kx * pos_x / w)
        if conj == flat:  # self-conjugate (a Nyquist index): the sine part vanishes
            rows.append(torch.cos(angle))
        else:  # k and its conjugate carry equal energy: weight sqrt(2) doubles it
            rows += [math.sqrt(2) * torch.cos(angle), math.sqrt(2) * torch.sin(angle)]
    if not rows:
        return torch.zeros(0, length, dtype=torch.float64)
    return torch.stack(rows)


def low_frequency_basis(
    length: int, grid: tuple[int, int] | None, cutoff: float, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Real basis ``B`` ``[K, L]`` of the low non-DC frequencies, such that for any real token signal x

    ``sum_rows (B @ x)**2 == sum_{k low, k != 0} |DFT(x)_k|**2``.

    Conjugate pairs share one cosine and one sine row weighted by ``sqrt(2)``; a self-conjugate index
    contributes its cosine row alone.  The fused kernel computes the low-frequency energy as this projection
    (no FFT), and the total from Parseval: ``sum_k |X_k|**2 = L * sum_l x_l**2``.
    """
    return _basis_cpu(length, grid, float(cutoff)).to(dtype=dtype, device=device)
