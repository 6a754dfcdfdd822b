"""ReLU backward as one pass (kernel ``relu.relu_backward``) and its NumPy twin."""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .runtime import grid_1d, launch, memory_order


def relu_backward(y, dy, dx, n):
    """Twin of ``relu.relu_backward``: dx = dy where y > 0, else 0 (flat, n elements)."""
    y, dy, dx = y.reshape(-1)[:n], dy.reshape(-1)[:n], dx.reshape(-1)[:n]
    np.multiply(dy, y > 0, out=dx)


def relu_grad(y, dy):
    """y, dy (...) C-contiguous, same shape -> dx (...), one launch."""
    xp = array_module(y)
    dx = xp.empty_like(y)
    grid, block = grid_1d(y.size)
    launch("relu.relu_backward", grid, block, (y, dy, dx, np.int64(y.size)))
    return dx


def relu_grad_any_layout(y, dy):
    """y, dy (...) of the same shape, any dense layouts -> dx (...) in y's layout: one launch
    (plus one copy of dy when its layout differs from y's)."""
    xp = array_module(y)
    y_memory, perm = memory_order(y)
    dy_memory = xp.ascontiguousarray(dy.transpose(perm))  # no copy when dy is laid out as y
    inverse = [perm.index(axis) for axis in range(y.ndim)]
    return relu_grad(y_memory, dy_memory).transpose(inverse)  # y's shape, y's layout
