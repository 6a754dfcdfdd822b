"""scikit-learn's bundled 8x8 digits: 1797 images, no files, no download."""
from __future__ import annotations

import numpy as np

from .common import Dataset


def load_digits() -> Dataset:
    """80/20 stratified train/test split with a fixed seed, float32 (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = digits.images.astype(np.float32) / np.float32(16.0)  # pixel values 0..16
    train_x, test_x, train_y, test_y = train_test_split(
        images[:, None], digits.target.astype(np.int64), test_size=0.2, stratify=digits.target,  # (N, 1, 8, 8)
        random_state=0)
    return Dataset(train_x, train_y, test_x, test_y, num_classes=10,
                   class_names=tuple(str(d) for d in range(10)), name="digits")
