"""MNIST handwritten digits (LeCun, Cortes, Burges): IDX files, committed in the
repository's data/mnist, checked by the SHA-256 of their decompressed content."""
from __future__ import annotations

from pathlib import Path

from .common import DataError, Dataset, missing_message
from .download import download_file
from .idx import idx_dataset, read_idx

# SHA-256 of each file's DECOMPRESSED content (the gzip wrapper may differ between copies);
# the same values are in data/mnist/SHA256SUMS.
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
MNIST_CLASSES = tuple(str(digit) for digit in range(10))


def _find(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.exists():
            return candidate
    return None


def download_mnist(data_dir, mirrors=MNIST_MIRRORS, names=None, timeout=30.0) -> None:
    """Download the missing MNIST files (all four, or the keys in ``names``) into
    ``data_dir``; each is verified before it takes its name, so a failed, partial or
    corrupt download leaves nothing behind."""
    data_dir = Path(data_dir)
    for key in names or MNIST_FILES:
        name, sha = MNIST_FILES[key]
        if _find(data_dir, name) is None:
            urls = [mirror.rstrip("/") + f"/{name}.gz" for mirror in mirrors]
            download_file(urls, data_dir / f"{name}.gz", lambda path, sha=sha: read_idx(path, sha), timeout)


def load_mnist(data_dir, download: bool = False, mirrors=MNIST_MIRRORS) -> Dataset:
    """MNIST from ``data_dir`` (IDX, gzip or raw, SHA-256 checked).

    Missing files are downloaded from ``mirrors`` only when ``download`` is true;
    otherwise the error names the missing files and both remedies.
    Returns train (60000, 1, 28, 28) and test (10000, 1, 28, 28) uint8 pixels 0..255.
    """
    data_dir = Path(data_dir)
    missing = [name + ".gz" for name, _ in MNIST_FILES.values() if _find(data_dir, name) is None]
    if missing:
        source = f"a clone of gpucnn has them in data/mnist; a mirror: {MNIST_MIRRORS[0]}"
        if not download:
            raise DataError(missing_message("MNIST", data_dir, missing, source))
        try:
            download_mnist(data_dir, mirrors)
        except DataError as exc:
            raise DataError(missing_message("MNIST", data_dir, missing, source, exc)) from exc
    arrays = {key: read_idx(_find(data_dir, name), sha) for key, (name, sha) in MNIST_FILES.items()}
    return idx_dataset(arrays, "MNIST", "mnist", MNIST_CLASSES)
