"""CIFAR-10 (Krizhevsky, 2009), the official BINARY version: cifar-10-binary.tar.gz holds
cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin (training) and test_batch.bin,
each 10,000 records of 1 label byte + 3072 pixel bytes, channel-major (3, 32, 32).
Read with NumPy; no pickle anywhere."""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .common import DataError, Dataset, missing_message, verify_file
from .download import download_file

# (file, SHA-256 of the archive bytes, size in bytes), from TensorFlow Datasets:
# tensorflow/datasets, tensorflow_datasets/url_checksums/cifar10.txt.
CIFAR10_ARCHIVE = ("cifar-10-binary.tar.gz",
                   "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171)
CIFAR10_FOLDER = "cifar-10-batches-bin"
RECORD_BYTES = 1 + 3 * 32 * 32  # label byte + (3, 32, 32) pixels
# SHA-256 of each extracted batch file, from ankane/torchvision-ruby,
# lib/torchvision/datasets/cifar10.rb (TRAIN_LIST / TEST_LIST); sizes: 10,000 records each.
CIFAR10_BATCHES = {
    "data_batch_1.bin": ("cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5", 10000 * RECORD_BYTES),
    "data_batch_2.bin": ("a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed", 10000 * RECORD_BYTES),
    "data_batch_3.bin": ("bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67", 10000 * RECORD_BYTES),
    "data_batch_4.bin": ("014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48", 10000 * RECORD_BYTES),
    "data_batch_5.bin": ("755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add", 10000 * RECORD_BYTES),
    "test_batch.bin": ("8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b", 10000 * RECORD_BYTES),
}
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCHES = ("test_batch.bin",)
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
# Label order of batches.meta.txt in the archive.
_FIX = f"the file is truncated or corrupted: delete it (gpucnn extracts it again from {CIFAR10_ARCHIVE[0]})"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10(data_dir, download: bool = False, mirrors=CIFAR10_MIRRORS, timeout: float = 30.0) -> Dataset:
    """CIFAR-10 from ``data_dir``: the extracted cifar-10-batches-bin/ when present, else
    cifar-10-binary.tar.gz (verified, then extracted next to it), else a download when
    ``download`` is true. Every batch file's SHA-256 is checked on every load.
    Returns train (50000, 3, 32, 32) and test (10000, 3, 32, 32) uint8 pixels 0..255."""
    data_dir = Path(data_dir)
    archive_name, archive_sha, archive_size = CIFAR10_ARCHIVE
    archive = data_dir / archive_name
    missing = [name for name in CIFAR10_BATCHES if not (data_dir / CIFAR10_FOLDER / name).exists()]
    if missing:
        if not archive.exists():
            wanted = [f"{archive_name} (or its extracted {CIFAR10_FOLDER}/ with {', '.join(missing)})"]
            source = f"from {CIFAR10_MIRRORS[0]}{archive_name}"
            if not download:
                raise DataError(missing_message("CIFAR-10", data_dir, wanted, source))
            try:
                download_file([m.rstrip("/") + "/" + archive_name for m in mirrors], archive,
                              lambda path: verify_file(path, archive_sha, archive_size), timeout)
            except DataError as exc:
                raise DataError(missing_message("CIFAR-10", data_dir, wanted, source, exc)) from exc
        verify_file(archive, archive_sha, archive_size, "the archive is truncated or corrupted: "
                    "delete it and download it again (--download, or download=True)")
        extract_batches(archive, data_dir, missing)
    train_x, train_y = read_batches(data_dir / CIFAR10_FOLDER, TRAIN_BATCHES)
    test_x, test_y = read_batches(data_dir / CIFAR10_FOLDER, TEST_BATCHES)
    return Dataset(train_x, train_y, test_x, test_y, num_classes=len(CIFAR10_CLASSES),
                   class_names=CIFAR10_CLASSES, name="cifar10")


def extract_batches(archive: Path, data_dir: Path, names) -> None:
    """Extract ``names`` from the archive's cifar-10-batches-bin/ (regular files only, with
    tarfile's "data" filter) into a temporary folder, then move them into place: an
    interrupted extraction leaves no half-written batch file."""
    wanted = {f"{CIFAR10_FOLDER}/{name}" for name in names}
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:  # in archive order: one pass through the gzip stream
                    if member.name in wanted and member.isfile():
                        tar.extract(member, tmp, **safe)
                        wanted.discard(member.name)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{archive}: cannot extract it ({exc}); delete it and download it again") from exc
        if wanted:
            raise DataError(f"{archive}: expected {', '.join(sorted(wanted))} inside, found no regular file of "
                            "that name; this is not the CIFAR-10 binary version (cifar-10-binary.tar.gz)")
        (data_dir / CIFAR10_FOLDER).mkdir(exist_ok=True)
        for name in names:
            os.replace(Path(tmp) / CIFAR10_FOLDER / name, data_dir / CIFAR10_FOLDER / name)


def read_batches(folder: Path, names) -> tuple[np.ndarray, np.ndarray]:
    """Batch files -> images (N, 3, 32, 32) uint8 pixels 0..255 and labels (N,) int64; each
    file is read once, checked (size, SHA-256) and parsed with np.frombuffer."""
    for name in names:  # sizes first: a truncated file is named before anything is allocated
        size, expected = (folder / name).stat().st_size, CIFAR10_BATCHES[name][1]
        if size != expected:
            raise DataError(f"{folder / name}: expected {expected} bytes, got {size}; {_FIX}")
    total = sum(CIFAR10_BATCHES[name][1] for name in names) // RECORD_BYTES
    images = np.empty((total, 3, 32, 32), dtype=np.uint8)  # (N, 3, 32, 32)
    labels = np.empty(total, dtype=np.int64)
    start = 0
    for name in names:
        content = _verified_bytes(folder / name, *CIFAR10_BATCHES[name])
        records = np.frombuffer(content, dtype=np.uint8).reshape(-1, RECORD_BYTES)  # (n, 3073)
        stop = start + len(records)
        labels[start:stop] = records[:, 0]
        images[start:stop] = records[:, 1:].reshape(-1, 3, 32, 32)  # (n, 3, 32, 32), channel-major
        start = stop
    if total and labels.max() >= len(CIFAR10_CLASSES):
        raise DataError(f"{folder}: expected labels in [0, 10), got a maximum of {labels.max()}")
    return images, labels


def _verified_bytes(path: Path, sha256: str, size: int) -> bytes:
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if len(content) != size or digest != sha256:
        raise DataError(f"{path}: checksum mismatch, expected SHA-256 {sha256}, got {digest}; {_FIX}")
    return content
