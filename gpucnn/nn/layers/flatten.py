"""Flatten: the bridge from feature maps to the dense classifier (docs/math.md, "Flatten")."""
from __future__ import annotations

import numpy as np

from .base import Layer


class Flatten(Layer):
    """x (N, d1, d2, ...) -> y (N, d1*d2*...), row-major (a 2x2 map -> 4 values in reading order)."""

    def forward(self, x):
        """x (N, ...) -> y (N, prod(...))."""
        self._check_floating(x)
        if x.ndim < 2:
            raise ValueError(f"{self!r} expected x of shape (N, ...), got {tuple(x.shape)}")
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)  # (N, C*H*W)

    def backward(self, dy, need_input_grad=True):
        """dy (N, prod(...)) -> dx (N, ...)."""
        shape = self._cached()
        self._check_dy(dy, (shape[0], int(np.prod(shape[1:]))))
        return dy.reshape(shape) if need_input_grad else None  # (N, C, H, W)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) < 2:
            raise ValueError(f"{self!r} expected x of shape (N, ...), got {shape}")
        return shape[0], int(np.prod(shape[1:]))
