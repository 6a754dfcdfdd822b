"""Your own data: one .npz file (np.savez) holding x_train, y_train, x_test, y_test,
like Keras datasets, and optionally class_names.

Images (N, H, W) or (N, H, W, C), uint8 0-255 or float in [0, 1]; labels (N,) integers
0..K-1 with every class present in the training split. Integer pixels are kept as uint8
(N, C, H, W), float pixels become float32 (N, C, H, W): the Dataset convention. Read with allow_pickle=False:
an object array is refused, never unpickled. Everything is checked up front.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .common import DataError, Dataset

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_SAVE_HINT = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def load_npz(path) -> Dataset:
    """Images (N, H, W[, C]) -> (N, C, H, W) uint8 0..255 (integer pixels) or float32 in
    [0, 1] (float pixels); labels -> (N,) int64."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a .npz file written by {_SAVE_HINT}; check the path")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read it as a .npz file ({exc}); "
                        f"expected a file written by {_SAVE_HINT}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: expected a .npz file of named arrays, got a single .npy array; "
                        f"fix: write it with {_SAVE_HINT}")
    with archive:
        absent = [key for key in REQUIRED if key not in archive.files]
        if absent:
            raise DataError(f"{path}: expected arrays {', '.join(REQUIRED)}, missing {', '.join(absent)} "
                            f"(it holds: {', '.join(archive.files) or 'nothing'}); fix: {_SAVE_HINT}")
        arrays = {key: _read(archive, key, path) for key in (*REQUIRED, "class_names") if key in archive.files}

    train_x, shape = _images(arrays.pop("x_train"), "x_train", path)
    train_x = _to_nchw(train_x)  # the file's (N, H, W, C) array goes now: one image copy at a time
    test_x, test_shape = _images(arrays.pop("x_test"), "x_test", path)
    test_x = _to_nchw(test_x)
    if test_shape != shape:
        raise DataError(f"{path}: x_test: expected images of the training shape (H, W, C) = {shape}, got "
                        f"{test_shape}; fix: give both splits the same height, width and channels")
    train_y = _labels(arrays["y_train"], "y_train", len(train_x), path)
    test_y = _labels(arrays["y_test"], "y_test", len(test_x), path)
    class_names = _class_names(arrays.get("class_names"), path)
    num_classes = len(class_names) if class_names else int(train_y.max()) + 1
    _check_classes(train_y, test_y, num_classes, class_names is not None, path)
    return Dataset(train_x, train_y, test_x, test_y, num_classes=num_classes,
                   class_names=class_names, name=path.stem)


def _read(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path}: {key}: expected a numeric array, got an object array (dtype=object), which "
                "only pickle can read; gpucnn never unpickles data files. Fix: save a regular array, e.g. "
                f"np.stack(...) of equal-sized images, np.asarray(..., dtype=np.uint8), or strings for class_names"
            ) from exc
        raise DataError(f"{path}: {key}: cannot read it ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: {key}: cannot read it ({exc}); the file is truncated or corrupted") from exc


def _images(x: np.ndarray, key: str, path: Path) -> tuple[np.ndarray, tuple]:
    """Check one image array; returns it as (N, H, W, C) and its (H, W, C)."""
    where = f"{path}: {key}"
    if x.dtype.kind not in "uif":
        raise DataError(f"{where}: expected uint8 pixels 0-255 or float pixels in [0, 1], got dtype {x.dtype}; "
                        "fix: np.asarray(x, dtype=np.uint8)")
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W, 1)
    elif x.ndim != 4:
        raise DataError(f"{where}: expected images of shape (N, H, W) or (N, H, W, C), got {x.shape}; "
                        "fix: one image per row of the first axis, e.g. x.reshape(N, H, W)")
    if x.shape[1] in (1, 3, 4) and x.shape[3] > 4:
        raise DataError(f"{where}: expected channels-last images (N, H, W, C) like Keras datasets, got {x.shape}, "
                        "which looks channels-first (N, C, H, W); fix: x.transpose(0, 2, 3, 1)")
    if 0 in x.shape:
        raise DataError(f"{where}: expected at least one image of at least 1x1 pixels, got shape {x.shape}")
    low, high = x.min(), x.max()  # NaN and inf propagate into these: no full-size mask needed
    if x.dtype.kind == "f":
        if not (np.isfinite(low) and np.isfinite(high)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise DataError(f"{where}: expected finite pixel values, got {bad} NaN or infinite values; "
                            "fix: replace or drop those images")
        if low < 0 or high > 1:
            raise DataError(f"{where}: expected float pixels in [0, 1], got values in [{low:g}, {high:g}]; "
                            "fix: save uint8 0-255 pixels, or divide by 255 (gpucnn normalises per channel itself)")
    elif low < 0 or high > 255:
        raise DataError(f"{where}: expected integer pixels in 0..255, got values in [{low}, {high}]; "
                        "fix: rescale to 0..255 and save as uint8, or save floats in [0, 1]")
    return x, x.shape[1:]


def _labels(y: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    where = f"{path}: {key}"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # (N,) from Keras-style (N, 1)
    if y.ndim != 1:
        hint = "y.argmax(axis=1) turns one-hot rows into class indices" if y.ndim == 2 else "y.reshape(-1)"
        raise DataError(f"{where}: expected labels of shape (N,), got {y.shape}; fix: {hint}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: expected integer class indices 0..K-1, got dtype {y.dtype}; "
                        "fix: y.astype(np.int64) once you have checked they are whole numbers")
    if len(y) != n:
        raise DataError(f"{where}: expected {n} labels (one per image in x_{key[2:]}), got {len(y)}")
    if y.min() < 0:
        raise DataError(f"{where}: expected class indices 0..K-1, got a minimum of {y.min()}; "
                        "fix: re-number the classes with np.unique(y, return_inverse=True)[1]")
    return y.astype(np.int64)


def _class_names(names, path: Path) -> tuple | None:
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{path}: class_names: expected a 1-D array of strings, got dtype {names.dtype} "
                        f"shape {names.shape}; fix: np.array(['cat', 'dog', ...])")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())


def _check_classes(train_y, test_y, num_classes: int, named: bool, path: Path) -> None:
    if named and train_y.max() >= num_classes:
        raise DataError(f"{path}: y_train: expected labels 0..{num_classes - 1} (one per entry of class_names), "
                        f"got a maximum of {train_y.max()}; fix: give one name per class")
    if num_classes < 2:
        raise DataError(f"{path}: y_train: expected at least 2 classes, got {num_classes}")
    counts = np.bincount(train_y, minlength=num_classes)  # (K,)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise DataError(f"{path}: y_train: expected every class 0..{num_classes - 1} to have training images, "
                        f"got none for class {', '.join(map(str, empty[:10].tolist()))}"
                        f"{' ...' if len(empty) > 10 else ''}; fix: re-number the classes consecutively "
                        "with np.unique(y, return_inverse=True)[1]")
    if test_y.max() >= num_classes:
        raise DataError(f"{path}: y_test: expected labels 0..{num_classes - 1} (the classes of y_train), got a "
                        f"maximum of {test_y.max()}; fix: every test class must also appear in training")


def _to_nchw(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) integer pixels 0..255 or float pixels in [0, 1] (checked) -> (N, C, H, W)
    uint8 or float32, the pixel values unchanged; one copy (none for C == 1 in the right dtype)."""
    dtype = np.uint8 if x.dtype.kind in "iu" else np.float32
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)  # (N, C, H, W)
