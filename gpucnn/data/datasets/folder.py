"""Your own images: a folder with one subfolder per class, as torchvision's ImageFolder
and Keras' image_dataset_from_directory read it.

    photos/circle/a.png, photos/circle/b.jpg, photos/square/c.png, ...
    data = load_image_folder("photos", channels=1, image_size=(28, 28))

Class names are the subfolder names, sorted; class k is the k-th name. Files ending in
one of gpucnn.data.images.IMAGE_EXTENSIONS count (in subfolders of a class folder too);
hidden files and folders do not. A folder holding ``train/`` and ``test/`` (and
optionally ``val/``), each with the class subfolders, is used as given (Keras'
convention); otherwise 20% of each class is held out for testing (stratified, a fixed
draw: the same files whatever the run's seed, so evaluate.py tests on the same images).

The images are decoded once (gpucnn.data.images) into a uint8 cache file in ``cache_dir``
(default: :func:`default_cache_dir`, never inside the image folder unless asked), keyed
by every file's path, size and modification time and by the decoding settings: a second
run reads the cache at once, a changed folder is decoded again and its stale file is
deleted (gpucnn.data.datasets.image_cache: the cache itself, listed and cleared there).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..images import (IMAGE_EXTENSIONS, default_channels, format_size, image_header, list_images,
                      most_common_size, read_images, require_pillow)
from .common import DataError, Dataset
from .image_cache import cache_key, cache_path, default_cache_dir, read_cache, write_cache

__all__ = ["load_image_folder", "check_image_folder", "default_cache_dir", "TEST_FRACTION"]

TEST_FRACTION = 0.2  # held out for testing when the folder has no test/ of its own (as digits)
SHOWN_BAD = 5  # bad files named in a message; the count says how many more
SPLITS = ("train", "val", "test")


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _layout(folder: Path) -> dict:
    """{"train": Path, "test": Path[, "val": Path]} for a train/test layout, else {"all": folder}."""
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        parts = {name: folder / name for name in SPLITS if (folder / name).is_dir()}
        return parts
    return {"all": folder}


def check_image_folder(folder) -> None:
    """Raise DataError when ``folder`` cannot be a dataset: no class subfolders, one class,
    a class without images, a split with unknown classes. Lists files, decodes nothing:
    the checks a run makes before it prints or loads anything."""
    _scan(Path(folder))


def _scan(folder: Path):
    """-> (class names, [relative paths], labels (N,), split names (N,)) of every image."""
    parts = _layout(folder)
    first = parts.get("train", parts.get("all"))
    names = [p.name for p in _class_folders(first)]
    if not names:
        loose = list_images(first)
        raise DataError(f"{first}: expected one subfolder per class holding its images (e.g. {first}/cat/1.png), "
                        f"got {'only loose image files' if loose else 'no subfolders'}; fix: "
                        + ("move each class's images into a folder named after the class" if loose else
                           "add a folder per class (2 or more), each holding that class's images"))
    if len(names) < 2:
        raise DataError(f"{first}: expected at least 2 class folders, got 1 ({names[0]}); fix: add a folder "
                        "for each other class, with its images")
    paths, labels, splits = [], [], []
    for split, root in parts.items():
        found = [p.name for p in _class_folders(root)]
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise DataError(f"{root}: class folder(s) {', '.join(unknown)} are not in {first} (its classes: "
                            f"{', '.join(names)}); fix: give every split the training classes' folder names")
        for label, name in enumerate(names):
            files = list_images(root / name) if (root / name).is_dir() else []
            if not files and split in ("train", "all"):
                raise DataError(f"{root / name}: expected at least one image file ({', '.join(IMAGE_EXTENSIONS)}), "
                                "got none; fix: add images or remove the folder")
            paths += [str(f.relative_to(folder)) for f in files]
            labels += [label] * len(files)
            splits += [split] * len(files)
    return names, paths, np.asarray(labels, dtype=np.int64), np.asarray(splits)


def _decode(folder: Path, paths: list, channels, image_size, log) -> dict:
    """Decode every file -> the arrays the cache holds."""
    require_pillow()
    bad = []
    if channels is None or image_size is None:
        headers = []
        for rel in paths:  # headers only: sizes and modes, nothing decoded
            try:
                headers.append(image_header(folder / rel))
            except Exception as exc:  # an untrusted file: it is reported as a bad file below
                bad.append((rel, f"{type(exc).__name__}: {exc}"))
        if len(bad) == len(paths):
            raise DataError(f"{folder}: none of the {len(paths)} image files can be read (first: {bad[0][0]}: "
                            f"{bad[0][1]}); fix: replace them with images Pillow reads")
        if channels is None:
            channels = default_channels(headers)
            log(f"images: {'grayscale' if channels == 1 else 'colour'}, read with {channels} channel"
                f"{'s' * (channels > 1)} (--channels 1|3 to choose)")
        if image_size is None:
            image_size = most_common_size(headers)
            log(f"images: resized to {format_size(image_size)}, the most common size "
                "(--image-size HxW to choose)")
    bad_paths = {rel for rel, _ in bad}
    todo = [rel for rel in paths if rel not in bad_paths]
    images, _, failed = read_images([folder / rel for rel in todo], channels, image_size,
                                    progress=f"decoding {folder.name}")
    bad += [(str(Path(path).relative_to(folder)), reason) for path, reason in failed]
    row = {rel: i for i, rel in enumerate(paths)}
    keep = np.ones(len(paths), dtype=bool)
    keep[[row[rel] for rel, _ in bad]] = False
    full = np.zeros((len(paths), *images.shape[1:]), dtype=np.uint8)  # (N, C, H, W): bad rows stay 0
    full[[row[rel] for rel in todo]] = images
    bad.sort()
    return {"images": full, "ok": keep, "channels": np.int64(channels), "image_size": np.asarray(image_size),
            "bad_paths": np.asarray([b[0] for b in bad], dtype=str),
            "bad_reasons": np.asarray([b[1] for b in bad], dtype=str)}


def load_image_folder(folder, channels: int | None = None, image_size=None, cache_dir=None,
                      skip_bad: bool = False, log=print) -> Dataset:
    """A Dataset of uint8 images (N, C, H, W) from ``folder`` (see the module docstring).

    ``channels``: 1 (grayscale) or 3 (RGB); None: 1 when every image is grayscale, else 3.
    ``image_size``: (height, width) every image is resized to; None: the most common size.
    ``cache_dir``: where the decoded cache lives (None: :func:`default_cache_dir`).
    ``skip_bad``: leave out files that cannot be decoded (saying how many) instead of
    raising DataError naming them. The Dataset's ``val_x``/``val_y`` hold ``val/``'s
    images when the folder has one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected a folder with one subfolder per class")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    names, paths, labels, splits = _scan(folder)
    key = cache_key(folder, paths, channels, image_size)
    cache = cache_path(default_cache_dir() if cache_dir is None else cache_dir, folder, key)
    cached = read_cache(cache, len(paths))
    if cached is not None:
        log(f"images: {len(paths)} files read from the cache {cache} ({int(cached['channels'])} channel"
            f"{'s' * (int(cached['channels']) > 1)}, {format_size(cached['image_size'].tolist())})")
    else:
        cached = _decode(folder, paths, channels, image_size, log)
        try:
            stale = write_cache(cache, cached, folder, channels, image_size)
            log(f"images: {len(paths)} files decoded, cached in {cache}"
                + (f" (deleted {len(stale)} stale cache file{'s' * (len(stale) > 1)} of this folder)"
                   if stale else ""))
        except OSError as exc:
            log(f"images: {len(paths)} files decoded; could not write the cache {cache} ({exc.strerror}), "
                "the next run decodes them again (--cache-dir DIR to choose another folder)")
    ok = cached["ok"]
    bad = list(zip(cached["bad_paths"].tolist(), cached["bad_reasons"].tolist()))
    if bad and not skip_bad:
        shown = "; ".join(f"{folder / p} ({reason})" for p, reason in bad[:SHOWN_BAD])
        more = f" and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
        raise DataError(f"{len(bad)} of {len(paths)} image files cannot be read: {shown}{more}; fix: delete or "
                        "replace them, or leave them out with --skip-bad-images")
    if bad:
        log(f"images: skipped {len(bad)} unreadable file{'s' * (len(bad) > 1)} (--skip-bad-images), "
            f"first: {folder / bad[0][0]}")
    images = cached["images"]
    return _dataset(folder, names, images[ok], labels[ok], splits[ok])


def _dataset(folder: Path, names: list, x: np.ndarray, y: np.ndarray, splits: np.ndarray) -> Dataset:
    """Split (N, C, H, W) images by their folder (train/val/test) or, for one folder of
    classes, hold out TEST_FRACTION of each class (stratified, random_state 0)."""
    if "all" in splits:
        from sklearn.model_selection import train_test_split

        counts = np.bincount(y, minlength=len(names))
        if counts.min() < 2:
            raise DataError(f"{folder / names[int(counts.argmin())]}: expected at least 2 readable images per "
                            f"class (one to train, one to test), got {counts.min()}; fix: add images to it")
        train, test = train_test_split(np.arange(len(y)), test_size=TEST_FRACTION, stratify=y, random_state=0)
        train, test = np.sort(train), np.sort(test)
        return Dataset(x[train], y[train], x[test], y[test], num_classes=len(names),
                       class_names=tuple(names), name=folder.name)
    part = {name: splits == name for name in SPLITS}
    if not part["test"].any():
        raise DataError(f"{folder / 'test'}: expected test images in its class folders, got none; fix: add "
                        "images to them")
    val = (x[part["val"]], y[part["val"]]) if part["val"].any() else (None, None)
    return Dataset(x[part["train"]], y[part["train"]], x[part["test"]], y[part["test"]], num_classes=len(names),
                   class_names=tuple(names), name=folder.name, val_x=val[0], val_y=val[1])
