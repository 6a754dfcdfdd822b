"""What the device would have done: kernel launches, bytes moved and FLOPs.

Every stand-in call that would be a CUDA kernel on CuPy is added here: ufuncs and
operators, reductions, matrix multiplies, copies (contiguous copies, gathers,
slice assignments, padding) and creation with a fill (zeros, full, arange,
``fill``). Views, reshapes of contiguous data and ``empty``/``empty_like`` are free.
Bytes: every device array read (its own size, before broadcasting) plus every
array written. FLOPs: 2*m*n*k per matrix multiply, one per output element of an
elementwise op, one per input element of a reduction, none for copies and fills.
"""
from __future__ import annotations

import math
from collections import Counter

from .cupy_api import caller_location

REDUCTIONS = frozenset({"sum", "prod", "max", "min", "amax", "amin", "argmax", "argmin", "mean",
                        "any", "all", "var", "std", "count_nonzero", "nansum", "nanmax", "nanmin"})
GEMMS = frozenset({"matmul", "dot", "tensordot", "inner", "vdot", "einsum"})
FILLS = frozenset({"zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange",
                   "eye", "identity", "linspace", "tri"})
ALLOCATIONS = frozenset({"empty", "empty_like"})
ELEMENTWISE_FUNCTIONS = frozenset({"where", "clip"})
SYNCING = frozenset({"nonzero", "argwhere", "flatnonzero", "unique"})  # output size depends on data
# functions whose result layout CuPy chooses exactly as NumPy does (order='K' / 'C' args,
# pad's C-or-F rule): the stand-in keeps NumPy's; every other new array is C-contiguous.
ORDER_AWARE = frozenset({"copy", "astype", "empty_like", "zeros_like", "ones_like", "full_like",
                         "pad", "reshape", "ravel", "flatten", "asarray", "array", "ascontiguousarray",
                         "asfortranarray"})


class Work:
    """Running totals since :meth:`reset`; ``by_site`` (launches per gpucnn line) only
    while ``track_sites`` is True (finding the calling line costs a stack walk)."""

    def __init__(self):
        self.track_sites = False
        self.reset()

    def reset(self):
        self.launches = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.flops = 0
        self.by_kind: Counter = Counter()
        self.by_site: Counter = Counter()

    def add(self, kind: str, read: int = 0, written: int = 0, flops: int = 0, launches: int = 1):
        self.launches += launches
        self.bytes_read += int(read)
        self.bytes_written += int(written)
        self.flops += int(flops)
        self.by_kind[kind] += launches
        if self.track_sites and launches:
            self.by_site[caller_location()] += launches

    def totals(self) -> dict:
        return {"launches": self.launches, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "flops": self.flops}


def gemm_flops(a_shape, b_shape, out_size: int, name: str) -> int:
    """2*m*n*k: k is the contracted length (a's last axis for matmul/dot)."""
    if name in ("matmul", "dot", "inner") and len(a_shape):
        return 2 * out_size * a_shape[-1]
    a_size, b_size = math.prod(a_shape), math.prod(b_shape)
    return int(2 * out_size * math.sqrt(a_size * b_size / max(out_size, 1)))


def pad_launches(pad_width, ndim: int) -> int:
    """CuPy's constant pad: one copy of the input, then one fill per padded side."""
    import numpy as np
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (ndim, 2))
    return 1 + int(np.count_nonzero(widths))
