"""Host memory: keep the C allocator from handing a training step's buffers back to the OS.

A training step allocates and frees the same large temporaries every step (im2col
columns, activations, their gradients: 0.1-30 MiB each). glibc's malloc serves blocks
above its mmap threshold (128 KiB at start, raised on its own towards 32 MiB as large
blocks are freed) with fresh mmap()s and returns them with munmap(), and it trims the
top of its heap when more than its trim threshold lies free there. Either way the next
step's buffer is new memory: the kernel maps it page by page, zeroed, on first write.
Measured on this project's 2-core VM (``scripts/benchmark.py --profile`` counts the
faults per part): about 500 page faults per lenet step at batch 128 and 1,600 per
cifar-small step, 5-15% of the step's CPU time.

:func:`tune_host_allocator` fixes both thresholds once, when the CPU backend is first
made: blocks up to 32 MiB (glibc's own ceiling for its threshold) come from the heap,
and up to 256 MiB of freed heap stays mapped for the next step. The peak resident size
does not grow (the same buffers are reused); a process that trains and then goes on
with other work keeps at most 256 MiB more resident than it would otherwise.

It is a setting of the whole process, so it can be declined: set the environment
variable ``GPUCNN_TUNE_MALLOC=0`` before gpucnn makes its first CPU backend. Other C
libraries (musl, macOS, Windows) are left alone.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc accepts at most 32 MiB on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 << 20

_tuned: bool | None = None  # None: not tried yet; then whether glibc took both settings


def tune_host_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (once per process); True when they are set.

    False on other C libraries, when ``GPUCNN_TUNE_MALLOC=0``, or when glibc refuses.
    """
    global _tuned
    if _tuned is None:
        _tuned = _set_thresholds()
    return _tuned


def _set_thresholds() -> bool:
    if os.environ.get("GPUCNN_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it: musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. Setting either threshold stops glibc moving both on
    # its own, so both are set.
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_set = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mmap_set and trim_set
