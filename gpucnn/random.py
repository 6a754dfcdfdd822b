"""gpucnn's default random generator, as torch has one: layers that draw weights
(or dropout masks) take ``rng=None`` to mean this generator.

    gpucnn.manual_seed(0)        # reseed it: models built after this are reproducible
    gpucnn.default_generator()   # the numpy.random.Generator itself

An explicit ``numpy.random.Generator`` passed as ``rng`` always wins. NumPy's
legacy global RNG (``np.random.seed``) is never used.
"""
from __future__ import annotations

import numpy as np

__all__ = ["default_generator", "device_generator", "manual_seed"]

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed gpucnn's default generator; returns it."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed expected a non-negative int, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def default_generator() -> np.random.Generator:
    """The generator used wherever ``rng=None``."""
    return _generator


def device_generator(xp, rng: np.random.Generator | None = None):
    """A generator of the array module ``xp`` (numpy or cupy), seeded by one draw from the
    host generator ``rng`` (gpucnn's default generator when None).

    Random masks and offsets are drawn on the device (no host->device upload per batch)
    while the host generator alone decides them: a run that restores its host generator's
    state reproduces every later mask. Make one per batch.
    """
    host = default_generator() if rng is None else rng
    return xp.random.default_rng(int(host.integers(2**63 - 1)))
