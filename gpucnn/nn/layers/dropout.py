"""Dropout: zero a random fraction p of the activations while training (docs/math.md, "Dropout")."""
from __future__ import annotations

import numpy as np

from ...backends.backend import array_module
from ...random import device_generator
from .base import Layer, check_rng


class Dropout(Layer):
    """Inverted dropout, any shape -> same shape, as torch.nn.Dropout.

    Training mode: each value is kept with probability 1 - p and scaled by 1 / (1 - p),
    else zeroed; backward sends dy through the same mask. Evaluation mode (and p == 0):
    the identity.

    The mask is drawn on the device (no upload per batch) by a generator seeded with one
    draw from the host generator ``rng``: an explicit ``numpy.random.Generator`` (kept in
    ``self.rng``, assignable), or, for None, gpucnn's default generator looked up at each
    forward, so ``gpucnn.manual_seed`` makes the masks reproducible, and restoring the
    host generator's state reproduces the masks that follow.
    """

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
                or not 0 <= p < 1:
            raise ValueError(
                f"Dropout expected p, the probability of zeroing a value, in [0, 1), got {p!r}"
            )
        self.p = float(p)
        self.rng = rng

    @property
    def rng(self):
        """The host generator that seeds the masks; None means gpucnn's default generator."""
        return self._rng

    @rng.setter
    def rng(self, rng):
        self._rng = None if rng is None else check_rng("Dropout", rng)

    def get_config(self):
        return {"p": self.p}

    def describe(self) -> str:
        return f"Dropout {self.p:g}"

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x):
        """x (...) -> y (...): x * mask / (1 - p) in training mode, x otherwise."""
        self._check_floating(x)
        if not self.training or self.p == 0:
            self._cache = (x.shape, None)
            return x
        xp = array_module(x)
        keep = self._uniform(device_generator(xp, self.rng), x)  # (...) in [0, 1), x's layout
        # keep -> 0 or 1 (in place), then -> 0 or 1 / (1 - p): the mask backward uses too
        xp.greater_equal(keep, x.dtype.type(self.p), out=keep)
        keep *= x.dtype.type(1 / (1 - self.p))
        self._cache = (x.shape, keep)
        return xp.multiply(x, keep, out=xp.empty_like(x))

    @staticmethod
    def _uniform(gen, x):
        """Uniform [0, 1) values shaped like x, laid out in memory like x (a Conv2D output is
        an NCHW view of (C, H, W, N) memory), so that multiplying them walks both in step."""
        order = sorted(range(x.ndim), key=lambda axis: -abs(x.strides[axis]))  # outermost first
        inverse = [order.index(axis) for axis in range(x.ndim)]
        u = gen.random(tuple(x.shape[axis] for axis in order), dtype=x.dtype)  # memory order
        return u.transpose(*inverse)  # (...) as x

    def backward(self, dy, need_input_grad=True):
        """dy (...) -> dx (...): dy through the forward mask (dy itself in evaluation mode)."""
        shape, mask = self._cached()
        self._check_dy(dy, shape)
        if not need_input_grad:
            return None
        if mask is None:
            return dy
        xp = array_module(dy)
        return xp.multiply(dy, mask, out=xp.empty_like(mask))
