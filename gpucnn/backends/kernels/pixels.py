"""A training batch gathered in one launch (kernels ``pixels.gather_scale`` for uint8
pixels, ``pixels.gather_copy`` for float32 images), and their NumPy twins."""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .runtime import grid_1d, launch

PIXEL_MAX = np.float32(255)  # as gpucnn.data.pixels.float_batch divides


def _gather(x, y, indices, xb, yb, n, batch, image_size, scale):
    """What both kernels do: images indices[b] of x (n, image_size) into xb (batch, image_size)
    (divided by 255 when ``scale``), their labels into yb; a bad index gives NaN and -1."""
    images = x.reshape(-1)[:n * image_size].reshape(n, image_size)  # (n, C*H*W)
    picks = indices.reshape(-1)[:batch]  # (batch,)
    valid = (picks >= 0) & (picks < n)  # (batch,)
    safe = np.where(valid, picks, 0)  # (batch,) in range
    out = images[safe].astype(np.float32)  # (batch, C*H*W)
    if scale:
        np.divide(out, PIXEL_MAX, out=out)  # IEEE float32 division, as the kernel's / 255.0f
    out[~valid] = np.nan
    xb.reshape(-1)[:batch * image_size] = out.reshape(-1)  # (batch * C*H*W,)
    yb.reshape(-1)[:batch] = np.where(valid, y.reshape(-1)[safe], -1)


def gather_scale(x, y, indices, xb, yb, n, batch, image_size):
    """Twin of ``pixels.gather_scale``: xb[b] = float32(x[indices[b]]) / float32(255) (uint8 x),
    yb[b] = y[indices[b]]; exact (no sums), so bit-identical to the kernel."""
    _gather(x, y, indices, xb, yb, n, batch, image_size, scale=True)


def gather_copy(x, y, indices, xb, yb, n, batch, image_size):
    """Twin of ``pixels.gather_copy``: xb[b] = x[indices[b]] (float32 x), yb[b] = y[indices[b]]."""
    _gather(x, y, indices, xb, yb, n, batch, image_size, scale=False)


def gather_batch_fused(x, y, indices):
    """x (N, C, H, W) C-contiguous uint8 or float32, y (N,) int64, indices (B,) int64 C-contiguous,
    on one device -> xb (B, C, H, W) float32 C-contiguous (uint8 pixels / 255), yb (B,) int64; one
    launch."""
    xp = array_module(x)
    n, batch = x.shape[0], indices.shape[0]
    image_size = int(np.prod(x.shape[1:], dtype=np.int64))
    xb = xp.empty((batch, *x.shape[1:]), dtype=np.float32)  # (B, C, H, W)
    yb = xp.empty(batch, dtype=np.int64)  # (B,)
    kernel = "pixels.gather_scale" if x.dtype == np.uint8 else "pixels.gather_copy"
    grid, block = grid_1d(max(batch * image_size, batch))
    launch(kernel, grid, block, (x, y, indices, xb, yb, np.int64(n), np.int64(batch), np.int64(image_size)))
    return xb, yb
