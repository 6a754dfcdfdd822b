"""Dense: the fully connected layer. The math: docs/math.md, "Dense"."""
from __future__ import annotations

import operator

import numpy as np

from ...backends.backend import array_module
from ...backends.kernels import gemm
from .base import Layer, check_dtype, check_positive_int, check_rng
from .init import init_weight


class Dense(Layer):
    """Fully connected: x (N, in_features) -> y = x @ weight + bias, (N, out_features).

    params["weight"] (in_features, out_features), params["bias"] (out_features,).
    Glorot/Xavier uniform by default, or ``init="he"`` (docs/math.md, "Initial weights").
    """

    def __init__(self, in_features, out_features, *, dtype=np.float32, rng=None, init="glorot"):
        super().__init__()
        name = type(self).__name__
        self.in_features = check_positive_int(name, "in_features", in_features)
        self.out_features = check_positive_int(name, "out_features", out_features)
        self.dtype = check_dtype(dtype)
        self.init = init
        self.params = {
            "weight": init_weight(name, init, check_rng(name, rng),
                                  (self.in_features, self.out_features),
                                  self.in_features, self.out_features, self.dtype),
            "bias": np.zeros(self.out_features, dtype=self.dtype),
        }
        self.grads = {"weight": None, "bias": None}

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "dtype": self.dtype.name, "init": self.init}

    def describe(self):
        """``Dense 4608->10``."""
        return f"Dense {self.in_features}->{self.out_features}"

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 2 or shape[1] != self.in_features:
            hint = "; put a Flatten() before Dense" if len(shape) > 2 else ""
            raise ValueError(
                f"{self!r} expected x of shape (N, {self.in_features}), got {shape}{hint}"
            )
        return shape[0], self.out_features

    def forward(self, x):
        """x (N, in_features) -> y (N, out_features)."""
        self._check_floating(x, self.dtype)
        self.output_shape(x.shape)
        self._cache = x
        y = gemm.matmul_for(x)(x, self.params["weight"])  # (N, out_features)
        y += self.params["bias"]  # in place: no second (N, out_features) array
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (N, out_features) -> dx (N, in_features); fills grads."""
        x = self._cached()
        self._check_dy(dy, (x.shape[0], self.out_features))
        matmul = gemm.matmul_for(x)
        self.grads["weight"] = matmul(x.T, dy)  # (in_features, out_features)
        self.grads["bias"] = dy.sum(axis=0)  # (out_features,)
        if not need_input_grad:
            return None
        return input_gradient(x, self.params["weight"], dy, matmul)


def input_gradient(x, weight, dy, matmul=operator.matmul):
    """dx = dy @ weight.T (N, in_features), in x's memory layout.

    When x is a view of (in_features, N) memory (Flatten of batch-innermost feature maps),
    dx comes back in that layout, so the layers below need no transposing copy.
    ``matmul``: ``@`` or gpucnn.backends.kernels.gemm.matmul (both give C-contiguous products).
    """
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        return matmul(weight, dy.T).T  # (in_features, N) product -> (N, in_features) view
    return matmul(dy, weight.T)  # (N, in_features)
