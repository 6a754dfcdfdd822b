"""Matrix multiplies through cuBLAS directly (group "gemm"): ``matmul(a, b, out=None)``.

:func:`matmul` does only what a 2-D float32 product of C- or F-contiguous operands needs: one
``cublasSgemm`` call on CuPy's current stream (CuPy's binding sets the handle's stream before
each call), pointer mode host, alpha = 1 and beta = 0 read from host float32 memory, the handle
CuPy itself uses. cuBLAS's default math mode is left alone, so float32 products stay full
float32 (no TF32), as CuPy's are unless CUPY_TF32=1.

Measured on an H200 (2026-12, CuPy 14.2, host time per call, 300 calls): 256^3 cupy.matmul
22.3 us, this 24.2 us; 64x400x120 23.4 / 24.7 us; 64x84x10 19.9 / 22.0 us. CuPy's Python
checks are not where the time goes (cuBLAS's own launch is), so one call gains nothing. In a
network it does: the default training run (scripts/train.py --device gpu, simple, batch 64) took
0.7 s per epoch with every group against 1.1 s with every group but this one (the same H200,
2026-12-04; why is not established: perhaps CuPy's matmul copying a transposed operand).

Row-major to column-major: a C-contiguous (r, c) matrix is, to cuBLAS (column-major), its
transpose with leading dimension c; an F-contiguous one is itself with leading dimension r. So
a C-contiguous C = A @ B is computed as the column-major C^T = B^T @ A^T (operands swapped), an
F-contiguous C directly as the column-major A @ B; each operand is passed with op N or T and its
leading dimension according to its own layout, never copied.

While gpucnn.graphs captures a training step into a CUDA graph (:func:`capture_safe`), the
same calls go through ctypes to the libcublas CuPy loaded (:class:`CapturableCublas`): CuPy's
binding refuses every cuBLAS call during stream capture, cuBLAS itself does not.

Anything else (NumPy arrays, the tests' stand-in, other dtypes or dimensions, operands or ``out``
neither C- nor F-contiguous, an empty or too large dimension) goes to ``xp.matmul(a, b, out=out)``.
``out`` must not overlap ``a`` or ``b``.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager

import numpy as np

from ..backend import array_module, cublas_binding, cublas_capture_binding
from ..kernel_groups import active

_ONE = np.ones(1, dtype=np.float32)  # alpha, read by cuBLAS from host memory at the call
_ZERO = np.zeros(1, dtype=np.float32)  # beta: C is written (accumulate=True passes _ONE: added to)
_ALPHA, _BETA = _ONE.ctypes.data, _ZERO.ctypes.data  # their addresses (the arrays live on)
_INT_MAX = 2**31 - 1  # cuBLAS's m, n, k, ld are C ints


# cuBLAS's recommended workspace for Hopper (cuBLAS guide, cublasSetWorkspace): captured GEMMs
# use it instead of a workspace cuBLAS would allocate during the capture
WORKSPACE_BYTES = 32 * 2**20
_WORKSPACES: dict = {}  # cuBLAS handle (one per device) -> uint8 device array, kept for the process's life
_CAPTURING: dict = {}  # array module -> (CapturableCublas, get_handle) inside capture_safe()


def _blas(xp):
    """(cublas, get_handle) for CuPy arrays, None otherwise (a seam the tests replace):
    CuPy's binding, or the ctypes one inside :func:`capture_safe`."""
    return _CAPTURING.get(xp) or cublas_binding(xp)


class CapturableCublas:
    """The calls :func:`matmul` makes of CuPy's binding (``setPointerMode``, ``sgemm`` and their
    constants), through ctypes on the libcublas CuPy loaded, which stream capture allows. Each
    sgemm first binds the handle to CuPy's current stream and then to ``workspace`` (in that
    order: cublasSetStream resets the handle's workspace)."""

    CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_POINTER_MODE_HOST = 0, 1, 0  # cublas_api.h

    def __init__(self, library, stream_pointer, workspace):
        self._library, self._stream_pointer, self._workspace = library, stream_pointer, workspace

    def _check(self, name, status):
        if status != 0:
            raise RuntimeError(f"{name} returned cuBLAS status {status} (0 is success)")

    def setPointerMode(self, handle, mode):
        self._check("cublasSetPointerMode_v2", self._library.cublasSetPointerMode_v2(handle, mode))

    def sgemm(self, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        library = self._library
        self._check("cublasSetStream_v2", library.cublasSetStream_v2(handle, self._stream_pointer()))
        self._check("cublasSetWorkspace_v2", library.cublasSetWorkspace_v2(
            handle, self._workspace.data.ptr, self._workspace.nbytes))
        self._check("cublasSgemm_v2", library.cublasSgemm_v2(handle, transa, transb, m, n, k, alpha, a, lda,
                                                             b, ldb, beta, c, ldc))


@contextmanager
def capture_safe(xp):
    """Inside the block, :func:`matmul` on ``xp``'s arrays calls cuBLAS through ctypes
    (:class:`CapturableCublas`), so a stream capture may record it. Enter it before any
    custom allocator: the workspace it makes the first time must outlive every graph.
    NumPy and the tests' stand-in: nothing changes."""
    binding = cublas_capture_binding(xp)
    if binding is None:
        yield
        return
    library, get_handle, stream_pointer = binding
    handle = get_handle()  # the current device's: one workspace per device
    if handle not in _WORKSPACES:
        _WORKSPACES[handle] = xp.empty(WORKSPACE_BYTES, dtype=np.uint8)  # (bytes,)
    _CAPTURING[xp] = (CapturableCublas(library, stream_pointer, _WORKSPACES[handle]), get_handle)
    try:
        yield
    finally:
        _CAPTURING.pop(xp, None)


def matmul_for(x):
    """The matrix multiply a layer uses for arrays like x: :func:`matmul` (cuBLAS directly)
    when the "gemm" kernel group is active for x's device, else the ``@`` operator (NumPy's
    BLAS, CuPy's matmul). Dense and Conv2D take every product from it."""
    xp = array_module(x)
    return matmul if xp is not np and active("gemm", xp) else operator.matmul


def _layout(x):
    """'C' or 'F' (C-contiguous wins for arrays that are both), None for any other layout."""
    flags = x.flags
    return "C" if flags.c_contiguous else "F" if flags.f_contiguous else None


def matmul(a, b, out=None, accumulate=False):
    """a (m, k) @ b (k, n) -> (m, n) float32, C-contiguous (or written into ``out``, (m, n)
    float32, C- or F-contiguous; with ``accumulate``, added to it: cuBLAS's beta = 1). One
    cuBLAS sgemm on CuPy arrays; ``xp.matmul`` otherwise."""
    xp = array_module(a, b)
    blas = _blas(xp)
    if accumulate and out is None:
        raise ValueError("matmul(accumulate=True) adds the product to out=; pass the array to add to")
    if (blas is None or a.ndim != 2 or b.ndim != 2 or a.dtype != np.float32 or b.dtype != np.float32
            or (out is not None and (out.dtype != np.float32 or out.shape != (a.shape[0], b.shape[1])))):
        if accumulate:
            out += xp.matmul(a, b)  # (m, n)
            return out
        return xp.matmul(a, b, out=out)
    (m, k), (k_b, n) = a.shape, b.shape
    if k != k_b:
        raise ValueError(f"matmul expected a (m, k) and b (k, n) with the same k, got a {a.shape} and "
                         f"b {b.shape}; transpose one of them")
    layout_a, layout_b = _layout(a), _layout(b)
    layout_out = "C" if out is None else _layout(out)
    if None in (layout_a, layout_b, layout_out) or min(m, n, k) == 0 or max(m, n, k) > _INT_MAX:
        if accumulate:
            out += xp.matmul(a, b)  # (m, n)
            return out
        return xp.matmul(a, b, out=out)
    if out is None:
        out = xp.empty((m, n), dtype=np.float32)  # (m, n)
    cublas, get_handle = blas
    handle = get_handle()
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    N, T = cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T
    beta = _ALPHA if accumulate else _BETA  # 1: C += A @ B; 0: C is written
    if layout_out == "C":  # column-major C^T (n, m) = B^T (n, k) @ A^T (k, m)
        op_b, ld_b = (N, n) if layout_b == "C" else (T, k)
        op_a, ld_a = (N, k) if layout_a == "C" else (T, m)
        cublas.sgemm(handle, op_b, op_a, n, m, k, _ALPHA, b.data.ptr, ld_b,
                     a.data.ptr, ld_a, beta, out.data.ptr, n)
    else:  # column-major C (m, n) = A (m, k) @ B (k, n)
        op_a, ld_a = (T, k) if layout_a == "C" else (N, m)
        op_b, ld_b = (T, n) if layout_b == "C" else (N, k)
        cublas.sgemm(handle, op_a, op_b, m, n, k, _ALPHA, a.data.ptr, ld_a,
                     b.data.ptr, ld_b, beta, out.data.ptr, m)
    return out
