"""ReLU backward as one pass (kernel ``relu.relu_backward``), and its NumPy twin."""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .runtime import grid_1d, launch


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
