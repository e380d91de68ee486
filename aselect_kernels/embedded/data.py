"""The embedded model's data: Fashion-MNIST, from Debian's idx files or the subset shipped in ``assets/``."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
#: The shipped subset (real Fashion-MNIST images, ``np.savez_compressed``).
SUBSET_PATH = Path(__file__).resolve().parent / "assets" / "fashion_mnist_subset.npz"
#: Fashion-MNIST class names, by label.
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_IDX_FILES = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (optionally gzip-compressed) into a numpy array.

    Header: two zero bytes, a type byte, a rank byte, then ``rank`` big-endian uint32 dimensions.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    type_code, rank = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx data type 0x{type_code:02x}")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} data bytes for shape {shape}, "
                         f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(split: str = "train", root: str | Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split from gzip idx files: ``(images uint8 [N, 28, 28], labels int64 [N])``."""
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    prefix = _IDX_FILES[split]
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file not found: {p} (install the Debian package `dataset-fashion-mnist`: "
                "apt-get install dataset-fashion-mnist, or pass root=)"
            )
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if raw_magic(img_path) != 0x0803 or raw_magic(lbl_path) != 0x0801:
        raise ValueError(f"unexpected idx magic numbers in {img_path} / {lbl_path} (want 2051 / 2049)")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"inconsistent Fashion-MNIST shapes: images {images.shape}, labels {labels.shape}")
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


def raw_magic(path: str | Path) -> int:
    """The 32-bit big-endian magic number of an idx file (2051 for images, 2049 for labels)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(4)
    return int.from_bytes(head, "big")


def build_subset(
    out_path: str | Path = SUBSET_PATH,
    root: str | Path = DEFAULT_ROOT,
    train_per_class: int = 400,
    test_per_class: int = 100,
    seed: int = 0,
) -> Path:
    """Write a class-balanced, seeded subset of Fashion-MNIST to ``out_path`` (compressed npz).

    Keys: ``train_images``/``train_labels`` and ``test_images``/``test_labels``; images uint8 [N, 28, 28].
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = load_fashion_mnist(split, root)
        picked = []
        for c in range(len(CLASS_NAMES)):
            idx = np.flatnonzero(labels == c)
            if len(idx) < per_class:
                raise ValueError(f"{split}: class {c} has only {len(idx)} images, need {per_class}")
            picked.append(np.sort(rng.choice(idx, size=per_class, replace=False)))
        order = np.sort(np.concatenate(picked))
        arrays[f"{split}_images"] = images[order]
        arrays[f"{split}_labels"] = labels[order]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **arrays)
    return out_path


def load_embedded_images(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load the shipped Fashion-MNIST subset: ``(images uint8 [N, 28, 28], labels int64 [N])``."""
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not SUBSET_PATH.is_file():
        raise FileNotFoundError(f"shipped Fashion-MNIST subset missing: {SUBSET_PATH} (rebuild with build_subset())")
    with np.load(SUBSET_PATH) as z:
        return z[f"{split}_images"].astype(np.uint8), z[f"{split}_labels"].astype(np.int64)
