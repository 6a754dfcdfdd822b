"""The stand-in's side of gpucnn's fused kernels (gpucnn/kernels): each launch is checked
against the kernel's CUDA signature, as the real launch would need it, then runs the
kernel's NumPy twin on the arrays' numbers and counts one launch.

Checked for every launch: the argument count; each pointer gets a device array of this
device, C-contiguous, of the pointer's element type; each scalar gets a NumPy scalar of
the parameter's exact type (CuPy passes a Python int as 64 bits and a float as a double,
which a kernel reading ``int`` or ``float`` would misread); grid and block are tuples of
positive ints, at most 1024 threads a block. Each failure is a CupyConformanceError
finding naming the kernel and the parameter. While a stream captures, the launch is also
recorded: a graph launch runs the twin again on the same arrays (tests/standin/graphs.py).
"""
from __future__ import annotations

from functools import partial

import numpy as np

from gpucnn.backends.kernels.runtime import signature, twin

from .array import StandInArray
from .cupy_api import CupyConformanceError

# C element / scalar types the kernels use -> NumPy dtype
C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
           "long long": np.int64, "unsigned long long": np.uint64, "unsigned char": np.uint8,
           "signed char": np.int8, "bool": np.bool_, "short": np.int16}


def _c_type(c_type: str) -> tuple[np.dtype, bool, bool]:
    """'const float*' -> (float32, is pointer, is const)."""
    pointer = c_type.endswith("*")
    const = c_type.startswith("const ")
    base = c_type.removeprefix("const ").rstrip("*").strip()
    if base not in C_TYPES:
        raise NotImplementedError(f"the stand-in does not model the kernel parameter type {c_type!r}")
    return np.dtype(C_TYPES[base]), pointer, const


def _check_dims(device, kernel, what, dims, limit=None):
    if not (isinstance(dims, tuple) and 1 <= len(dims) <= 3
            and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims)):
        raise device.conformance(f"launch {kernel}", f"{kernel}: {what} must be a tuple of 1-3 positive "
                                 f"ints, got {dims!r}")
    if limit is not None and int(np.prod(dims)) > limit:
        raise device.conformance(f"launch {kernel}", f"{kernel}: {what} {dims} has more than {limit} threads")


def run_kernel(device, kernel, grid, block, args, shared_mem=0):
    """The runner gpucnn.backends.kernels.register_runner takes for StandInDevice."""
    call = f"launch {kernel}"
    params = signature(kernel)
    if not isinstance(args, tuple) or len(args) != len(params):
        raise device.conformance(call, f"{kernel} takes {len(params)} arguments "
                                 f"({', '.join(n for _, n in params)}), got {len(args) if isinstance(args, tuple) else args!r}")
    _check_dims(device, kernel, "grid", grid)
    _check_dims(device, kernel, "block", block, limit=1024)
    if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
        raise device.conformance(call, f"{kernel}: shared_mem must be a non-negative int, got {shared_mem!r}")
    host_args, read, written = [], 0, 0
    for (c_type, name), value in zip(params, args):
        dtype, pointer, const = _c_type(c_type)
        if pointer:
            if not isinstance(value, StandInArray):
                raise device.conformance(call, f"{kernel}: parameter {name} ({c_type}) needs a device "
                                         f"array, got {type(value).__name__}")
            if value._dev is not device:
                raise device.discipline(call, f"{kernel}: parameter {name} is an array of another device")
            if value._a.dtype != dtype:
                raise device.conformance(call, f"{kernel}: parameter {name} ({c_type}) needs a {dtype} "
                                         f"array, got {value._a.dtype}")
            if not value._a.flags.c_contiguous:
                raise device.conformance(call, f"{kernel}: parameter {name} needs a C-contiguous array "
                                         f"(a kernel reads raw memory), got strides {value._a.strides}")
            if const:
                read += value._a.nbytes
            else:
                written += value._a.nbytes
            host_args.append(value._a)
        else:
            if type(value) is not dtype.type:
                raise device.conformance(call, f"{kernel}: parameter {name} ({c_type}) needs numpy."
                                         f"{dtype.type.__name__}, got {type(value).__name__} {value!r} "
                                         "(CuPy passes a Python int as 64 bits, a float as a double)")
            host_args.append(value)
    device.work.add(f"kernel {kernel}", read=read, written=written)
    twin(kernel)(*host_args)
    device.streams.record(partial(run_kernel, device, kernel, grid, block, args, shared_mem))


__all__ = ["C_TYPES", "CupyConformanceError", "run_kernel"]
