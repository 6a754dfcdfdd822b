"""Per-channel normalisation statistics, from the training split only."""
from __future__ import annotations

import numpy as np

from ..pixels import PIXEL_MAX

CHUNK_VALUES = 1 << 20  # values per chunk: an 8 MiB float64 (or int64) working set, whatever N is
# The float32 value the layers see for each uint8 pixel (gpucnn.data.pixels.float_batch), in float64.
PIXEL_VALUES = (np.arange(PIXEL_MAX + 1, dtype=np.float32) / np.float32(PIXEL_MAX)).astype(np.float64)


def channel_stats(train_x: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each channel of host images (N, C, H, W) -> two
    lists of C floats (population std, ddof=0, as np.std), of the images in [0, 1]
    that the model sees: uint8 pixels count as float32 ``pixel / 255``
    (gpucnn.data.pixels.float_batch), so a Normalize layer built from them takes [0, 1] floats.

    Float images: two passes over chunks of images, each chunk promoted to float64 on its
    own, as accurate as np.mean/np.std in float64 without a float64 copy of the whole set.
    uint8 images: a per-channel histogram of the 256 pixel values, then the exact
    float64 moments of those values, equal to the float path on the float32 images up to
    float64 rounding. A constant channel has std 0; the caller decides how to divide by it.
    """
    if not isinstance(train_x, np.ndarray) or train_x.ndim != 4 or not (
            train_x.dtype == np.uint8 or train_x.dtype.kind == "f"):
        raise ValueError(
            "channel_stats expected host images (N, C, H, W) as a NumPy array of uint8 pixels 0..255 or "
            f"float pixels in [0, 1], got {type(train_x).__name__} {getattr(train_x, 'dtype', '')} "
            f"{getattr(train_x, 'shape', '')}; pass Dataset.train_x (a device array: backend.to_numpy(x) first)")
    n, channels, height, width = train_x.shape
    if n == 0 or height * width == 0:
        raise ValueError(f"channel_stats expected at least one non-empty image, got shape {train_x.shape}")
    count = n * height * width
    step = max(1, CHUNK_VALUES // (channels * height * width))  # images per chunk
    if train_x.dtype == np.uint8:
        return _uint8_stats(train_x, step, count)
    sums = np.zeros(channels, dtype=np.float64)
    for start in range(0, n, step):
        sums += train_x[start:start + step].sum(axis=(0, 2, 3), dtype=np.float64)  # (C,)
    mean = sums / count
    squares = np.zeros(channels, dtype=np.float64)
    for start in range(0, n, step):
        deviation = train_x[start:start + step] - mean[None, :, None, None]  # (n, C, H, W) float64
        np.square(deviation, out=deviation)
        squares += deviation.sum(axis=(0, 2, 3))  # (C,)
    std = np.sqrt(squares / count)
    return mean.tolist(), std.tolist()


def _uint8_stats(train_x: np.ndarray, step: int, count: int) -> tuple[list[float], list[float]]:
    """uint8 (N, C, H, W) -> per-channel mean and std of PIXEL_VALUES[pixel], from one pass."""
    channels = train_x.shape[1]
    bins = PIXEL_MAX + 1
    offsets = (np.arange(channels, dtype=np.intp) * bins)[None, :, None, None]  # (1, C, 1, 1)
    histogram = np.zeros(channels * bins, dtype=np.int64)
    for start in range(0, len(train_x), step):
        keys = train_x[start:start + step] + offsets  # (n, C, H, W) intp: channel * 256 + pixel
        histogram += np.bincount(keys.ravel(), minlength=channels * bins)
        del keys  # before the next chunk's keys exist: one chunk in memory at a time
    histogram = histogram.reshape(channels, bins)  # (C, 256) pixels of each value per channel
    mean = histogram @ PIXEL_VALUES / count  # (C,)
    deviation = PIXEL_VALUES[None, :] - mean[:, None]  # (C, 256)
    std = np.sqrt((histogram * deviation**2).sum(axis=1) / count)  # (C,)
    return mean.tolist(), std.tolist()
