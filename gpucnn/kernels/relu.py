"""ReLU backward as one pass (kernel ``relu.relu_backward``), its NumPy twin, and
:func:`memory_order`, which hands a kernel any dense layout as C-contiguous memory."""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .runtime import grid_1d, launch


def relu_backward(y, dy, dx, n):
    """Twin of ``relu.relu_backward``: dx = dy where y > 0, else 0 (flat, n elements)."""
    y, dy, dx = y.reshape(-1)[:n], dy.reshape(-1)[:n], dx.reshape(-1)[:n]
    np.multiply(dy, y > 0, out=dx)


def memory_order(a):
    """a (any shape) -> (a.transpose(perm), perm): C-contiguous, its axes in memory order
    (outermost first); no copy when some order of a's axes is contiguous (an NCHW view of
    (C, H, W, N) memory gives perm (1, 2, 3, 0)). Otherwise a C-contiguous copy of a and
    the identity perm."""
    perm = tuple(sorted(range(a.ndim), key=lambda axis: -a.strides[axis]))  # stable: ties keep order
    view = a.transpose(perm)
    if view.flags.c_contiguous:
        return view, perm
    return array_module(a).ascontiguousarray(a), tuple(range(a.ndim))


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
