"""What the training images looked like, kept with the model, and a one-line note when
an image given to predict does not look like them.

    stats = training_image_stats(train_x)      # {"background": 0.02, "mean": 0.13, "size": [28, 28]}
    note = image_note(stats, prepared, own_size)  # None, or what differs and the fix

Two things make a classifier read an image wrongly although it is "the same" digit or
object: the background polarity (MNIST digits are white on black; a scanned "7" is black
on white) and the size (a 100x100 photo squeezed into 28x28 pixels). The background is
measured as the mean of the one-pixel border of each image, in [0, 1].
"""
from __future__ import annotations

import numpy as np

from .images import format_size

__all__ = ["training_image_stats", "border_means", "image_note", "POLARITY_GAP"]

POLARITY_GAP = 0.4  # background brightness apart by more than this (of 1.0): the polarity differs
CHUNK_IMAGES = 4096  # images per chunk: a bounded float64 working set whatever N is


def border_means(x: np.ndarray) -> np.ndarray:
    """Host images (N, C, H, W), uint8 0..255 or float in [0, 1] -> (N,) float64 mean of
    each image's one-pixel border (all channels), in [0, 1]."""
    n, _, height, width = x.shape
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    if height < 3 or width < 3:  # no inside: the whole image is its border
        return x.reshape(n, -1).mean(axis=1, dtype=np.float64) / scale
    rows = x[:, :, [0, -1], :].sum(axis=(1, 2, 3), dtype=np.float64)  # (N,) top and bottom rows
    cols = x[:, :, 1:-1, [0, -1]].sum(axis=(1, 2, 3), dtype=np.float64)  # (N,) left and right, no corners
    count = x.shape[1] * (2 * width + 2 * (height - 2))
    return (rows + cols) / count / scale


def training_image_stats(train_x: np.ndarray) -> dict:
    """Host training images (N, C, H, W) -> JSON-able {"background": mean border
    brightness, "mean": mean brightness, "size": [H, W]}, all brightness in [0, 1]."""
    n = len(train_x)
    scale = 255.0 if train_x.dtype == np.uint8 else 1.0
    background = total = 0.0
    for start in range(0, n, CHUNK_IMAGES):
        chunk = train_x[start:start + CHUNK_IMAGES]  # (n, C, H, W)
        background += float(border_means(chunk).sum())
        total += float(chunk.mean(axis=(1, 2, 3), dtype=np.float64).sum()) / scale
    return {"background": round(background / max(n, 1), 4), "mean": round(total / max(n, 1), 4),
            "size": [int(train_x.shape[2]), int(train_x.shape[3])]}


def image_note(stats: dict | None, image: np.ndarray, own_size, inverted: bool = False) -> str | None:
    """A one-line note on what makes ``image`` unlike the training images, or None.

    ``stats``: :func:`training_image_stats` output (None: nothing is known, no note);
    ``image``: the prepared uint8 image (C, H, W) the model gets; ``own_size``: the file's
    (height, width) before resizing; ``inverted``: the user already passed --invert."""
    if not stats:
        return None
    notes = []
    trained = stats.get("background")
    if trained is not None:
        here = float(border_means(image[None])[0])
        if abs(here - trained) > POLARITY_GAP:
            shade = "light" if here > trained else "dark"
            other = "dark" if shade == "light" else "light"
            fix = "leave out --invert" if inverted else "try --invert"
            notes.append(f"{shade} background (border {here:.2f}) where the training images' is {other} "
                         f"({trained:.2f}): {fix}")
    size = stats.get("size")
    if size is not None and tuple(own_size) != tuple(size):
        notes.append(f"{format_size(own_size)} pixels, resized to the {format_size(size)} the model was "
                     f"trained on: crop it to the object, or give a {format_size(size)} image")
    return "; ".join(notes) or None
