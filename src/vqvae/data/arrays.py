"""Images held in a NumPy file (.npy or .npz), as many users keep their data.

Accepted: shapes (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; uint8, or float in
[0, 1] (anything else is refused, never silently rescaled). An .npz holds its images under
`images`, `x`, `X` or `data` (or as its only array) and may hold `labels` (or `y`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

NUMPY_SUFFIXES = (".npy", ".npz")
IMAGE_KEYS = ("images", "x", "X", "data")
LABEL_KEYS = ("labels", "y", "Y", "targets")


def channels_first(images: np.ndarray, source: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W), same dtype."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise DataError(f"{source} holds an array of shape {images.shape}; expected images (N, H, W), "
                        f"(N, H, W, C) or (N, C, H, W)")
    first, last = images.shape[1] in (1, 3), images.shape[3] in (1, 3)
    if last and not first:
        return images.transpose(0, 3, 1, 2)
    if first and not last:
        return images
    raise DataError(f"{source} holds an array of shape {images.shape}: cannot tell (N, H, W, C) from "
                    f"(N, C, H, W); channels must be 1 or 3 and the image sides larger than 3")


def to_uint8(images: np.ndarray, source: str) -> np.ndarray:
    """uint8 as is; float in [0, 1] scaled to 0..255 and rounded; anything else is an error."""
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        low, high = float(images.min()), float(images.max())
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise DataError(f"{source} holds {images.dtype} images with values in [{low:g}, {high:g}]; "
                            f"float images must lie in [0, 1] (or pass uint8 0..255)")
        return np.rint(images * 255.0).astype(np.uint8)
    raise DataError(f"{source} holds {images.dtype} images; expected uint8 (0..255) or float in [0, 1]")


def numpy_format(path: Path) -> str:
    """"npy" or "npz", from the file's first bytes, not its name (a .npz saved as .npy, or .NPY,
    is read for what it is); a DataError for an empty file or anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if head == b"\x93NUMPY":
        return "npy"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":  # a zip archive (an empty one: its end record)
        return "npz"
    if not head:
        raise DataError(f"{path} is empty (0 bytes); expected a NumPy .npy or .npz file of images")
    raise DataError(f"{path} is not a NumPy .npy or .npz file (its first bytes are {head!r})")


def read_numpy(path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(images (N, C, H, W) — uint8 or float —, labels or None, description of what was read).

    A .npy is memory-mapped (copy-on-write, never written back): a uint8 file larger than
    memory is never read whole.
    """
    kind = numpy_format(path)
    try:
        if kind == "npy":
            images = np.load(path, mmap_mode="c", allow_pickle=False)
            if images.size == 0:
                raise DataError(f"{path} holds no images (an array of shape {images.shape})")
            return channels_first(images, str(path)), None, str(path)
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            image_key = next((k for k in IMAGE_KEYS if k in names), names[0] if len(names) == 1 else None)
            if image_key is None:
                raise DataError(f"{path} holds arrays {names}; name the images one of {', '.join(IMAGE_KEYS)}")
            label_key = next((k for k in LABEL_KEYS if k in names and k != image_key), None)
            images = channels_first(archive[image_key], f"{path}[{image_key!r}]")
            labels = archive[label_key] if label_key else None
    except (OSError, ValueError, EOFError, KeyError) as e:  # EOFError: truncated; KeyError: a damaged zip member
        raise DataError(f"cannot read {path} as a NumPy array file (truncated or damaged?): {e}") from None
    if images.size == 0:
        raise DataError(f"{path}[{image_key!r}] holds no images (an array of shape {images.shape})")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)
                               or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}[{label_key!r}] has shape {labels.shape} ({labels.dtype}); expected {len(images)} "
                        f"integer labels")
    if labels is not None and len(labels) and int(labels.min()) < 0:
        raise DataError(f"{path}[{label_key!r}] holds negative labels (smallest {int(labels.min())}); labels must be "
                        f"class numbers >= 0 (drop unlabelled images, or leave the labels out)")
    described = f"{path} (images from key {image_key!r}" + (f", labels from {label_key!r})" if label_key else ")")
    return images, labels, described


def classes_from_labels(labels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label values (any integers) -> (class indices 0..C-1 as int64, class names): one class per
    label value present, in value order, named by its value. Labels {3, 7} are two classes named
    "3" and "7", not eight of which six are empty (and a label of 10^9 is not 10^9 classes)."""
    values, indices = np.unique(np.asarray(labels), return_inverse=True)
    return indices.astype(np.int64).reshape(-1), tuple(str(int(v)) for v in values)
