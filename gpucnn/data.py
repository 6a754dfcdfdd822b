"""Data: MNIST from IDX files (checksummed, downloadable), scikit-learn's 8x8 digits,
a stratified validation split, and minibatch indices.

Every loader returns NCHW float32 images in [0, 1] and int64 labels on the host.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# SHA-256 of each file's DECOMPRESSED content (the gzip wrapper may differ between copies).
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
# Public mirrors that serve the gzip files under their usual names.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # ndim -> magic number of unsigned-byte IDX files


class DataError(ValueError):
    """A data file is missing, truncated, corrupted or not what it claims to be."""


@dataclass
class Dataset:
    """Host arrays: images (N, C, H, W) float32 in [0, 1], labels (N,) int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train_x.shape[1:])


# -- IDX ----------------------------------------------------------------------------------
def read_idx(path, expected_sha256: str | None = None) -> np.ndarray:
    """Parse one IDX file (gzip or raw) into a uint8 array, checking magic, sizes and checksum."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read it ({exc}); delete it and download it again") from exc
    if expected_sha256 is not None:
        digest = hashlib.sha256(content).hexdigest()
        if digest != expected_sha256:
            raise DataError(
                f"{path}: checksum mismatch, expected SHA-256 {expected_sha256} of the decompressed "
                f"content, got {digest}; the file is truncated or corrupted: delete it and download it again"
            )
    if len(content) < 8:
        raise DataError(f"{path}: {len(content)} bytes is too short for an IDX header")
    magic, = struct.unpack(">i", content[:4])
    ndim = magic & 0xFF
    if magic != IDX_MAGIC.get(ndim):
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x00000801 (labels) or "
            "0x00000803 (images); this is not an unsigned-byte IDX file"
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}i", content[4:header])
    expected = header + int(np.prod(dims))
    if len(content) != expected:
        raise DataError(
            f"{path}: expected {expected} bytes for dimensions {dims}, got {len(content)}; "
            "the file is truncated: delete it and download it again"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def _find(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.exists():
            return candidate
    return None


def download_mnist(data_dir, mirrors=MNIST_MIRRORS, names=None, timeout=30.0) -> None:
    """Download missing MNIST files into ``data_dir``, verifying each checksum before
    it is moved into place (a failed or corrupt download leaves nothing behind)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for key in names or MNIST_FILES:
        name, sha = MNIST_FILES[key]
        if _find(data_dir, name):
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    payload = response.read()
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".download-", suffix=".gz")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                read_idx(tmp, sha)  # refuse bad bytes before they get the real name
                os.replace(tmp, data_dir / f"{name}.gz")
                break
            except DataError as exc:
                errors.append(f"{url}: {exc}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise DataError(f"could not download {name}.gz:\n  " + "\n  ".join(errors))


def load_mnist(data_dir, download: bool = True, mirrors=MNIST_MIRRORS) -> Dataset:
    """MNIST from ``data_dir`` (IDX, gzip or raw, SHA-256 checked).

    Missing files are downloaded from ``mirrors`` when ``download`` is true; if
    that fails (offline) the error names the missing files and how to get them.
    Returns train (60000, 1, 28, 28) and test (10000, 1, 28, 28) float32 in [0, 1].
    """
    data_dir = Path(data_dir)
    missing = [MNIST_FILES[k][0] for k in MNIST_FILES if _find(data_dir, MNIST_FILES[k][0]) is None]
    if missing and download:
        try:
            download_mnist(data_dir, mirrors)
        except DataError as exc:
            raise DataError(_missing_message(data_dir, missing) + f"\nThe download failed: {exc}") from exc
    elif missing:
        raise DataError(_missing_message(data_dir, missing))
    arrays = {key: read_idx(_find(data_dir, name), sha) for key, (name, sha) in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"MNIST {split}: {images.shape} images do not match {labels.shape} labels")
    return Dataset(
        train_x=to_float_images(arrays["train_images"]), train_y=arrays["train_labels"].astype(np.int64),
        test_x=to_float_images(arrays["test_images"]), test_y=arrays["test_labels"].astype(np.int64),
    )


def _missing_message(data_dir: Path, missing: list[str]) -> str:
    return (
        f"MNIST files missing in {data_dir}: {', '.join(n + '.gz' for n in missing)}. "
        "A fresh clone of gpucnn has them in data/mnist; otherwise download them (online, "
        f"gpucnn does this itself) from {MNIST_MIRRORS[0]} into {data_dir}, or pass --data-dir"
    )


def to_float_images(images: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]."""
    return (images.astype(np.float32) / np.float32(scale))[:, None]  # (N, 1, H, W)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, no files needed): 80/20
    stratified train/test split with a fixed seed, float32 (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = digits.images.astype(np.float32) / np.float32(16.0)  # pixel values 0..16
    train_x, test_x, train_y, test_y = train_test_split(
        images[:, None], digits.target.astype(np.int64), test_size=0.2, stratify=digits.target,
        random_state=0)
    return Dataset(train_x, train_y, test_x, test_y)


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
