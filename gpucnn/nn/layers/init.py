"""Initial weights, drawn on the host so every backend starts from the same numbers.

The math: docs/math.md, "Initial weights".
"""
from __future__ import annotations

import math


def init_weight(owner, init, rng, shape, fan_in, fan_out, dtype):
    """He normal (std sqrt(2 / fan_in), for ReLU) or Glorot/Xavier uniform
    (limit sqrt(6 / (fan_in + fan_out))), drawn on the host in float64
    and cast, so float32 and float64 layers from the same seed agree."""
    if init == "he":
        w = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=shape)
    else:
        raise ValueError(f"{owner} got unknown init {init!r}; expected 'he' or 'glorot'")
    return w.astype(dtype)
