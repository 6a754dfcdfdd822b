"""Fused-kernel group "im2col" (gpucnn/backends/kernels/im2col.py, cuda/im2col.cu): Conv2D's im2col
and col2im as one launch each. Kernel vs NumPy twin on the `kernel_backend` fixture (the
stand-in here; a real GPU under .ci/gpu), the twins vs gpucnn.nn.layers.im2col on NumPy,
Conv2D (and ConvPool) with the group on vs the NumPy layer, and launch counts.

Exactness: im2col is a copy (exact everywhere). col2im adds, per dx element, the same
float32 terms in the same order ((i, j) row-major, from 0.0f) in the kernel, the twin and
gpucnn.nn.layers.im2col.col2im, and a float32 add is correctly rounded on the GPU (no FMA can
form from additions alone): all three agree bit for bit, asserted exactly. Only the GEMMs
(cuBLAS vs BLAS) sum in other orders: the layer tests on a GPU allow the float32 bound.
"""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from gpucnn import Conv2D, MaxPool2D
from gpucnn.backends.backend import get_backend
from gpucnn.nn.execution_units import ConvPool
from gpucnn.backends.kernels.im2col import col2im_nchw, dense_buffer, im2col_into
from gpucnn.nn.layers import conv as conv_module
from gpucnn.nn.layers.im2col import col2im, im2col, output_size, to_chwn
from standin import StandInDevice, standin_backend

KERNELS = [(1, 1), (3, 3), (5, 5), (3, 2)]
STRIDES = [1, 2]
PADDINGS = {"valid": "valid", "same": "same", "asym": ((1, 0), (0, 1)), "p2": 2}
BLOCKS = [(1, 1), (2, 2)]
# (N, C_in, layout of x): NCHW memory, an NCHW view of (C, H, W, N) memory (what Conv2D
# hands out), and a sliced view that no transpose makes C-contiguous (the launcher copies)
BATCHES = [(1, 1, "nchw"), (5, 3, "chwn"), (5, 1, "sliced"), (1, 3, "chwn")]


def geometries() -> list:
    """Every (kernel, stride, padding, blocks) case as a pytest.param ("same" needs stride 1)."""
    cases = []
    for kernel, stride, padding, blocks in itertools.product(KERNELS, STRIDES, PADDINGS, BLOCKS):
        if padding == "same" and stride != 1:
            continue
        cases.append(pytest.param(kernel, stride, padding, blocks,
                                  id=f"k{kernel[0]}x{kernel[1]}-s{stride}-{padding}-b{blocks[0]}"))
    return cases


def input_size(kernel, stride, pads, blocks):
    """The first non-square (H, W), odd H first, whose output sizes (>= 2) the blocks divide."""
    (kh, kw), (top, bottom, left, right), (bh, bw) = kernel, pads, blocks
    sizes = sorted(itertools.product(range(5, 30), range(6, 30)), key=lambda hw: (hw[0] % 2 == 0, hw))
    for h, w in sizes:
        out_h, out_w = output_size(h, kh, stride, top, bottom), output_size(w, kw, stride, left, right)
        if h != w and out_h >= 2 and out_w >= 2 and out_h % bh == 0 and out_w % bw == 0:
            return h, w, out_h, out_w
    raise AssertionError("no input size fits")


def make_input(data, n, c, h, w, layout):
    """float32 (N, C, H, W) on the host, in the memory layout named."""
    if layout == "sliced":
        return data.standard_normal((n, c, h, w + 3)).astype(np.float32)[..., 1:w + 1]  # (N, C, H, W) view
    x = data.standard_normal((n, c, h, w)).astype(np.float32)  # (N, C, H, W)
    if layout == "chwn":
        x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # (N, C, H, W) view of (C, H, W, N)
    return x


def to_device(backend, x):
    """x on the device in the same memory layout (asarray of a view copies to C order)."""
    if x.flags.c_contiguous:
        return backend.asarray(x)
    if x.transpose(1, 2, 3, 0).flags.c_contiguous:
        return backend.asarray(np.ascontiguousarray(x.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2)
    wide = backend.asarray(np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (0, 0), (1, 2)))))
    return wide[..., 1:x.shape[3] + 1]  # (N, C, H, W), sliced as on the host


def case(kernel, stride, padding, blocks):
    """(top, bottom, left, right), (H, W, OH, OW) of one geometry."""
    pads = conv_module.resolve_padding("test", PADDINGS[padding], kernel, stride)
    return pads, input_size(kernel, stride, pads, blocks)


def seeded(*key):
    """A generator seeded from the test's parameters (crc32: stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# -- 1. kernels vs twins, on the device (stand-in or GPU) vs NumPy ---------------------------

@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"n{b[0]}c{b[1]}{b[2]}")
@pytest.mark.parametrize("kernel, stride, padding, blocks", geometries())
def test_im2col_kernel_equals_twin_and_layers_im2col(kernel, stride, padding, blocks, batch, kernel_backend):
    n, c, layout = batch
    (top, bottom, left, right), (h, w, out_h, out_w) = case(kernel, stride, padding, blocks)
    (kh, kw), data = kernel, seeded(kernel, stride, padding, blocks, batch)
    x = make_input(data, n, c, h, w, layout)
    k, positions = c * kh * kw, out_h * out_w * n

    cols = np.full((k + 1, positions), 7.0, np.float32)  # the workspace: row k must stay as it is
    im2col_into(x, cols[:k], kh, kw, stride, top, left, out_h, out_w, blocks)  # NumPy: the twin
    expected = im2col(to_chwn(x, top, bottom, left, right), kh, kw, stride, out_h, out_w, blocks=blocks)
    np.testing.assert_array_equal(cols[:k], expected)  # the twin == the offset-slice im2col, exactly
    assert np.all(cols[k] == 7.0)

    cols_dev = kernel_backend.asarray(np.full((k + 1, positions), 7.0, np.float32))
    im2col_into(to_device(kernel_backend, x), cols_dev[:k], kh, kw, stride, top, left, out_h, out_w, blocks)
    np.testing.assert_array_equal(kernel_backend.to_numpy(cols_dev), cols)  # a copy: exact


@pytest.mark.parametrize("batch", BATCHES[:2], ids=lambda b: f"n{b[0]}c{b[1]}")
@pytest.mark.parametrize("kernel, stride, padding, blocks", geometries())
def test_col2im_kernel_equals_twin_and_layers_col2im(kernel, stride, padding, blocks, batch, kernel_backend):
    n, c, _ = batch
    (top, bottom, left, right), (h, w, out_h, out_w) = case(kernel, stride, padding, blocks)
    (kh, kw), data = kernel, seeded(kernel, stride, padding, blocks, n)
    dcols = data.standard_normal((c * kh * kw, out_h * out_w * n)).astype(np.float32)  # (K, P)

    dx = col2im_nchw(dcols, c, h, w, kh, kw, stride, top, left, out_h, out_w, blocks)  # the twin
    assert dx.shape == (n, c, h, w) and dx.dtype == np.float32
    assert dx.transpose(1, 2, 3, 0).flags.c_contiguous  # an NCHW view of (C, H, W, N) memory
    padded = col2im(dcols, c, kh, kw, (h + top + bottom, w + left + right), stride, out_h, out_w, blocks)
    np.testing.assert_array_equal(dx, padded[:, top:top + h, left:left + w].transpose(3, 0, 1, 2))

    dx_dev = col2im_nchw(kernel_backend.asarray(dcols), c, h, w, kh, kw, stride, top, left,
                         out_h, out_w, blocks)
    assert dx_dev.transpose(1, 2, 3, 0).flags.c_contiguous
    # same float32 additions in the same order on both sides: bit for bit (module docstring)
    np.testing.assert_array_equal(kernel_backend.to_numpy(dx_dev), dx)


def test_col2im_is_the_adjoint_of_im2col(kernel_backend):
    """<im2col(x), d> == <x, col2im(d)> with padding, stride 2 and blocks (float64 dots)."""
    data, (kh, kw), stride, (top, left) = np.random.default_rng(4), (3, 2), 2, (1, 0)
    n, c, h, w = 3, 2, 9, 8
    out_h, out_w = output_size(h, kh, stride, top, 2), output_size(w, kw, stride, left, 1)  # 5, 4
    x = data.standard_normal((n, c, h, w)).astype(np.float32)
    d = data.standard_normal((c * kh * kw, out_h * out_w * n)).astype(np.float32)
    cols = kernel_backend.asarray(np.empty(d.shape, np.float32))
    im2col_into(kernel_backend.asarray(x), cols, kh, kw, stride, top, left, out_h, out_w, (1, 2))
    dx = col2im_nchw(kernel_backend.asarray(d), c, h, w, kh, kw, stride, top, left, out_h, out_w, (1, 2))
    lhs = np.vdot(kernel_backend.to_numpy(cols).astype(np.float64), d.astype(np.float64))
    rhs = np.vdot(x.astype(np.float64), kernel_backend.to_numpy(dx).astype(np.float64))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_dense_buffer_reads_views_without_a_copy_and_copies_the_rest():
    backend = standin_backend(kernels="im2col")
    xp, host = backend.xp, np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (N, C, H, W)
    for x, strides, copies in [
        (backend.asarray(host), (60, 20, 5, 1), 0),
        (backend.asarray(np.ascontiguousarray(host.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2), (1, 40, 10, 2), 0),
        (backend.asarray(host)[:, :, :, 1:4], (60, 20, 5, 1), 1),  # a slice: one copy
    ]:
        before = xp.work.launches
        buffer, found = dense_buffer(x)
        assert buffer.flags.c_contiguous and xp.work.launches - before == copies
        assert found == (strides if copies == 0 else (36, 12, 3, 1))


def test_the_launchers_refuse_what_the_kernels_would_misread():
    x = np.zeros((2, 1, 4, 4), np.float64)
    with pytest.raises(TypeError, match="float32"):
        im2col_into(x, np.zeros((9, 32), np.float32), 3, 3, 1, 1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"expected cols: C-contiguous float32 \(9, 32\)"):
        im2col_into(x.astype(np.float32), np.zeros((10, 32), np.float32), 3, 3, 1, 1, 1, 4, 4)


# -- 2. Conv2D with the group on vs the NumPy layer -----------------------------------------

def float32_bound(terms, abs_result):
    """2 * K * 2**-24 * sum|terms| (float64): the error of a K-term float32 dot product,
    for each of the two sides summing in its own order."""
    return 2.0 * terms * 2.0 ** -24 * abs_result


CONVS = {
    "same3": (lambda r: Conv2D(3, 4, 3, padding="same", rng=r), (5, 3, 9, 7)),
    "s2_asym": (lambda r: Conv2D(2, 5, (3, 2), stride=2, padding=((1, 0), (0, 1)), rng=r), (3, 2, 8, 7)),
    "valid5": (lambda r: Conv2D(1, 6, 5, rng=r), (1, 1, 11, 9)),
    "1x1": (lambda r: Conv2D(3, 2, 1, rng=r), (4, 3, 5, 6)),
}


def run_conv(make, shape, backend, seed=3):
    """Conv2D from host weights on ``backend``: (y, dx, grads) on the host."""
    data = np.random.default_rng(seed)
    x = data.standard_normal(shape).astype(np.float32)
    conv = make(np.random.default_rng(1))
    conv.params["bias"] = data.standard_normal(conv.out_channels).astype(np.float32)
    conv.to(backend)
    y = conv.forward(backend.asarray(x))
    dy = data.standard_normal(y.shape).astype(np.float32)
    dx = conv.backward(backend.asarray(np.ascontiguousarray(dy.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2))
    grads = {key: backend.to_numpy(g) for key, g in conv.grads.items()}
    return conv, x, dy, backend.to_numpy(y), backend.to_numpy(dx), grads


def assert_within_float32_bounds(conv, x, dy, expected, found):
    """(y, dx, grads) ``found`` vs ``expected`` within the float32 bound of each GEMM's sums
    (cuBLAS sums in its own order); sum|terms| from the same layer on |inputs| in float64."""
    abs_conv = Conv2D(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, dtype=np.float64)
    abs_conv.params = {key: np.abs(p.astype(np.float64)) for key, p in conv.params.items()}  # conv: NumPy
    y_abs = abs_conv.forward(np.abs(x.astype(np.float64)))
    dx_abs = abs_conv.backward(np.abs(dy.astype(np.float64)))
    (kh, kw), (y, dx, grads), (y_dev, dx_dev, grads_dev) = conv.kernel_size, expected, found
    k, positions = conv.in_channels * kh * kw, y.size // conv.out_channels
    assert np.all(np.abs(y_dev - y) <= float32_bound(k + 1, y_abs))  # K products + the bias
    assert np.all(np.abs(dx_dev - dx) <= float32_bound(conv.out_channels * kh * kw, dx_abs))
    for key in grads:  # a sum over every output position and sample
        assert np.all(np.abs(grads_dev[key] - grads[key]) <= float32_bound(positions, abs_conv.grads[key]))


@pytest.mark.parametrize("name", list(CONVS))
def test_conv2d_with_the_group_equals_numpy(name, kernel_backend):
    make, shape = CONVS[name]
    conv, x, dy, y, dx, grads = run_conv(make, shape, get_backend("cpu"))
    _, _, _, y_dev, dx_dev, grads_dev = run_conv(make, shape, kernel_backend)
    assert y_dev.dtype == dx_dev.dtype == np.float32
    assert_within_float32_bounds(conv, x, dy, (y, dx, grads), (y_dev, dx_dev, grads_dev))
    if isinstance(kernel_backend.xp, StandInDevice):  # the same BLAS on the same columns: exact
        assert kernel_backend.xp.work.by_kind["kernel im2col.col2im"] == 1
        np.testing.assert_array_equal(y_dev, y)
        np.testing.assert_array_equal(dx_dev, dx)
        for key in grads:
            np.testing.assert_array_equal(grads_dev[key], grads[key])


def test_conv_pool_unit_with_the_group_equals_numpy():
    """ConvPool calls forward_blocks / backward_blocks with blocks == the pool's kernel."""
    data = np.random.default_rng(5)
    x = data.standard_normal((3, 2, 10, 10)).astype(np.float32)  # conv 3x3 p1 -> 10x10, pool 2
    results = []
    for backend in (get_backend("cpu"), standin_backend(kernels="im2col")):
        r = np.random.default_rng(2)
        conv, pool = Conv2D(2, 3, 3, padding=1, rng=r).to(backend), MaxPool2D(2).to(backend)
        unit = ConvPool(conv, pool)
        y = unit.forward(backend.asarray(x))
        assert pool.cached_blocks  # the blocked path ran
        dy = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
        dx = unit.backward(backend.asarray(dy))
        results.append([backend.to_numpy(a) for a in (y, dx, conv.grads["weight"], conv.grads["bias"])])
    for cpu, dev in zip(*results):
        np.testing.assert_array_equal(dev, cpu)


def test_float64_conv_keeps_the_generic_path():
    backend = standin_backend(kernels="im2col")
    conv = Conv2D(1, 2, 3, padding=1, dtype=np.float64, rng=np.random.default_rng(0)).to(backend)
    y = conv.forward(backend.asarray(np.ones((2, 1, 5, 5))))
    conv.backward(y)
    assert not any(kind.startswith("kernel") for kind in backend.xp.work.by_kind)


# -- 3. launch counts on the stand-in ------------------------------------------------------

def step_launches(kernels, padding=1, need_input_grad=True):
    """(forward, backward) launches of a Conv2D 3->8 3x3 on a padded NCHW batch, 2nd step."""
    backend = standin_backend(kernels=kernels)
    conv = Conv2D(3, 8, 3, padding=padding, rng=np.random.default_rng(0)).to(backend)
    x = backend.asarray(np.random.default_rng(1).standard_normal((5, 3, 9, 9)).astype(np.float32))
    work = backend.xp.work
    for _ in range(2):  # the second step: the workspaces exist
        start = work.launches
        y = conv.forward(x)
        middle = work.launches
        conv.backward(y, need_input_grad=need_input_grad)
    return middle - start, work.launches - middle, work.by_kind


def test_launch_counts_fused_vs_generic():
    forward, backward, kinds = step_launches("im2col")
    # forward: im2col kernel + weight/bias concatenate + GEMM; backward: two GEMMs + col2im
    assert (forward, backward) == (3, 3)
    assert kinds["kernel im2col.im2col"] == 2 and kinds["kernel im2col.col2im"] == 2
    generic_forward, generic_backward, _ = step_launches("none")
    # generic: pad (copy + 4 fills) + window copy + concatenate + GEMM; fill + 9 adds + 2 GEMMs
    assert (generic_forward, generic_backward) == (8, 12)
    assert step_launches("im2col", need_input_grad=False)[1] == 1  # the weight-gradient GEMM alone
