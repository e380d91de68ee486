"""Images as the model takes them: uint8 pixels to the model's range, and user images from files.

Model-range images are float32 in ``[-1, 1]`` shaped ``[N, C, H, W]``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .arguments import check_choice, check_path
from .constants import LAYOUTS

#: File suffixes read as images in an image folder.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: What numpy and PIL raise on a corrupt or truncated file.
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile)


#: Full scale of the pixel depths :func:`to_model_range` takes.
PIXEL_DEPTHS = {torch.uint8: 255.0, torch.uint16: 65535.0}


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels ``[0, 255]`` (or uint16 ``[0, 65535]``) to float32 ``[-1, 1]``; other dtypes are refused
    (a float array's range is not known here: :func:`load_images` reads them)."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if t.dtype not in PIXEL_DEPTHS:
        raise TypeError(f"images must be uint8 or uint16 pixels for to_model_range, got {t.dtype}")
    return t.to(torch.float32) / (PIXEL_DEPTHS[t.dtype] / 2) - 1.0


#: Channel counts of images (grey, RGB, RGBA): an axis of this length may be the channel axis.
_CHANNEL_COUNTS = (1, 3, 4)


def _layout(arr: np.ndarray, source: str, layout: str) -> str:
    """The layout of ``arr``: ``layout`` when given, else read from the shape where it is unambiguous."""
    layout = check_choice("layout", layout, LAYOUTS)
    want = {"NHW": 3, "NCHW": 4, "NHWC": 4}
    if layout != "auto":
        if arr.ndim != want[layout]:
            raise ValueError(f"{source}: layout={layout!r} needs a rank-{want[layout]} array, got shape {arr.shape}")
        return layout
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4):
            raise ValueError(f"{source}: shape {arr.shape} may be {arr.shape[0]} grey {arr.shape[1]}x{arr.shape[2]} "
                             f"images or one {arr.shape[-1]}-channel image: pass layout='NHW' (a batch of grey "
                             "images), or add the batch axis")
        return "NHW"
    if arr.ndim != 4:
        raise ValueError(f"{source}: images must have rank 3 [N,H,W] or 4 [N,C,H,W]/[N,H,W,C], got shape {arr.shape}")
    first, last = arr.shape[1] in _CHANNEL_COUNTS, arr.shape[-1] in _CHANNEL_COUNTS
    if first and last:
        raise ValueError(f"{source}: shape {arr.shape} is ambiguous: {arr.shape[1]} channels of "
                         f"{arr.shape[2]}x{arr.shape[3]} or {arr.shape[-1]} channels of {arr.shape[1]}x{arr.shape[2]}; "
                         "pass layout='NCHW' or layout='NHWC' (--layout on the command line)")
    return "NHWC" if last else "NCHW"


def _scaled(arr: np.ndarray, source: str) -> torch.Tensor:
    """Pixels to float32 ``[-1, 1]``: unsigned integers over their full range (uint8 ``/ 255``, uint16
    ``/ 65535``), floats in ``[0, 1]`` or already in ``[-1, 1]``; other depths are refused."""
    if arr.dtype in (np.uint8, np.uint16):
        return to_model_range(np.ascontiguousarray(arr))
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{source}: unsupported image dtype {arr.dtype} (use uint8, uint16 or float; an integer "
                         "array of another type does not say its depth: convert it to uint8 or uint16)")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    lo, hi = float(x.min()), float(x.max())
    if not np.isfinite([lo, hi]).all():
        raise ValueError(f"{source}: images contain NaN or inf")
    if lo >= 0.0 and hi <= 1.0:
        return x * 2.0 - 1.0  # [0, 1] floats
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"{source}: float images must lie in [0, 1] or [-1, 1], found [{lo:.3g}, {hi:.3g}]")
    return x


def _to_nchw(arr: np.ndarray, source: str, layout: str = "auto") -> torch.Tensor:
    """Normalize an image array to float32 ``[N, C, H, W]`` in ``[-1, 1]`` (:func:`_layout`, :func:`_scaled`)."""
    if arr.size == 0:
        raise ValueError(f"{source}: no images (empty array of shape {arr.shape})")
    found = _layout(arr, source, layout)
    if found == "NHW":
        arr = arr[:, None]
    elif found == "NHWC":
        arr = arr.transpose(0, 3, 1, 2)
    return _scaled(arr, source)


def _labels(arr: np.ndarray | None, n: int, source: str) -> torch.Tensor | None:
    if arr is None:
        return None
    lab = np.asarray(arr).reshape(-1)
    integral = np.issubdtype(lab.dtype, np.integer) or (
        np.issubdtype(lab.dtype, np.floating) and bool(np.all(np.isfinite(lab) & (lab == np.round(lab)))))
    if lab.dtype == bool or not integral:
        raise ValueError(f"{source}: labels must be integer class ids, got {lab.dtype} values")
    if lab.shape[0] != n:
        raise ValueError(f"{source}: {lab.shape[0]} labels for {n} images")
    return torch.from_numpy(lab.astype(np.int64))


def _load_folder(folder: Path) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no PNG/JPEG images found")
    return _load_files(files, str(folder))


#: PIL modes of 16-bit greyscale (a PNG opened as ``I`` is 16-bit too: PNG has no deeper greyscale).
_MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N")


def _read_image(im: object, f: Path) -> np.ndarray:
    """One image as uint8 ``[H, W]`` / ``[H, W, 3]``, or uint16 ``[H, W]`` for 16-bit greyscale (never clipped)."""
    mode = im.mode  # type: ignore[attr-defined]
    if mode in _MODES_16 or (mode == "I" and im.format == "PNG"):  # type: ignore[attr-defined]
        return np.asarray(im).astype(np.uint16)
    if mode in ("I", "F"):
        raise ValueError(f"{f}: {'32-bit integer' if mode == 'I' else 'floating-point'} image files are not "
                         "supported (save 8- or 16-bit images, or an .npy array)")
    return np.asarray(im.convert("L" if mode in ("L", "1") else "RGB"))  # type: ignore[attr-defined]


def _load_files(files: list[Path], source: str) -> np.ndarray:
    """Image files of one size as ``[N, H, W]`` (all greyscale) or ``[N, 3, H, W]``: uint8, or uint16 when any is
    16-bit (8-bit ones then scaled by 257, so that 255 stays full scale)."""
    from PIL import Image

    arrays: list[np.ndarray] = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(_read_image(im, f))
        except READ_ERRORS as exc:
            raise ValueError(f"{f}: not a readable image ({exc})") from exc
    if any(a.ndim == 3 for a in arrays):  # mixed grayscale and colour: promote everything to RGB
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
    if any(a.dtype == np.uint16 for a in arrays):
        arrays = [a if a.dtype == np.uint16 else a.astype(np.uint16) * 257 for a in arrays]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"{source}: images have different sizes {sorted(sizes)}; resize them to one size first")
    stacked = np.stack(arrays)
    return stacked if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)


def load_images(path: str | Path, layout: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load user images as float32 ``[N, C, H, W]`` in ``[-1, 1]`` plus labels (or ``None``).

    Accepts ``.npz`` (keys ``images`` or ``x``; optional ``labels`` or ``y``), ``.npy``, or a folder of
    PNG/JPEG files of one size (grayscale stays 1 channel, colour becomes RGB).  uint8 and uint16 arrays and
    8- and 16-bit files are scaled from their full range (``[0, 255]``, ``[0, 65535]``); float arrays whose values
    all lie in ``[0, 1]`` are read as ``[0, 1]`` images, other float arrays must already lie in ``[-1, 1]``; other
    depths are refused.

    ``layout`` (:data:`LAYOUTS`) says how an array's axes are ordered.  ``"auto"`` reads ``[N, H, W]`` as grey
    images and a rank-4 array as channels-last only when its last axis, and not its second, has 1, 3 or 4 entries;
    where both have, the shape is ambiguous and an error asks for ``layout="NCHW"`` or ``"NHWC"``.
    """
    path = check_path("path", path)
    check_choice("layout", layout, LAYOUTS)
    if not path.exists():
        raise FileNotFoundError(f"image path not found: {path}")
    if path.is_dir():
        arr = _load_folder(path)
        return _to_nchw(arr, str(path), "NHW" if arr.ndim == 3 else "NCHW"), None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                files = list(z.files)
                key = next((k for k in ("images", "x") if k in files), None)
                arr = z[key] if key else None
                lab_key = next((k for k in ("labels", "y") if k in files), None)
                lab = z[lab_key] if lab_key else None
        except READ_ERRORS as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
        if arr is None:
            raise ValueError(f"{path}: npz needs an 'images' or 'x' array, found keys {files}")
        x = _to_nchw(arr, str(path), layout)
        return x, _labels(lab, x.shape[0], str(path))
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except READ_ERRORS as exc:
            raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
        return _to_nchw(arr, str(path), layout), None
    raise ValueError(f"{path}: unsupported image source (use .npz, .npy or a folder of PNG/JPEG files)")


@dataclass
class LabelledImages:
    """Labelled images for validation: float32 ``images [N, C, H, W]`` in ``[-1, 1]``, ``labels [N]`` (the user's
    own integer labels, or class indices of an image folder), optional pixel ``masks [N, H, W]`` (int64, for the
    dense probe), and the class names of an image folder (else ``None``)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    classes: list[str] | None = None


def load_labelled(path: str | Path, layout: str = "auto") -> LabelledImages:
    """Load labelled images: an ``.npz`` with ``images`` and ``labels`` (optional ``masks``: integer pixel labels
    ``[N, H, W]``), or an image folder with one subfolder of PNG/JPEG files per class (the ImageFolder layout;
    classes in sorted name order).  Images follow :func:`load_images`' rules, ``layout`` too."""
    path = check_path("path", path)
    check_choice("layout", layout, LAYOUTS)
    if not path.exists():
        raise FileNotFoundError(f"labelled image path not found: {path}")
    if path.is_dir():
        classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        files, labels = [], []
        for k, name in enumerate(classes):
            found = sorted(p for p in (path / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"{path / name}: class folder without PNG/JPEG images")
            files += found
            labels += [k] * len(found)
        if not files:
            raise ValueError(f"{path}: no class subfolders; labelled images need one subfolder of images per class")
        arr = _load_files(files, str(path))
        x = _to_nchw(arr, str(path), "NHW" if arr.ndim == 3 else "NCHW")
        return LabelledImages(x, torch.tensor(labels, dtype=torch.int64), None, classes)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: labelled images are an .npz (images, labels, optional masks) or a folder per class")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("images", "labels") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: npz needs 'images' and 'labels' arrays, missing {missing} (has {z.files})")
        arr, lab = z["images"], z["labels"]
        masks = z["masks"] if "masks" in z.files else None
    x = _to_nchw(arr, str(path), layout)
    if not np.issubdtype(np.asarray(lab).dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got dtype {np.asarray(lab).dtype}")
    labels = _labels(lab, x.shape[0], str(path))
    assert labels is not None
    return LabelledImages(x, labels, None if masks is None else _masks(masks, x, str(path)))


def _masks(masks: np.ndarray, images: torch.Tensor, source: str) -> torch.Tensor:
    """Integer pixel labels ``[N, H, W]`` (``[N, 1, H, W]`` accepted), checked against the images."""
    m = np.asarray(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    n, _, h, w = images.shape
    if m.shape != (n, h, w):
        raise ValueError(f"{source}: masks must be [N, H, W] = {(n, h, w)} like the images, got {m.shape}")
    if not np.issubdtype(m.dtype, np.integer) and m.dtype != np.bool_:
        raise ValueError(f"{source}: masks must hold integer pixel labels, got dtype {m.dtype}")
    if m.size and m.min() < 0:
        raise ValueError(f"{source}: masks hold negative labels (min {m.min()})")
    return torch.from_numpy(m.astype(np.int64))
