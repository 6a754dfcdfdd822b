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

While gpucnn.backends.cuda_graphs captures a training step into a CUDA graph (:func:`capture_safe`), the
same calls go through ctypes to the libcublas CuPy loaded (:class:`CapturableCublas`): CuPy's
binding refuses every cuBLAS call during stream capture, cuBLAS itself does not. Inside that
block a float32 operand (or ``out``) neither C- nor F-contiguous is copied into one that is,
and a product cuBLAS's sgemm cannot take (another dtype or dimension, an empty or too large
one) raises ValueError while a stream captures: ``xp.matmul`` is never called then.

Anything else (NumPy arrays, the tests' stand-in outside :func:`capture_safe`, other dtypes or
dimensions, operands or ``out`` neither C- nor F-contiguous, an empty or too large dimension)
goes to ``xp.matmul(a, b, out=out)``. ``out`` must not overlap ``a`` or ``b``.
"""
from __future__ import annotations

import ctypes
import operator
import weakref
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
# cuBLAS handle (one per device) -> its CapturableCublas, with the workspace it binds; kept while
# anything holds it: a recorded graph does (gpucnn.backends.cuda_graphs.StepGraph), its products use that memory
_CAPTURABLE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_CAPTURING: dict = {}  # array module -> (CapturableCublas, get_handle) inside capture_safe()


def _blas(xp):
    """(cublas, get_handle) for CuPy arrays, None otherwise (a seam the tests replace):
    CuPy's binding, or the ctypes one inside :func:`capture_safe`."""
    return _CAPTURING.get(xp) or cublas_binding(xp)


class CapturableCublas:
    """The calls :func:`matmul` makes of CuPy's binding (``setPointerMode``, ``sgemm`` and their
    constants), through ctypes on the libcublas CuPy loaded, which stream capture allows. Each
    sgemm first binds the handle to CuPy's current stream and then to ``workspace`` (in that
    order: cublasSetStream resets the handle's workspace). ``getStream``/``setStream`` let
    :func:`capture_safe` give the handle back as it found it."""

    CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_POINTER_MODE_HOST = 0, 1, 0  # cublas_api.h

    def __init__(self, library, stream_pointer, workspace):
        self._library, self._stream_pointer, self.workspace = library, stream_pointer, workspace

    def _check(self, name, status):
        if status != 0:
            raise RuntimeError(f"{name} returned cuBLAS status {status} (0 is success)")

    def getStream(self, handle) -> int:
        stream = ctypes.c_void_p()
        self._check("cublasGetStream_v2", self._library.cublasGetStream_v2(handle, ctypes.byref(stream)))
        return stream.value or 0

    def setStream(self, handle, stream) -> None:
        """Binds ``handle`` to ``stream``; cuBLAS also resets its workspace to the default."""
        self._check("cublasSetStream_v2", self._library.cublasSetStream_v2(handle, stream))

    def setPointerMode(self, handle, mode):
        self._check("cublasSetPointerMode_v2", self._library.cublasSetPointerMode_v2(handle, mode))

    def sgemm(self, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        library = self._library
        self.setStream(handle, self._stream_pointer())
        self._check("cublasSetWorkspace_v2", library.cublasSetWorkspace_v2(
            handle, self.workspace.data.ptr, self.workspace.nbytes))
        self._check("cublasSgemm_v2", library.cublasSgemm_v2(handle, transa, transb, m, n, k, alpha, a, lda,
                                                             b, ldb, beta, c, ldc))


def capturable_cublas(xp):
    """``(CapturableCublas, get_handle)`` for ``xp``'s arrays, None where there is no capture
    binding (NumPy). One per cuBLAS handle, with its WORKSPACE_BYTES workspace, made the first
    time (from the current allocator: call it before a graph's own pool is in use) and kept
    while anything holds it. Raises when libcublas, one of its functions or the workspace's
    memory cannot be had: gpucnn.backends.cuda_graphs then trains without graphs, saying why."""
    binding = cublas_capture_binding(xp)
    if binding is None:
        return None
    library, get_handle, stream_pointer = binding
    handle = get_handle()  # the current device's: one workspace per device
    blas = _CAPTURABLE.get(handle)
    if blas is None:
        workspace = xp.empty(WORKSPACE_BYTES, dtype=np.uint8)  # (bytes,)
        blas = _CAPTURABLE[handle] = CapturableCublas(library, stream_pointer, workspace)
    return blas, get_handle


@contextmanager
def capture_safe(xp, blas=None):
    """Inside the block, :func:`matmul` on ``xp``'s arrays calls cuBLAS through ctypes
    (``blas``, else :func:`capturable_cublas`'s), so a stream capture may record it. On leaving
    it the handle is back on the stream it had (and on cuBLAS's default workspace, which is
    CuPy's: its binding never sets one). NumPy: nothing changes."""
    blas = capturable_cublas(xp) if blas is None else blas
    if blas is None:
        yield
        return
    cublas, get_handle = blas
    handle = get_handle()
    caller_stream = cublas.getStream(handle)
    _CAPTURING[xp] = blas
    try:
        yield
    finally:
        _CAPTURING.pop(xp, None)
        cublas.setStream(handle, caller_stream)


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
    cuBLAS sgemm on CuPy arrays; ``xp.matmul`` otherwise (never during a stream capture)."""
    xp = array_module(a, b)
    blas = _blas(xp)
    if accumulate and out is None:
        raise ValueError("matmul(accumulate=True) adds the product to out=; pass the array to add to")
    capturable = blas is not None and isinstance(blas[0], CapturableCublas)
    if (blas is None or a.ndim != 2 or b.ndim != 2 or a.dtype != np.float32 or b.dtype != np.float32
            or (out is not None and (out.dtype != np.float32 or out.shape != (a.shape[0], b.shape[1])))):
        return _generic(xp, a, b, out, accumulate, capturable)
    (m, k), (k_b, n) = a.shape, b.shape
    if k != k_b:
        raise ValueError(f"matmul expected a (m, k) and b (k, n) with the same k, got a {a.shape} and "
                         f"b {b.shape}; transpose one of them")
    if min(m, n, k) == 0 or max(m, n, k) > _INT_MAX:
        return _generic(xp, a, b, out, accumulate, capturable)
    layout_out = "C" if out is None else _layout(out)
    if capturable:  # CuPy's matmul cannot be recorded: copies of what sgemm cannot read
        a = a if _layout(a) else xp.ascontiguousarray(a)  # (m, k)
        b = b if _layout(b) else xp.ascontiguousarray(b)  # (k, n)
        if layout_out is None:
            product = _sgemm(blas, a, b, xp.empty((m, n), dtype=np.float32), "C", accumulate=False)  # (m, n)
            if accumulate:
                out += product
            else:
                out[...] = product
            return out
    layout_a, layout_b = _layout(a), _layout(b)
    if None in (layout_a, layout_b, layout_out):
        return _generic(xp, a, b, out, accumulate, capturable)
    if out is None:
        out = xp.empty((m, n), dtype=np.float32)  # (m, n)
    return _sgemm(blas, a, b, out, layout_out, accumulate)


def _generic(xp, a, b, out, accumulate, capturable):
    """``xp.matmul`` (CuPy's binding), or a clear error while a stream captures inside
    :func:`capture_safe`, where that binding would raise."""
    if capturable and xp.cuda.get_current_stream().is_capturing():
        raise ValueError(f"gemm.matmul cannot record a product of a {a.dtype} {tuple(a.shape)} and a {b.dtype} "
                         f"{tuple(b.shape)} into a CUDA graph: cuBLAS's sgemm (through ctypes) takes 2-D "
                         "float32 operands with sizes 1 to 2**31 - 1, and CuPy's matmul refuses stream "
                         "capture; keep such products out of the step, or train without CUDA graphs")
    if accumulate:
        out += xp.matmul(a, b)  # (m, n)
        return out
    return xp.matmul(a, b, out=out)


def _sgemm(blas, a, b, out, layout_out, accumulate):
    """out (m, n) (=, or += with ``accumulate``) a (m, k) @ b (k, n): one cublasSgemm, each
    operand read in its own layout ('C' or 'F'), out written in ``layout_out``."""
    (m, k), n = a.shape, b.shape[1]
    layout_a, layout_b = _layout(a), _layout(b)
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
