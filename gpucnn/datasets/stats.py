"""Per-channel normalisation statistics, from the training split only."""
from __future__ import annotations

import numpy as np

CHUNK_VALUES = 1 << 22  # float64 values per chunk: a 32 MiB working set, whatever N is


def channel_stats(train_x: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each channel of host images (N, C, H, W) -> two
    lists of C floats (population std, ddof=0, as np.std).

    Two passes over chunks of images, each chunk promoted to float64 on its own: the
    result is as accurate as np.mean/np.std in float64, without a float64 copy of the
    whole set. A constant channel has std 0; the caller decides how to divide by it.
    """
    if not isinstance(train_x, np.ndarray) or train_x.ndim != 4 or train_x.dtype.kind not in "uif":
        raise ValueError(
            "channel_stats expected host images (N, C, H, W) as a numeric NumPy array, got "
            f"{type(train_x).__name__} {getattr(train_x, 'dtype', '')} {getattr(train_x, 'shape', '')}; "
            "pass Dataset.train_x (a device array: backend.to_numpy(x) first)")
    n, channels, height, width = train_x.shape
    if n == 0 or height * width == 0:
        raise ValueError(f"channel_stats expected at least one non-empty image, got shape {train_x.shape}")
    count = n * height * width
    step = max(1, CHUNK_VALUES // (channels * height * width))  # images per chunk
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
