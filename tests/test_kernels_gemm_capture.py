"""gpucnn.backends.kernels.gemm inside a CUDA-graph capture (gpucnn.backends.cuda_graphs): CuPy's cuBLAS binding
refuses every call while a stream captures, so :func:`gemm.capture_safe` routes matmul's
sgemm through ctypes (:class:`gemm.CapturableCublas`) on the libcublas CuPy loaded, and never
reaches ``xp.matmul`` during a capture.

Devices: NumPy and the CuPy stand-in (a fake ctypes library: the calls, their order and the
status checks; the stand-in's model of libcublas and of CuPy's handle, tests/standin/cublas.py),
a real GPU when present (a product recorded into a graph and replayed).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import _CUPY, _NEEDS_GPU
from gpucnn.backends.backend import cublas_capture_binding, mapped_cublas_path
from gpucnn.backends.kernels import gemm
from standin import CupyConformanceError, expect_findings, standin_backend


def test_the_mapped_libcublas_is_found_not_cublaslt():
    lines = ["7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libcublasLt.so.13.0.1\n",
             "7f02-7f03 r-xp 00000000 08:01 2 /opt/nvidia/cublas/lib/libcublas.so.13\n",
             "7f04-7f05 rw-p 00000000 00:00 0\n",
             "7f06-7f07 r-xp 00000000 08:01 3 /lib/x86_64-linux-gnu/libc.so.6\n"]
    assert mapped_cublas_path(lines) == "/opt/nvidia/cublas/lib/libcublas.so.13"
    assert mapped_cublas_path(lines[:1] + lines[2:]) is None


def test_two_mapped_libcublas_files_are_refused_one_under_two_names_is_not(tmp_path):
    """Item 5. With PyTorch imported beside CuPy, two libcublas files may be mapped, and the maps
    do not say which one CuPy's handle belongs to: refused, naming both (graphs then fall back).
    One file reached through a symbolic link is one library."""
    real = tmp_path / "cuda" / "libcublas.so.12.8.4"
    real.parent.mkdir()
    real.write_bytes(b"")
    (tmp_path / "libcublas.so.12").symlink_to(real)
    line = "7f02-7f03 r-xp 00000000 08:01 2 {}\n".format
    assert mapped_cublas_path([line(real), line(tmp_path / "libcublas.so.12"), line(real)]) == str(real)
    torch_copy = "/site-packages/nvidia/cublas/lib/libcublas.so.12"
    with pytest.raises(RuntimeError, match=r"expected one libcublas.so mapped, got 2: .*PyTorch") as refused:
        mapped_cublas_path([line(real), line(torch_copy)])
    assert str(real) in str(refused.value) and torch_copy in str(refused.value)


def test_numpy_has_no_capture_binding_and_the_standin_its_model():
    assert cublas_capture_binding(np) is None
    xp = standin_backend().xp
    library, get_handle, stream_pointer = cublas_capture_binding(xp)
    assert library is xp._libcublas and get_handle() == library.handle and stream_pointer() == 0


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
    """Inside the block gemm._blas gives CapturableCublas with one workspace per handle, kept
    while anything holds that binding (a recorded graph does); outside, CuPy's binding again
    (None on the stand-in)."""
    backend = standin_backend(kernels="gemm")
    xp = backend.xp
    monkeypatch.setattr(gemm, "cublas_capture_binding",
                        lambda module: (FakeLibrary(), lambda: 42, lambda: 0) if module is xp else None)
    with gemm.capture_safe(xp):
        blas, get_handle = gemm._blas(xp)
        assert isinstance(blas, gemm.CapturableCublas) and get_handle() == 42
        workspace = blas.workspace
        assert workspace.nbytes == gemm.WORKSPACE_BYTES and workspace.dtype == np.uint8
    with gemm.capture_safe(xp):
        assert gemm._blas(xp)[0] is blas and blas.workspace is workspace
    assert gemm._blas(xp) is None
    with gemm.capture_safe(np):
        assert gemm._blas(np) is None


def f32(backend, shape, seed=0):
    return backend.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def captured(xp, work):
    """``work()`` recorded inside gemm.capture_safe on a non-blocking stream: the graph."""
    stream = xp.cuda.Stream(non_blocking=True)
    with gemm.capture_safe(xp), stream:
        stream.begin_capture()
        try:
            work()
        finally:
            graph = stream.end_capture()
    return graph


def test_the_standin_refuses_cupys_matmul_during_a_capture_even_from_gemm(monkeypatch):
    """Item 3. CuPy's binding raises for every cuBLAS call during stream capture
    (cupy_backends/cuda/libs/cublas.pyx: setStream, called first by sgemm & co.), whoever calls
    it: gemm's own fallback line included."""
    backend = standin_backend(kernels="gemm")
    a, b = f32(backend, (8, 5)), f32(backend, (5, 3))
    monkeypatch.setattr(gemm, "_blas", lambda xp: None)  # as if gemm had no cuBLAS of its own
    with expect_findings() as found, pytest.raises(CupyConformanceError, match="cuBLAS API during stream capture"):
        captured(backend.xp, lambda: gemm.matmul(a, b))
    assert len(found) == 1 and found[0].location.startswith("gpucnn/backends/kernels/gemm.py:")


@pytest.mark.parametrize("case", ["strided a", "strided b", "strided out", "strided out, accumulate"])
def test_strided_float32_operands_are_copied_for_a_recorded_product(case):
    """Item 3. During a capture gemm.matmul never calls xp.matmul: a float32 operand neither
    C- nor F-contiguous is copied into one that is (a copy kernel records), a strided ``out``
    gets the product copied (or added) into it. Replays give the product of the inputs of then."""
    backend = standin_backend(kernels="gemm")
    xp, host = backend.xp, backend.to_numpy
    a, b = f32(backend, (8, 10), 1), f32(backend, (5, 6), 2)
    a, b = (a[:, ::2], b[:, :3]) if case == "strided a" else (a[:, :5], b[:, ::2])  # (8, 5), (5, 3)
    a = a if case == "strided a" else xp.ascontiguousarray(a)
    b = b if case == "strided b" else xp.ascontiguousarray(b)
    wide = xp.zeros((8, 6), dtype=np.float32)
    out = wide[:, ::2] if case.startswith("strided out") else None  # (8, 3) strided
    made = {}
    graph = captured(xp, lambda: made.setdefault("y", gemm.matmul(a, b, out=out, accumulate="accumulate" in case)))
    for launch in (1, 2):
        graph.launch()
        expected = host(a) @ host(b)
        if "accumulate" in case:
            expected = launch * expected
        np.testing.assert_allclose(host(made["y"]), expected, rtol=1e-5, atol=1e-5)


def test_a_float64_product_cannot_be_recorded_and_says_so():
    """Item 3. cuBLAS through ctypes multiplies float32 only, and CuPy's matmul refuses a
    capture: gemm.matmul raises a clear error there (gpucnn.backends.cuda_graphs then trains eagerly with a
    GraphFallbackWarning), before any CuPy call."""
    from gpucnn.backends.cuda_graphs import GraphFallbackWarning, StepGraph
    from test_graphs import graph_backend, make_model
    backend = graph_backend("standin")
    xp = backend.xp
    a, b = f32(backend, (4, 3)).astype(np.float64), f32(backend, (3, 2)).astype(np.float64)
    with pytest.raises(ValueError, match="float64 .* float32 .* CUDA graphs"):
        captured(xp, lambda: gemm.matmul(a, b))
    model = make_model("simple").to(backend)
    from gpucnn.optim import SGD
    out = xp.zeros((4, 2), dtype=np.float64)
    step = StepGraph(model, SGD(model, 0.1), lambda: gemm.matmul(a, b, out=out))
    with pytest.warns(GraphFallbackWarning, match="recording the step failed .*float64"):
        step()
    step()
    assert step.reason is not None and step.replays == 0
    np.testing.assert_allclose(backend.to_numpy(out), backend.to_numpy(a) @ backend.to_numpy(b))


def test_the_standins_sgemm_checks_what_it_reads():
    """The stand-in's libcublas reads raw addresses as a GPU would: every matrix must lie in one
    live float32 array of the device; leading dimensions below the rows are cuBLAS's
    CUBLAS_STATUS_INVALID_VALUE (7); the handle must run on the current stream."""
    backend = standin_backend(kernels="gemm")
    xp = backend.xp
    library = xp._libcublas
    handle = library.handle
    a, b, c = f32(backend, (4, 3)), f32(backend, (3, 2)), xp.zeros((4, 2), dtype=np.float32)
    args = lambda a_ptr, lda=3: (handle, 1, 1, 4, 2, 3, gemm._ALPHA, a_ptr, lda, b.data.ptr, 2,  # noqa: E731
                                 gemm._BETA, c.data.ptr, 4)  # column-major C (4, 2) = A^T-stored a @ b
    assert library.cublasSgemm_v2(*args(a.data.ptr)) == 0
    host = backend.to_numpy
    np.testing.assert_allclose(host(c).reshape(2, 4).T, host(a) @ host(b), rtol=1e-6)  # c's memory, column-major
    assert library.cublasSgemm_v2(*args(a.data.ptr, lda=2)) == 7
    doubles = xp.zeros(12, dtype=np.float64)
    stream = xp.cuda.Stream(non_blocking=True)
    refused = {"lies in a float64 array": lambda: library.cublasSgemm_v2(*args(doubles.data.ptr)),
               "not inside one live device array": lambda: library.cublasSgemm_v2(*args(a.data.ptr + 8)),
               "not on the current stream": lambda: _inside(stream, lambda: library.cublasSgemm_v2(*args(a.data.ptr)))}
    for message, call in refused.items():
        with expect_findings() as found, pytest.raises(CupyConformanceError, match=message):
            call()
        assert len(found) == 1


def _inside(stream, work):
    with stream:
        return work()


def test_capture_safe_gives_the_handle_its_stream_and_workspace_back():
    """Item 8. Inside capture_safe gemm binds CuPy's cuBLAS handle to the recording stream and
    to gpucnn's workspace; on leaving, the handle is back on the caller's stream, with cuBLAS's
    default workspace (CuPy never sets one: cupy_backends/cuda/libs/cublas.pyx has no
    setWorkspace). The stand-in's handle keeps both (tests/standin/cublas.py)."""
    backend = standin_backend(kernels="gemm")
    xp = backend.xp
    handle = xp._libcublas
    a, b = f32(backend, (8, 5)), f32(backend, (5, 3))
    xp.matmul(a, b)  # CuPy's binding: the handle on the null stream
    assert (handle.stream, handle.workspace) == (0, None)
    stream = xp.cuda.Stream(non_blocking=True)
    with gemm.capture_safe(xp), stream:
        gemm.matmul(a, b)
        assert handle.stream == stream.ptr and handle.workspace is not None
    assert (handle.stream, handle.workspace) == (0, None)
    other = xp.cuda.Stream(non_blocking=True)
    with other:  # a caller on a stream of its own gets that one back
        xp.matmul(a, b)
        with gemm.capture_safe(xp), stream:
            gemm.matmul(a, b)
        assert (handle.stream, handle.workspace) == (other.ptr, None)


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
