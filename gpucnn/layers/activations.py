"""ReLU, the activation of the course."""
from __future__ import annotations

from ..backend import array_module
from .base import Layer


class ReLU(Layer):
    """max(x, 0), any shape -> same shape. The gradient at exactly 0 is 0 (as PyTorch)."""

    def forward(self, x):
        """x (...) -> y (...)."""
        self._check_floating(x)
        y = array_module(x).maximum(x, 0)
        self._cache = y
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (...) -> dx (...): dy where x > 0, else 0."""
        y = self._cached()
        self._check_dy(dy, y.shape)
        return dy * (y > 0) if need_input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape)
