"""gpucnn.kernels.gemm inside a CUDA-graph capture (gpucnn.graphs): CuPy's cuBLAS binding
refuses every call while a stream captures, so :func:`gemm.capture_safe` routes matmul's
sgemm through ctypes (:class:`gemm.CapturableCublas`) on the libcublas CuPy loaded.

Devices: NumPy and the CuPy stand-in (a fake ctypes library: the calls, their order and the
status checks), a real GPU when present (a product recorded into a graph and replayed).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import _CUPY, _NEEDS_GPU
from gpucnn.backend import cublas_capture_binding, mapped_cublas_path
from gpucnn.kernels import gemm
from standin import standin_backend


def test_the_mapped_libcublas_is_found_not_cublaslt():
    lines = ["7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libcublasLt.so.13.0.1\n",
             "7f02-7f03 r-xp 00000000 08:01 2 /opt/nvidia/cublas/lib/libcublas.so.13\n",
             "7f04-7f05 rw-p 00000000 00:00 0\n",
             "7f06-7f07 r-xp 00000000 08:01 3 /lib/x86_64-linux-gnu/libc.so.6\n"]
    assert mapped_cublas_path(lines) == "/opt/nvidia/cublas/lib/libcublas.so.13"
    assert mapped_cublas_path(lines[:1] + lines[2:]) is None


def test_numpy_and_the_standin_have_no_capture_binding():
    assert cublas_capture_binding(np) is None
    assert cublas_capture_binding(standin_backend().xp) is None


class FakeLibrary:
    """The four libcublas functions CapturableCublas calls, recording their arguments."""

    def __init__(self, failing=None):
        self.calls, self.failing = [], failing

    def __getattr__(self, name):
        def function(*args):
            self.calls.append((name, args))
            return 13 if name == self.failing else 0  # 13: CUBLAS_STATUS_EXECUTION_FAILED
        return function


class FakeWorkspace:
    nbytes = gemm.WORKSPACE_BYTES

    class data:
        ptr = 4096


def test_each_sgemm_binds_the_stream_then_the_workspace():
    """cublasSetStream resets a handle's workspace, so it comes first, then gpucnn's workspace,
    then the product; the arguments pass through unchanged."""
    library = FakeLibrary()
    blas = gemm.CapturableCublas(library, lambda: 777, FakeWorkspace())
    blas.setPointerMode(5, blas.CUBLAS_POINTER_MODE_HOST)
    args = (blas.CUBLAS_OP_N, blas.CUBLAS_OP_T, 2, 3, 4, 100, 200, 2, 300, 4, 400, 500, 2)
    blas.sgemm(5, *args)
    assert library.calls == [("cublasSetPointerMode_v2", (5, 0)), ("cublasSetStream_v2", (5, 777)),
                             ("cublasSetWorkspace_v2", (5, 4096, gemm.WORKSPACE_BYTES)),
                             ("cublasSgemm_v2", (5, *args))]


def test_a_failing_call_raises_with_its_name_and_status():
    blas = gemm.CapturableCublas(FakeLibrary(failing="cublasSgemm_v2"), lambda: 0, FakeWorkspace())
    with pytest.raises(RuntimeError, match=r"cublasSgemm_v2 returned cuBLAS status 13 \(0 is success\)"):
        blas.sgemm(1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1)


def test_capture_safe_routes_matmul_through_the_capturable_binding(monkeypatch):
    """Inside the block gemm._blas gives CapturableCublas with one workspace per handle, made
    once; outside, CuPy's binding again (None on the stand-in)."""
    backend = standin_backend(kernels="gemm")
    xp = backend.xp
    monkeypatch.setattr(gemm, "cublas_capture_binding",
                        lambda module: (FakeLibrary(), lambda: 42, lambda: 0) if module is xp else None)
    monkeypatch.setattr(gemm, "_WORKSPACES", {})
    with gemm.capture_safe(xp):
        blas, get_handle = gemm._blas(xp)
        assert isinstance(blas, gemm.CapturableCublas) and get_handle() == 42
        workspace = gemm._WORKSPACES[42]
        assert workspace.nbytes == gemm.WORKSPACE_BYTES and workspace.dtype == np.uint8
    with gemm.capture_safe(xp):
        assert gemm._WORKSPACES[42] is workspace
    assert gemm._blas(xp) is None
    with gemm.capture_safe(np):
        assert gemm._blas(np) is None


@_NEEDS_GPU
def test_a_product_recorded_into_a_cuda_graph_replays_on_the_gpu():
    """On a real GPU: inside capture_safe a product is recorded into a graph (CuPy's own
    binding would raise), and each replay recomputes it from the inputs' current values."""
    cupy = _CUPY
    rng = np.random.default_rng(0)
    a = cupy.asarray(rng.standard_normal((64, 300)).astype(np.float32))
    b = cupy.asarray(rng.standard_normal((300, 50)).astype(np.float32))
    out = cupy.empty((64, 50), dtype=np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    cupy.cuda.Stream.null.synchronize()  # the uploads, before work on a stream that does not wait for them
    with gemm.capture_safe(cupy), stream:
        gemm.matmul(a, b, out=out)  # eager, through ctypes
        stream.synchronize()
        np.testing.assert_allclose(cupy.asnumpy(out), cupy.asnumpy(a) @ cupy.asnumpy(b), rtol=1e-4, atol=1e-4)
        stream.begin_capture()
        try:
            gemm.matmul(a, b, out=out)
        finally:
            graph = stream.end_capture()
    a *= 2  # on the null stream, as the launch below: in order
    graph.launch()
    cupy.cuda.Stream.null.synchronize()
    np.testing.assert_allclose(cupy.asnumpy(out), cupy.asnumpy(a) @ cupy.asnumpy(b), rtol=1e-4, atol=1e-4)
