"""ReLU, the activation of the course (docs/math.md, "ReLU")."""
from __future__ import annotations

import numpy as np

from ...backends.backend import array_module
from ...backends.kernel_groups import active
from ...backends.kernels.relu import relu_grad_any_layout
from .base import Layer


class ReLU(Layer):
    """max(x, 0), any shape -> same shape. The gradient at exactly 0 is 0 (as PyTorch)."""

    def forward(self, x):
        """x (...) -> y (...), in x's memory layout (batch-innermost stays batch-innermost)."""
        self._check_floating(x)
        xp = array_module(x)
        # out=: CuPy ufuncs return C-contiguous arrays; empty_like (order 'K') keeps x's layout
        y = xp.maximum(x, 0, out=xp.empty_like(x))
        self._cache = y
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (...) -> dx (...): dy where x > 0, else 0; in the forward output's layout."""
        y = self._cached()
        self._check_dy(dy, y.shape)
        if not need_input_grad:
            return None
        xp = array_module(y)
        if active("relu", xp) and y.dtype == np.float32 and dy.dtype == np.float32:
            return relu_grad_any_layout(y, dy)  # the fused kernel: one launch
        passes = xp.greater(y, 0, out=xp.empty_like(y, dtype=bool))
        return xp.multiply(dy, passes, out=xp.empty_like(y))

    def output_shape(self, input_shape):
        return tuple(input_shape)
