"""ReLU, the activation of the course."""
from __future__ import annotations

from .base import Layer


class ReLU(Layer):
    """max(x, 0), any shape -> same shape. The gradient at exactly 0 is 0 (as PyTorch)."""

    def forward(self, x):
        """x (...) -> y (...)."""
        self._check_floating(x)
        positive = x > 0
        self._cache = positive
        return x * positive

    def backward(self, dy, need_input_grad=True):
        """dy (...) -> dx (...): dy where x > 0, else 0."""
        positive = self._cached()
        self._check_dy(dy, positive.shape)
        return dy * positive if need_input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape)
