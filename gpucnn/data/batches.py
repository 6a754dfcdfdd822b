"""Training-side data helpers: a stratified validation split, a stratified subset, label
checks before upload, and minibatch indices.

The data sources live in gpucnn.data.datasets (one module per source); the names below are
re-exported so that ``from gpucnn.data.batches import load_mnist, Dataset, DataError`` keeps working.
"""
from __future__ import annotations

import numpy as np

from .datasets import (MNIST_FILES, MNIST_MIRRORS, DataError, Dataset, download_mnist, load_digits,
                       load_mnist, read_idx, to_float_images)

__all__ = ["Dataset", "DataError", "is_download_failure", "stratified_split", "limit", "check_labels",
           "batch_slices", "load_mnist", "load_digits", "read_idx", "download_mnist", "to_float_images",
           "MNIST_FILES", "MNIST_MIRRORS"]


def is_download_failure(exc: BaseException) -> bool:
    """True when the DataError ``exc`` says that a download failed (a mirror or the network:
    the scripts exit with 1), not that the data given is missing or unusable (bad input:
    they exit with 2). The loaders raise a failed download's DataError from the one the
    download raised, and no other DataError from a DataError."""
    return isinstance(exc, DataError) and isinstance(exc.__cause__, DataError)


def stratified_split(x, y, fraction: float, rng: np.random.Generator):
    """Hold out ``fraction`` of (x, y) for validation, class proportions kept (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    train_x, val_x, train_y, val_y = train_test_split(
        x, y, test_size=fraction, stratify=y, random_state=int(rng.integers(2**31 - 1)))
    return train_x, train_y, val_x, val_y


def limit(x, y, n: int | None, rng: np.random.Generator):
    """A stratified subset of n samples (all of them when n is None or >= len)."""
    if n is None or n >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(y))
    stratify = y if n >= classes and len(y) - n >= classes else None
    x_sub, _, y_sub, _ = train_test_split(x, y, train_size=n, stratify=stratify,
                                          random_state=int(rng.integers(2**31 - 1)))
    return x_sub, y_sub


def check_labels(y: np.ndarray, num_classes: int, name: str) -> None:
    """Validate labels on the host, before upload (CuPy wraps bad indices silently)."""
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{name} labels: expected a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{name} labels: expected values in [0, {num_classes}), got [{y.min()}, {y.max()}]")


def batch_slices(n: int, batch_size: int):
    """Slices (start, stop) covering range(n) in order; the last batch may be short."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
