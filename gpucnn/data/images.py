"""Image files in, pixel arrays out: the one way gpucnn turns a .png / .jpg / ... into
what a model takes, for training (gpucnn.data.datasets.folder) and prediction
(gpucnn.classify) alike.

    x, bad = read_images(paths, channels=1, size=(28, 28))   # uint8 (N, 1, 28, 28)

Each file is decoded with Pillow (an optional extra: pip install 'gpucnn[images]'),
converted to grayscale ("L", channels=1) or RGB (channels=3; an alpha channel is
dropped), and resized to ``size`` = (height, width) with bilinear filtering (Pillow's
resize filters with antialiasing when it shrinks; the aspect ratio is not kept, as in
Keras' image_dataset_from_directory). The result is uint8 pixels 0..255, made float32
in [0, 1] batch by batch as for every other dataset (gpucnn.data.pixels.float_batch).
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "PILLOW_MISSING", "require_pillow", "is_image_file", "list_images",
           "parse_image_size", "format_size", "image_header", "decode_image", "read_images",
           "default_channels", "most_common_size"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PILLOW_MISSING = "reading image files needs Pillow: pip install 'gpucnn[images]'"
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
DECODE_THREADS = 8  # Pillow releases the GIL while it decodes: files are decoded side by side


def require_pillow():
    """PIL.Image, or ImportError saying the one line that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(PILLOW_MISSING) from None
    return Image


def is_image_file(path) -> bool:
    """A visible file with one of IMAGE_EXTENSIONS (any case)."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder) -> list[Path]:
    """Every image file under ``folder`` (subfolders included), sorted; hidden files and
    hidden folders (names starting with a dot) are left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def parse_image_size(text) -> tuple[int, int]:
    """"28x28" or "32" (square) -> (height, width); ValueError saying what was expected."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise ValueError(f"expected HxW in pixels, e.g. 28x28 (or one number for a square), got {text!r}")
    if min(numbers) < 1:
        raise ValueError(f"expected HxW in pixels, e.g. 28x28: the height and width must be positive, "
                         f"got {text!r}")
    return (numbers[0], numbers[-1])


def format_size(size) -> str:
    """(height, width) -> "HxW"."""
    return f"{size[0]}x{size[1]}"


def image_header(path) -> tuple[tuple[int, int], int]:
    """((height, width), channels) of an image file from its header alone (nothing is
    decoded): channels 1 for a grayscale mode, 3 otherwise. Raises what Pillow raises."""
    Image = require_pillow()
    with Image.open(path) as image:
        return (image.height, image.width), 1 if image.mode in GRAY_MODES else 3


def decode_image(path, channels: int, size) -> tuple[np.ndarray, tuple[int, int]]:
    """One file -> (uint8 pixels (channels, H, W) at ``size`` = (H, W), the file's own
    (height, width)). Raises what Pillow raises for a file it cannot read."""
    Image = require_pillow()
    height, width = size
    with Image.open(path) as image:
        own = (image.height, image.width)
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, 3)
    if channels == 1:
        return pixels[None], own  # (1, H, W)
    return pixels.transpose(2, 0, 1), own  # (3, H, W)


def _decode_or_reason(job):
    path, channels, size = job
    try:
        return decode_image(path, channels, size), None
    except ImportError:
        raise
    except Exception as exc:  # an untrusted file: whatever Pillow raises makes it a bad file
        return None, f"{type(exc).__name__}: {exc}"


def read_images(paths, channels: int, size, progress: str | None = None):
    """Decode ``paths`` -> (uint8 images (N, channels, H, W), the files' own sizes (N, 2)
    int64, [(path, reason)] of the files that could not be read). A bad file's row is
    zeros; ``progress``: a tqdm bar with that title on stderr when it is a terminal."""
    require_pillow()
    paths = list(paths)
    height, width = size
    images = np.zeros((len(paths), channels, height, width), dtype=np.uint8)  # (N, C, H, W)
    own_sizes = np.zeros((len(paths), 2), dtype=np.int64)  # (N, 2) height, width
    bad = []
    jobs = [(p, channels, (height, width)) for p in paths]
    bar = _bar(len(paths), progress)
    with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, os.cpu_count() or 1)) as pool:
        for i, (decoded, reason) in enumerate(pool.map(_decode_or_reason, jobs, chunksize=16)):
            if decoded is None:
                bad.append((str(paths[i]), reason))
            else:
                images[i], own_sizes[i] = decoded
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return images, own_sizes, bad


def _bar(total: int, title: str | None):
    from ..training.report import stderr_is_terminal

    if title is None or not stderr_is_terminal():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=title, unit="image", leave=False, dynamic_ncols=True, delay=0.5)


def default_channels(headers) -> int:
    """1 when every image is grayscale, else 3 (grayscale images are then read as RGB)."""
    return 1 if all(channels == 1 for _, channels in headers) else 3


def most_common_size(headers) -> tuple[int, int]:
    """The (height, width) most images have (ties: the larger area, then the taller)."""
    counts = Counter(size for size, _ in headers)
    return max(counts, key=lambda s: (counts[s], s[0] * s[1], s[0]))
