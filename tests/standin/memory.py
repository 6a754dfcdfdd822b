"""The stand-in's device memory: the bytes its arrays hold, and their high-water mark.

Every buffer under a StandInArray (its root NumPy array, views counted once) counts from the
moment the first device array over it is made until NumPy frees it: what CuPy's arrays hold
in use of their memory pool (``torch.cuda.max_memory_allocated`` counts the same for PyTorch).
NumPy temporaries inside kernel twins are host memory and do not count; neither does a pool's
caching or rounding (a real pool holds more: scripts/benchmark.py measures that on a GPU).
Compare counts with counts, not with a GPU: the stand-in makes arrays CuPy would not (a
training step of simple at batch 1024 counted 571 MiB at its high-water mark on 2026-12-04,
where the H200's pool held 228 MiB), so the count shows what a change saves, not a footprint.
"""
from __future__ import annotations

import weakref

import numpy as np


class DeviceMemory:
    """``live`` bytes now, ``peak`` since :meth:`reset_peak`."""

    def __init__(self):
        self.live = self.peak = 0

    def allocated(self, root: np.ndarray) -> None:
        """A new buffer: count it until NumPy frees it."""
        self.live += root.nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(root, self._freed, root.nbytes)

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.live
