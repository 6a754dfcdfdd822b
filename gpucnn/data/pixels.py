"""Images as they are stored, and as the layers take them: the one rule.

gpucnn keeps images in their stored dtype until a batch is formed (the torchvision and
Keras convention): a uint8 image holds pixels 0..255, a float image holds pixels in
[0, 1]. A batch of uint8 pixels becomes float32 in [0, 1] on its own device, after it
is gathered, by ``astype(float32)`` and a division by ``float32(255)``:

    xb = float_batch(x[batch])    # uint8 (B, C, H, W) -> float32 (B, C, H, W) in [0, 1]

So a uint8 dataset costs a quarter of the memory of its float32 copy (on the host and
on the GPU), and the model sees exactly the values a float32 copy divided by 255 holds.

The training loop forms its batches with :func:`gather_batch`, which is that line (and
the labels' gather); with the ``pixels`` fused-kernel group active on a GPU it is one
launch (gpucnn.backends.kernels.pixels), bit for bit the same numbers.
"""
from __future__ import annotations

import numpy as np

from ..backends import kernels
from ..backends.backend import array_module
from ..backends.kernels.pixels import gather_batch_fused

__all__ = ["PIXEL_MAX", "ACCEPTED_IMAGES", "float_batch", "gather_batch", "check_image_dtype"]

PIXEL_MAX = 255  # the value of a white uint8 pixel
ACCEPTED_IMAGES = "uint8 pixels 0..255 or float pixels in [0, 1]"


def float_batch(images):
    """Images (B, ...) on any device -> what the layers take: uint8 pixels become a new
    float32 array in [0, 1] (``astype(float32) / float32(255)``, on the images' device);
    float images are returned as they are (no copy)."""
    if images.dtype != np.uint8:
        return images
    xp = array_module(images)
    out = images.astype(np.float32)  # (B, ...) one new array on the images' device
    xp.divide(out, np.float32(PIXEL_MAX), out=out)
    return out


def gather_batch(x, y, indices):
    """Images x (N, C, H, W), labels y (N,) and batch indices (B,) int64, all on one device ->
    (xb (B, C, H, W) as the layers take it (:func:`float_batch`), yb (B,)): the batch the
    training loop runs, ``float_batch(x[indices]), y[indices]``.

    With the ``pixels`` fused-kernel group active (gpucnn.backends.kernels) and x C-contiguous uint8
    or float32, y int64, indices a C-contiguous int64 vector, the gather, the conversion and
    the labels' gather are one launch, bit for bit the same numbers. Indices
    must lie in [0, N): the CuPy gather wraps others around silently, the kernel gives NaN
    images and label -1 (the loss becomes NaN)."""
    xp = array_module(x)
    if kernels.active("pixels", xp) and _fusable(x, y, indices):
        return gather_batch_fused(x, y, indices)
    return float_batch(x[indices]), y[indices]  # (B, C, H, W), (B,) gathered on the device


def _fusable(x, y, indices) -> bool:
    """Whether the gather kernels take these arrays as they are (no copies)."""
    return (x.dtype in (np.uint8, np.float32) and x.ndim >= 1 and x.shape[0] > 0 and x.flags.c_contiguous
            and y.dtype == np.int64 and y.ndim == 1 and y.flags.c_contiguous
            and indices.dtype == np.int64 and indices.ndim == 1 and indices.flags.c_contiguous)


def check_image_dtype(x, owner: str, fix: str = "") -> None:
    """Raise TypeError unless ``x`` holds uint8 pixels or floats (what float_batch takes)."""
    dtype = np.dtype(x.dtype)
    if dtype == np.uint8 or dtype.kind == "f":
        return
    fix = fix or ("convert with x.astype(numpy.uint8) when it holds pixels 0..255, "
                  "or x.astype(numpy.float32) / 255")
    raise TypeError(f"{owner} expected images of {ACCEPTED_IMAGES}, got dtype {dtype}; {fix}")
