"""The IDX format of MNIST and Fashion-MNIST: a big-endian int32 magic number
(0x00000803 images, 0x00000801 labels), one big-endian int32 per dimension, then the
raw unsigned bytes; files are usually gzip-compressed."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from .common import DataError, Dataset

IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # ndim -> magic number of unsigned-byte IDX files
# The four files of an IDX image set, by role; MNIST and Fashion-MNIST use the same names.
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path, expected_sha256: str | None = None) -> np.ndarray:
    """Parse one IDX file (gzip or raw) into a uint8 array, checking magic, sizes and,
    when given, the SHA-256 of the DECOMPRESSED content. Returns (N,) or (N, H, W)."""
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


def idx_dataset(arrays: dict, title: str, name: str, class_names: tuple) -> Dataset:
    """Four IDX arrays (keys of IDX_NAMES) -> Dataset, images (N, 1, H, W) uint8 pixels 0..255
    (writable copies: read_idx's arrays are read-only views of the file's bytes)."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{title} {split}: {images.shape} images do not match {labels.shape} labels")
        if len(labels) and labels.max() >= len(class_names):
            raise DataError(f"{title} {split} labels: expected values in [0, {len(class_names)}), "
                            f"got a maximum of {labels.max()}")
    return Dataset(
        train_x=arrays["train_images"][:, None].copy(), train_y=arrays["train_labels"].astype(np.int64),  # (N, 1, H, W)
        test_x=arrays["test_images"][:, None].copy(), test_y=arrays["test_labels"].astype(np.int64),  # (N, 1, H, W)
        num_classes=len(class_names), class_names=class_names, name=name,
    )
