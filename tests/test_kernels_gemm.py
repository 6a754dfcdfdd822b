"""Fused-kernel group "gemm" (gpucnn/backends/kernels/gemm.py): matrix multiplies through cuBLAS's
sgemm directly. On NumPy and the stand-in ``gemm.matmul`` is ``xp.matmul``; its cuBLAS branch
(the row-major -> column-major swap, op N/T and leading dimensions per operand layout) runs
here against a fake cuBLAS that performs sgemm's column-major definition on the stand-in's
memory, and on a real GPU (.ci/gpu) against cupy.matmul. Dense with the group on vs NumPy.

Tolerance: a product element is a k-term float32 sum, whose order BLAS, cuBLAS and the fake
choose freely: two evaluations agree within tests/tolerance.py's sum_bound(k, sum|a||b|),
computed in float64 from |a| @ |b|.
"""
from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest

from gpucnn import Dense
from gpucnn.backends.backend import get_backend
from gpucnn.backends.kernels import gemm
from standin import standin_backend
from tolerance import assert_within, sum_bound

SIZES = [(1, 1, 1), (7, 33, 1), (1, 7, 33), (33, 1, 7), (7, 33, 1000), (1000, 7, 33)]  # (m, k, n)
LAYOUTS = ["C", "F"]


def host_matrix(rng, shape, layout):
    """float32 ``shape`` on the host, C-contiguous or F-contiguous (a transposed view's memory)."""
    a = rng.standard_normal(shape).astype(np.float32)
    return a if layout == "C" else np.asfortranarray(a)


def to_device(backend, a):
    """Host matrix -> device matrix of the same layout (F: the transposed view of a C upload)."""
    if a.flags.c_contiguous:
        return backend.asarray(a)
    return backend.asarray(np.ascontiguousarray(a.T)).T


def bound(a, b):
    return sum_bound(a.shape[1], np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))


class FakeCublas:
    """cublasSgemm's definition on the stand-in's memory (its arrays' ``data.ptr`` are host
    addresses): C = alpha * op(A) @ op(B) + beta * C, column-major, op N or T, with the
    argument checks cuBLAS makes (leading dimensions). Counts one launch per call."""

    CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_POINTER_MODE_HOST = 0, 1, 0

    def __init__(self, device):
        self.device, self.calls, self.mode = device, [], None

    def setPointerMode(self, handle, mode):
        self.mode = mode

    @staticmethod
    def _matrix(ptr, rows, cols, ld):
        """The column-major (rows, cols) matrix at ``ptr`` with leading dimension ``ld``."""
        extent = (cols - 1) * ld + rows
        memory = np.ctypeslib.as_array((ctypes.c_float * extent).from_address(ptr))
        return np.lib.stride_tricks.as_strided(memory, (rows, cols), (4, 4 * ld))

    def sgemm(self, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        self.calls.append((transa, transb, m, n, k, lda, ldb, ldc))
        assert self.mode == self.CUBLAS_POINTER_MODE_HOST
        a_rows, a_cols = (m, k) if transa == self.CUBLAS_OP_N else (k, m)
        b_rows, b_cols = (k, n) if transb == self.CUBLAS_OP_N else (n, k)
        assert lda >= max(1, a_rows) and ldb >= max(1, b_rows) and ldc >= max(1, m), "CUBLAS_STATUS_INVALID_VALUE"
        op_a = self._matrix(A, a_rows, a_cols, lda)
        op_b = self._matrix(B, b_rows, b_cols, ldb)
        op_a = op_a if transa == self.CUBLAS_OP_N else op_a.T  # (m, k)
        op_b = op_b if transb == self.CUBLAS_OP_N else op_b.T  # (k, n)
        scale = [ctypes.c_float.from_address(p).value for p in (alpha, beta)]
        out = self._matrix(C, m, n, ldc)
        out[...] = np.float32(scale[0]) * (op_a @ op_b) + (np.float32(scale[1]) * out if scale[1] else 0)
        self.device.work.add("gemm", flops=2 * m * n * k)


@pytest.fixture
def fake_cublas(monkeypatch):
    """A stand-in backend whose gemm.matmul takes the cuBLAS branch, on FakeCublas."""
    backend = standin_backend(kernels="gemm")
    fake = FakeCublas(backend.xp)
    monkeypatch.setattr(gemm, "_blas", lambda xp: (fake, lambda: 7) if xp is backend.xp else None)
    return backend, fake


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layouts", list(itertools.product(LAYOUTS, LAYOUTS, ["new", "C", "F"])),
                         ids=lambda t: "".join(t))
def test_cublas_branch_on_a_fake_cublas(size, layouts, fake_cublas):
    """Every layout of a, b and out (none, C, F) and odd sizes: one sgemm call, no copy,
    the product within the float32 bound of NumPy's."""
    backend, fake = fake_cublas
    (m, k, n), (layout_a, layout_b, layout_out) = size, layouts
    r = np.random.default_rng(m * 100 + n)
    a, b = host_matrix(r, (m, k), layout_a), host_matrix(r, (k, n), layout_b)
    out = None if layout_out == "new" else to_device(backend, host_matrix(r, (m, n), layout_out))
    work = backend.xp.work
    before = work.launches
    c = gemm.matmul(to_device(backend, a), to_device(backend, b), out=out)
    assert work.launches - before == 1 and len(fake.calls) == 1
    assert c is out if out is not None else c.flags.c_contiguous
    assert c.dtype == np.float32 and c.shape == (m, n)
    assert_within(backend.to_numpy(c), a @ b, bound(a, b), f"{layouts} {size}")


def test_other_operands_fall_back_to_xp_matmul(fake_cublas):
    backend, fake = fake_cublas
    r = np.random.default_rng(0)
    a = backend.asarray(r.standard_normal((6, 4)).astype(np.float32))
    b = backend.asarray(r.standard_normal((8, 5)).astype(np.float32))
    strided = b[::2]  # (4, 5), neither C- nor F-contiguous
    expected = backend.to_numpy(a) @ backend.to_numpy(b)[::2]
    np.testing.assert_array_equal(backend.to_numpy(gemm.matmul(a, strided)), expected)
    a64 = backend.asarray(r.standard_normal((6, 4)))
    assert gemm.matmul(a64, a64.T).dtype == np.float64
    assert fake.calls == []
    with pytest.raises(ValueError, match=r"same k, got a \(6, 4\) and b \(5, 5\); transpose"):
        gemm.matmul(a, b[:5])


@pytest.mark.parametrize("layouts", list(itertools.product(LAYOUTS, LAYOUTS, ["new", "C", "F"])),
                         ids=lambda t: "".join(t))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_on_the_device_equals_xp_matmul(size, layouts, kernel_backend):
    """gemm.matmul against the array module's matmul (cupy.matmul on a GPU: cuBLAS through
    CuPy), and both against NumPy, within the float32 bound."""
    (m, k, n), (layout_a, layout_b, layout_out) = size, layouts
    r = np.random.default_rng(m * 100 + n)
    a, b = host_matrix(r, (m, k), layout_a), host_matrix(r, (k, n), layout_b)
    dev_a, dev_b = to_device(kernel_backend, a), to_device(kernel_backend, b)
    out = None if layout_out == "new" else to_device(kernel_backend, host_matrix(r, (m, n), layout_out))
    c = gemm.matmul(dev_a, dev_b, out=out)
    if out is not None:
        assert c is out
    expected = kernel_backend.to_numpy(kernel_backend.xp.matmul(dev_a, dev_b))
    assert_within(kernel_backend.to_numpy(c), expected, bound(a, b), f"vs xp.matmul {layouts} {size}")
    assert_within(kernel_backend.to_numpy(c), a @ b, bound(a, b), f"vs NumPy {layouts} {size}")


def test_numpy_arrays_take_numpy_matmul():
    r = np.random.default_rng(1)
    a, b = r.standard_normal((5, 3)).astype(np.float32), r.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(gemm.matmul(a, b), a @ b)
    out = np.empty((4, 5), np.float32).T
    assert gemm.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, a @ b)


def dense_case(x_layout):
    r = np.random.default_rng(3)
    x = host_matrix(r, (5, 10), x_layout)  # F: Flatten of batch-innermost feature maps
    dy = r.standard_normal((5, 6)).astype(np.float32)
    return x, dy


def dense_parity(backend, x_layout):
    """Dense forward and backward on ``backend`` against the NumPy layer: y, dx (in x's
    layout), weight and bias gradients within the float32 bound."""
    x, dy = dense_case(x_layout)
    host, dev = Dense(10, 6, rng=np.random.default_rng(4)), Dense(10, 6, rng=np.random.default_rng(4)).to(backend)
    y, dx = host.forward(x), host.backward(dy)
    y_dev = dev.forward(to_device(backend, x))
    dx_dev = dev.backward(backend.asarray(dy))
    assert dx_dev.flags.f_contiguous == (x_layout == "F") and dx_dev.dtype == np.float32
    w = host.params["weight"]
    assert_within(backend.to_numpy(y_dev), y, bound(x, w), "y")
    assert_within(backend.to_numpy(dx_dev), dx, bound(dy, w.T), "dx")
    assert_within(backend.to_numpy(dev.grads["weight"]), host.grads["weight"], bound(x.T, dy), "grad weight")
    assert_within(backend.to_numpy(dev.grads["bias"]), host.grads["bias"],
                  sum_bound(5, np.abs(dy).astype(np.float64).sum(axis=0)), "grad bias")


@pytest.mark.parametrize("x_layout", LAYOUTS)
def test_dense_on_the_fake_cublas_equals_numpy(x_layout, fake_cublas):
    """All three products of Dense take the cuBLAS branch (x C-contiguous, or F: Flatten of
    batch-innermost feature maps, whose dx keeps that layout)."""
    backend, fake = fake_cublas
    dense_parity(backend, x_layout)
    assert len(fake.calls) == 3


@pytest.mark.parametrize("x_layout", LAYOUTS)
def test_dense_with_gemm_equals_numpy(x_layout, kernel_backend):
    dense_parity(kernel_backend, x_layout)


def test_dense_launch_counts_with_gemm_are_the_generic_ones():
    """The group cuts host time per product (CuPy's checks), not launches: forward is the
    product and the bias add, backward two products and the bias sum, either way."""
    x, dy = dense_case("C")
    counts = []
    for kernels in ("none", "gemm"):
        backend = standin_backend(kernels=kernels)
        layer = Dense(10, 6, rng=np.random.default_rng(4)).to(backend)
        xd, dyd, work = backend.asarray(x), backend.asarray(dy), backend.xp.work
        before = work.launches
        layer.forward(xd)
        middle = work.launches
        layer.backward(dyd)
        counts.append((middle - before, work.launches - middle))
    assert counts == [(2, 3), (2, 3)]


def test_cpu_dense_is_untouched_by_the_group():
    """NumPy never runs kernel groups: Dense there is the ``@`` code, bit for bit."""
    x, dy = dense_case("C")
    layer = Dense(10, 6, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(layer.forward(x), x @ layer.params["weight"] + layer.params["bias"])
    assert get_backend("cpu").kernels == frozenset()


@pytest.mark.parametrize("layout_out", LAYOUTS)
def test_accumulate_adds_the_product_to_out(layout_out, fake_cublas):
    """accumulate=True: cuBLAS's beta = 1 (out += a @ b), one sgemm; without out it refuses."""
    backend, fake = fake_cublas
    r = np.random.default_rng(7)
    a, b = host_matrix(r, (7, 33), "C"), host_matrix(r, (33, 5), "F")
    start = host_matrix(r, (7, 5), layout_out)
    out = to_device(backend, start)
    assert gemm.matmul(to_device(backend, a), to_device(backend, b), out=out, accumulate=True) is out
    assert len(fake.calls) == 1
    assert_within(backend.to_numpy(out), start + a @ b, bound(a, b) + 1e-6, layout_out)
    with pytest.raises(ValueError, match="adds the product to out="):
        gemm.matmul(to_device(backend, a), to_device(backend, b), accumulate=True)


def test_accumulate_on_the_device_and_without_cublas(kernel_backend):
    """The same on the stand-in's xp.matmul branch and on a real GPU's cuBLAS."""
    r = np.random.default_rng(8)
    a, b, start = (r.standard_normal(s).astype(np.float32) for s in ((6, 40), (40, 9), (6, 9)))
    out = kernel_backend.asarray(start)
    gemm.matmul(kernel_backend.asarray(a), kernel_backend.asarray(b), out=out, accumulate=True)
    assert_within(kernel_backend.to_numpy(out), start + a @ b, bound(a, b) + 1e-6, "accumulate")
