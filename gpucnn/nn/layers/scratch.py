"""Scratch memory shared by every layer on one device: the fused GPU path's large
im2col columns and their gradient.

A layer's private workspace (Layer._workspace) lives as long as the layer, so a network
of ten convolutions holds ten sets of columns: at batch 512 on 32x32 images that was
5 GB of a VGG-style net's 7 GB on an H200. Kernels on one device run one after another in
the order they were queued (CuPy's one stream), so one buffer per purpose can serve every
layer in turn: a layer's columns are consumed by its matrix multiply before the next
layer's im2col overwrites them. Conv2D uses a shared buffer where its columns pass
SHARED_MIN_BYTES (then it keeps its input instead and rebuilds the columns in backward,
one more launch, and writes their gradient into the same buffer once the weight gradient
has read them); smaller ones stay private, so small batches pay nothing.
"""
from __future__ import annotations

import math
import weakref

import numpy as np

SHARED_MIN_BYTES = 64 * 2 ** 20  # private below this: a rebuild costs a launch, ~10-20 us of host time

# array module -> {purpose: flat buffer}
_BUFFERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def shared_scratch(xp, purpose: str, shape: tuple, dtype=np.float32):
    """A C-contiguous array of ``shape`` over the device's one buffer for ``purpose``
    (grown when too small, never shrunk). Its contents are undefined, and the next call
    for the same purpose on the same device hands out the same memory."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    buffers = _BUFFERS.setdefault(xp, {})
    buffer = buffers.get(purpose)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = buffers[purpose] = xp.empty(size, dtype=dtype)  # the old one is freed once unused
    return buffer[:size].reshape(shape)  # (shape) view of the flat buffer


def release_shared_scratch(xp) -> None:
    """Drop the device's shared buffers (they are rebuilt on next use)."""
    _BUFFERS.pop(xp, None)
