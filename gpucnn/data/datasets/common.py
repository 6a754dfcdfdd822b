"""What every data source shares: the Dataset record, DataError, checksums and the
message that says what to do when files are missing."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pixels import float_batch


class DataError(ValueError):
    """A data file is missing, truncated, corrupted or not what it claims to be."""


@dataclass
class Dataset:
    """Host arrays: images (N, C, H, W), labels (N,) int64 in [0, num_classes).

    Images keep the dtype they are stored in, as torchvision and Keras keep them: uint8
    pixels 0..255 (MNIST, Fashion-MNIST, CIFAR-10, a .npz of integer pixels), or float32
    in [0, 1] (scikit-learn's digits, a .npz of float pixels). Training, evaluation and
    prediction turn uint8 pixels into float32 in [0, 1] one batch at a time, after the
    batch is gathered (gpucnn.data.pixels.float_batch: ``astype(float32) / float32(255)``),
    so no float copy of the whole set is ever made.

    ``class_names`` is a tuple of num_classes strings when the source names its classes,
    else None; ``name`` says where the data came from ("mnist", "cifar10", a file's stem).
    ``val_x`` / ``val_y``: validation images the source sets apart itself (an image
    folder's ``val/``), else None: a run then holds out --val-fraction of the training images.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int = 10
    class_names: tuple | None = None
    name: str = ""
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])


def sha256_of(path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (a 170 MB archive never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path, sha256: str, size: int | None = None, fix: str = "") -> None:
    """Raise DataError naming ``path`` unless its size (when given) and SHA-256 match."""
    path = Path(path)
    fix = fix or "the file is truncated or corrupted: delete it and get it again"
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        raise DataError(f"{path}: expected {size} bytes, got {got_size}; {fix}")
    digest = sha256_of(path)
    if digest != sha256:
        raise DataError(f"{path}: checksum mismatch, expected SHA-256 {sha256}, got {digest}; {fix}")


def missing_message(title: str, data_dir: Path, missing: list[str], source: str, failure=None) -> str:
    """The error for absent files: names them and the two remedies (put them there, or
    allow the download); after a failed download, says why it failed instead."""
    head = f"{title} files missing in {data_dir}: {', '.join(missing)}"
    if failure is not None:
        return f"{head}, and the download failed: {failure}\nPut the files there ({source}) and run again"
    return f"{head}. Either put them there ({source}), or allow the download with --download"


def to_float_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> a float32 copy (N, 1, H, W) in [0, 1], by the rule of
    gpucnn.data.pixels.float_batch. The loaders no longer make this copy (training converts
    batch by batch); it is here for code that wants the whole set as floats."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"to_float_images expected uint8 images (N, H, W), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    return float_batch(images[:, None])  # (N, 1, H, W)
