"""Fashion-MNIST (Xiao, Rasul, Vollgraf; Zalando Research): MNIST's format and sizes,
ten kinds of clothing. The published checksums are of the .gz archives, so gpucnn
verifies the archive bytes (SHA-256 and size) and needs the .gz files themselves."""
from __future__ import annotations

from pathlib import Path

from .common import DataError, Dataset, missing_message, verify_file
from .download import download_file
from .idx import IDX_NAMES, idx_dataset, read_idx

# (file, SHA-256 of the .gz archive bytes, size in bytes), from TensorFlow Datasets:
# tensorflow/datasets, tensorflow_datasets/url_checksums/fashion_mnist.txt. The MD5s in
# zalandoresearch/fashion-mnist README.md ("Get the Data") name the same files; the two
# label files in that repository's data/fashion/ hash to these same SHA-256 values.
FASHION_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz",
                     "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
    "train_labels": ("train-labels-idx1-ubyte.gz",
                     "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
    "test_images": ("t10k-images-idx3-ubyte.gz",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
    "test_labels": ("t10k-labels-idx1-ubyte.gz",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
}
# The S3 bucket that zalandoresearch/fashion-mnist README.md links to (plain HTTP: the
# SHA-256 check is what makes the bytes trustworthy), then the same files in that repository.
FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# Label order from zalandoresearch/fashion-mnist README.md ("Labels").
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FIX = "the file is truncated or corrupted: delete it and download it again (--download, or download=True)"


def load_fashion_mnist(data_dir, download: bool = False, mirrors=FASHION_MIRRORS,
                       timeout: float = 30.0) -> Dataset:
    """Fashion-MNIST from the four official .gz files in ``data_dir`` (archive SHA-256
    checked on every load); missing files are downloaded only when ``download`` is true.
    Returns train (60000, 1, 28, 28) and test (10000, 1, 28, 28) uint8 pixels 0..255."""
    data_dir = Path(data_dir)
    missing = [name for name, _, _ in FASHION_FILES.values() if not (data_dir / name).exists()]
    if missing:
        source = f"from {FASHION_MIRRORS[0]}"
        unpacked = [IDX_NAMES[key] for key, (name, _, _) in FASHION_FILES.items()
                    if name in missing and (data_dir / IDX_NAMES[key]).exists()]
        if unpacked:
            source += (f"; you have the decompressed {', '.join(unpacked)}, but the published checksums "
                       "are of the .gz files, so gpucnn needs those")
        if not download:
            raise DataError(missing_message("Fashion-MNIST", data_dir, missing, source))
        try:
            for name, sha, size in FASHION_FILES.values():
                if name in missing:
                    urls = [mirror.rstrip("/") + f"/{name}" for mirror in mirrors]
                    download_file(urls, data_dir / name,
                                  lambda path, sha=sha, size=size: verify_file(path, sha, size), timeout)
        except DataError as exc:
            raise DataError(missing_message("Fashion-MNIST", data_dir, missing, source, exc)) from exc
    arrays = {}
    for key, (name, sha, size) in FASHION_FILES.items():
        verify_file(data_dir / name, sha, size, _FIX)
        arrays[key] = read_idx(data_dir / name)
    return idx_dataset(arrays, "Fashion-MNIST", "fashion-mnist", FASHION_CLASSES)
