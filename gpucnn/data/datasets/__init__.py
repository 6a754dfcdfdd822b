"""Datasets, one module per source, behind one entry point:

    data = gpucnn.data.datasets.load("cifar10", data_dir="data/cifar10", download=True)
    mean, std = gpucnn.data.datasets.channel_stats(data.train_x)

Every source returns a Dataset of host arrays: images (N, C, H, W) in their stored dtype,
uint8 pixels 0..255 (MNIST, Fashion-MNIST, CIFAR-10, a .npz of integer pixels) or float32
in [0, 1] (digits, a .npz of float pixels), and labels (N,) int64 in [0, num_classes).
As in torchvision and Keras, uint8 images stay uint8 until a batch is formed: fit,
evaluate and predict make each batch float32 in [0, 1] (``/ 255``) on its device
(gpucnn.data.pixels.float_batch), a quarter of the memory of a float32 copy of the set.
``channel_stats`` gives the statistics of the [0, 1] images either way. Files are checked
against published checksums; nothing is downloaded unless ``download=True`` (the CLI's
--download).
"""
from __future__ import annotations

import os
from pathlib import Path

from .cifar10 import load_cifar10
from .common import DataError, Dataset, to_float_images
from .digits import load_digits
from .fashion_mnist import load_fashion_mnist
from .folder import default_cache_dir, load_image_folder
from .idx import read_idx
from .mnist import MNIST_FILES, MNIST_MIRRORS, download_mnist, load_mnist
from .npz import load_npz
from .stats import channel_stats

DATASETS = ("mnist", "fashion-mnist", "cifar10", "digits")
# Where each named set is looked for when no data_dir is given (relative to the working folder).
DEFAULT_DATA_DIRS = {"mnist": "data/mnist", "fashion-mnist": "data/fashion-mnist", "cifar10": "data/cifar10"}
_FILE_LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}

__all__ = ["DATASETS", "DEFAULT_DATA_DIRS", "DataError", "Dataset", "load", "channel_stats", "load_mnist",
           "load_fashion_mnist", "load_cifar10", "load_digits", "load_npz", "read_idx", "download_mnist",
           "MNIST_FILES", "MNIST_MIRRORS", "to_float_images", "load_image_folder", "default_cache_dir"]


def load(name_or_path, data_dir=None, download: bool = False, *, channels=None, image_size=None,
         cache_dir=None, skip_bad_images: bool = False, log=print) -> Dataset:
    """A Dataset by name (one of DATASETS), from your own .npz file, or from a folder of
    images with one subfolder per class (gpucnn.data.datasets.folder; a folder named like a
    dataset is given as a path: "./mnist").

    ``data_dir``: the folder holding a named set's files (default DEFAULT_DATA_DIRS[name]);
    not used by "digits" (bundled with scikit-learn), a .npz path or an image folder.
    ``download``: fetch missing files from the official mirrors, verified before use.
    ``channels``, ``image_size`` (height, width), ``cache_dir``, ``skip_bad_images``, ``log``:
    how an image folder is decoded (see :func:`load_image_folder`); only for a folder.
    """
    folder_options = {"channels": channels, "image_size": image_size, "cache_dir": cache_dir,
                      "skip_bad_images": skip_bad_images or None}
    if str(name_or_path) not in DATASETS and os.path.isdir(name_or_path):  # ./mnist for a folder so named
        _refuse_data_dir(data_dir, f"an image folder ({name_or_path})")
        return load_image_folder(name_or_path, channels, image_size, cache_dir, skip_bad_images, log)
    given = [name for name, value in folder_options.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: only used for a folder of images, got {str(name_or_path)!r}; "
                         "leave them out")
    if isinstance(name_or_path, Path) or str(name_or_path).lower().endswith(".npz"):
        _refuse_data_dir(data_dir, f"a .npz file ({name_or_path})")
        return load_npz(name_or_path)
    name = str(name_or_path)
    if name == "digits":
        _refuse_data_dir(data_dir, "digits (bundled with scikit-learn)")
        return load_digits()
    if name not in _FILE_LOADERS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}, "
                         "the path of a .npz file holding x_train, y_train, x_test, y_test, or a folder of images "
                         "with one subfolder per class")
    return _FILE_LOADERS[name](DEFAULT_DATA_DIRS[name] if data_dir is None else data_dir, download=download)


def _refuse_data_dir(data_dir, what: str) -> None:
    if data_dir is not None:
        raise ValueError(f"data_dir={str(data_dir)!r} is not used by {what}; leave it out (None)")
