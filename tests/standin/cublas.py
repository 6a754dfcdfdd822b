"""The stand-in's cuBLAS: the handle CuPy and gpucnn share, and the libcublas functions
gpucnn.backends.kernels.gemm calls through ctypes while a CUDA graph records (CapturableCublas).

What CuPy does with the handle (cupy_backends/cuda/libs/cublas.pyx, v14.2.0): every call of
its binding, ``sgemm`` included, first runs ``_setStream(handle)``, which calls ``setStream``
with CuPy's current stream, and ``setStream`` raises NotImplementedError("calling cuBLAS API
during stream capture is currently unsupported") when that stream captures. The binding has
no ``setWorkspace``, and ``cupy/cuda/device.pyx`` makes the handle with ``cublas.create`` and
nothing else: CuPy's handle always runs on cuBLAS's default workspace. The stand-in's
``xp.matmul`` does what that binding does (:meth:`StandInCublas.cupy_call`).

What cuBLAS does (cuBLAS guide): ``cublasSetStream`` binds a handle to a stream and resets its
workspace to the default pool; ``cublasSetWorkspace`` gives it a user workspace; sgemm checks
its leading dimensions (CUBLAS_STATUS_INVALID_VALUE, 7) and reads alpha and beta from host
memory in pointer mode host. Functions return a status (0 success), as through ctypes.

Checked here besides, as a GPU would need it: every matrix sgemm reads or writes (pointer,
rows, columns, leading dimension) lies in one live float32 buffer of this device, the
workspace in one live buffer, and the handle runs on the current stream (else the product
would run on another). The product is computed as NumPy computes ``xp.matmul`` on the same
operands (so a graphed run equals an eager one bit for bit), counts one "gemm" launch and is
recorded while a stream captures (tests/standin/graphs.py).
"""
from __future__ import annotations

import ctypes
import itertools
from functools import partial

import numpy as np

from .cupy_api import NotModeledError
from .graphs import CUPY_CUBLAS

OP_N, OP_T = 0, 1  # cublas_api.h
INVALID_VALUE = 7  # CUBLAS_STATUS_INVALID_VALUE
_HANDLES = itertools.count(0x5000)


class StandInCublas:
    """One device's cuBLAS handle (``handle``, an int as CuPy's) with its ``stream`` (a
    stream's ``ptr``), ``workspace`` ((ptr, bytes) of a user workspace, None: cuBLAS's default)
    and ``pointer_mode``, and the libcublas functions gpucnn calls through ctypes."""

    def __init__(self, device):
        self.device = device
        self.handle = next(_HANDLES)
        self.stream, self.workspace, self.pointer_mode = 0, None, 0  # cublasCreate's defaults

    def get_handle(self) -> int:
        """``cupy.cuda.device.get_cublas_handle()``."""
        return self.handle

    def cupy_call(self, call: str) -> None:
        """What CuPy's binding does before each cuBLAS call: refuse during a capture, else bind
        the handle to CuPy's current stream (which resets the workspace to cuBLAS's default)."""
        streams = self.device.streams
        streams.refuse(call, CUPY_CUBLAS)
        self.stream, self.workspace = streams.current().ptr, None

    # -- libcublas, as ctypes calls it: ints and addresses in, a status out ---------------------
    def _check_handle(self, name, handle):
        if handle != self.handle:
            raise self.device.conformance(name, f"{name}: handle {handle!r} is not this device's cuBLAS "
                                          f"handle ({self.handle:#x}, cupy.cuda.device.get_cublas_handle())")

    def cublasGetStream_v2(self, handle, stream_out) -> int:  # noqa: N802 (cuBLAS's names)
        self._check_handle("cublasGetStream_v2", handle)
        stream_out._obj.value = self.stream or None  # a ctypes.byref(c_void_p()); NULL: the null stream
        return 0

    def cublasSetStream_v2(self, handle, stream) -> int:  # noqa: N802
        self._check_handle("cublasSetStream_v2", handle)
        self.stream, self.workspace = int(stream or 0), None  # "resets the workspace" (cuBLAS guide)
        return 0

    def cublasSetPointerMode_v2(self, handle, mode) -> int:  # noqa: N802
        self._check_handle("cublasSetPointerMode_v2", handle)
        if mode not in (0, 1):
            return INVALID_VALUE
        self.pointer_mode = mode
        return 0

    def cublasSetWorkspace_v2(self, handle, ptr, nbytes) -> int:  # noqa: N802
        self._check_handle("cublasSetWorkspace_v2", handle)
        root = self._buffer("cublasSetWorkspace_v2", "the workspace", ptr, nbytes, dtype=None)
        root.flags.writeable = False  # only cuBLAS writes it (not modelled): a capture need not save it
        self.workspace = (ptr, nbytes)
        return 0

    def cublasSgemm_v2(self, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb,  # noqa: N802
                       beta, C, ldc) -> int:
        """C (m, n) = alpha op(A) (m, k) @ op(B) (k, n) + beta C, column-major."""
        name = "cublasSgemm_v2"
        self._check_handle(name, handle)
        if transa not in (OP_N, OP_T) or transb not in (OP_N, OP_T) or min(m, n, k) < 0:
            return INVALID_VALUE
        a_rows, a_cols = (m, k) if transa == OP_N else (k, m)
        b_rows, b_cols = (k, n) if transb == OP_N else (n, k)
        if lda < max(1, a_rows) or ldb < max(1, b_rows) or ldc < max(1, m):
            return INVALID_VALUE
        if self.pointer_mode != 0:
            raise NotModeledError("the stand-in models cuBLAS's pointer mode host only")
        current = self.device.streams.current().ptr
        if self.stream != current:
            raise self.device.conformance(name, f"{name}: the handle runs on stream {self.stream:#x}, not on the "
                                          f"current stream {current:#x}: the product would run there; bind it "
                                          "with cublasSetStream_v2 first")
        scale = tuple(ctypes.c_float.from_address(p).value for p in (alpha, beta))
        if scale[0] != 1.0 or scale[1] not in (0.0, 1.0):
            raise NotModeledError(f"the stand-in models sgemm with alpha 1 and beta 0 or 1, got {scale}")
        if min(m, n, k) == 0:
            return 0  # nothing to do (cuBLAS returns at once)
        (op_a, root_a), (op_b, root_b), (out, root_c) = (
            self._matrix(name, "A", A, a_rows, a_cols, lda), self._matrix(name, "B", B, b_rows, b_cols, ldb),
            self._matrix(name, "C", C, m, n, ldc))
        op_a = op_a if transa == OP_N else op_a.T  # (m, k)
        op_b = op_b if transb == OP_N else op_b.T  # (k, n)
        # the roots ride along: a graph replays the product into memory that must still be there
        product = partial(_product, op_a, op_b, out, bool(scale[1]), (root_a, root_b, root_c))
        product()
        self.device.work.add("gemm", op_a.nbytes + op_b.nbytes, out.nbytes, 2 * m * n * k)
        self.device.streams.record(product)
        return 0

    # -- memory --------------------------------------------------------------------------------
    def _buffer(self, name, what, ptr, nbytes, dtype=np.float32) -> np.ndarray:
        """The live device buffer (a root NumPy array) holding [ptr, ptr + nbytes)."""
        found = self.device.streams.buffer_at(int(ptr), int(nbytes))
        if found is None:
            raise self.device.conformance(name, f"{name}: {what} ({nbytes} bytes at {int(ptr):#x}) is not "
                                          "inside one live device array of this device")
        root, offset = found
        if dtype is not None and (root.dtype != dtype or offset % root.itemsize):
            raise self.device.conformance(name, f"{name}: {what} lies in a {root.dtype} array; sgemm reads "
                                          "float32 (gemm.matmul passes 2-D float32 operands only)")
        return root

    def _matrix(self, name, what, ptr, rows, cols, ld) -> tuple:
        """(the column-major (rows, cols) float32 matrix at ``ptr`` with leading dimension ``ld``,
        a view of the stand-in's memory; the buffer it lies in)."""
        extent = (cols - 1) * ld + rows  # elements from the first to the last
        root = self._buffer(name, f"matrix {what} ({rows} x {cols}, leading dimension {ld})", ptr, 4 * extent)
        memory = np.ctypeslib.as_array((ctypes.c_float * extent).from_address(int(ptr)))  # (extent,)
        return np.lib.stride_tricks.as_strided(memory, (rows, cols), (4, 4 * ld)), root


def _product(op_a, op_b, out, accumulate, roots=()):
    """out = op_a @ op_b (or +=), as NumPy's matmul computes it: written into ``out``'s layout
    through NumPy's own transpose rule, so gemm's row-major call (C^T = B^T A^T) gives the
    numbers of ``xp.matmul(a, b)`` bit for bit."""
    if accumulate:
        out += np.matmul(op_a, op_b, out=np.empty_like(out))
    else:
        np.matmul(op_a, op_b, out=out)


__all__ = ["INVALID_VALUE", "OP_N", "OP_T", "StandInCublas"]
