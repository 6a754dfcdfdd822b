"""A training batch gathered in one launch (group "pixels", gpucnn/backends/kernels/pixels.py): the
kernels against their NumPy twins and against float_batch(x[indices]), bit for bit, and
gather_batch with the group on against NumPy's. Device: the CuPy stand-in, and a real GPU
when present (kernel_backend)."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backends.kernels.pixels import gather_batch_fused
from gpucnn.data.pixels import float_batch, gather_batch
from standin import standin_backend

IMAGE_SHAPES = [(1, 1, 1), (3, 5, 7), (1, 28, 28), (3, 32, 32)]


def make_data(dtype, n, image_shape, seed=0):
    r = np.random.default_rng(seed + n)
    if dtype == np.uint8:
        x = r.integers(0, 256, (n, *image_shape), dtype=np.uint8)  # (N, C, H, W)
        x.reshape(-1)[:256] = np.arange(min(256, x.size), dtype=np.uint8)  # every pixel value, when it fits
    else:
        x = r.random((n, *image_shape), dtype=np.float32)  # (N, C, H, W)
    return x, r.integers(0, 10, n).astype(np.int64)


def index_sets(n):
    r = np.random.default_rng(n)
    return [np.array([n - 1]), r.permutation(n)[: max(1, n // 2)], r.integers(0, n, 2 * n + 3),  # repeats
            np.zeros(5, np.int64)]


@pytest.mark.parametrize("image_shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_kernel_equals_twin_and_float_batch_bit_for_bit(kernel_backend, dtype, n, image_shape):
    x, y = make_data(dtype, n, image_shape)
    dev_x, dev_y = kernel_backend.asarray(x), kernel_backend.asarray(y)
    for indices in index_sets(n):
        indices = indices.astype(np.int64)
        host_xb, host_yb = gather_batch_fused(x, y, indices)  # the twin
        xb, yb = gather_batch_fused(dev_x, dev_y, kernel_backend.asarray(indices))  # the kernel
        assert xb.dtype == np.float32 and xb.shape == (len(indices), *image_shape) and xb.flags.c_contiguous
        assert yb.dtype == np.int64 and yb.shape == (len(indices),)
        expected = float_batch(x[indices]).astype(np.float32)  # astype(float32) / float32(255): no sums
        for found in (kernel_backend.to_numpy(xb), host_xb):
            assert np.array_equal(found.view(np.uint32), expected.view(np.uint32))  # every bit
        np.testing.assert_array_equal(kernel_backend.to_numpy(yb), y[indices])
        np.testing.assert_array_equal(host_yb, y[indices])


def test_every_pixel_value_is_the_float32_division():
    x = np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1)  # (256, 1, 1, 1)
    xb, _ = gather_batch_fused(x, np.zeros(256, np.int64), np.arange(256, dtype=np.int64))
    assert np.array_equal(xb.ravel(), np.arange(256, dtype=np.float32) / np.float32(255))
    assert not np.array_equal(xb.ravel(), np.arange(256, dtype=np.float32) * np.float32(1 / 255))  # not a product


def test_bad_indices_give_nan_images_and_label_minus_one(kernel_backend):
    x, y = make_data(np.uint8, 4, (2, 3, 3))
    indices = np.array([1, 4, -1, 3], np.int64)
    for xb, yb, to_numpy in (
            (*gather_batch_fused(x, y, indices), np.asarray),
            (*gather_batch_fused(kernel_backend.asarray(x), kernel_backend.asarray(y),
                                 kernel_backend.asarray(indices)), kernel_backend.to_numpy)):
        xb, yb = to_numpy(xb), to_numpy(yb)
        assert np.isnan(xb[1:3]).all() and np.array_equal(xb[[0, 3]], float_batch(x[[1, 3]]))
        np.testing.assert_array_equal(yb, [y[1], -1, -1, y[3]])


# -- gather_batch: the training loop's gather --------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_gather_batch_fused_equals_numpy(kernel_backend, dtype):
    x, y = make_data(dtype, 50, (3, 5, 4))
    order = np.random.default_rng(2).permutation(50).astype(np.int64)
    dev_order = kernel_backend.asarray(order)
    dev_x, dev_y = kernel_backend.asarray(x), kernel_backend.asarray(y)
    for shard in (slice(0, 16), slice(16, 32), slice(48, 50)):
        host_xb, host_yb = gather_batch(x, y, order[shard])  # NumPy: float_batch(x[i]), y[i]
        xb, yb = gather_batch(dev_x, dev_y, dev_order[shard])  # a view of the order: no copy
        assert np.array_equal(kernel_backend.to_numpy(xb), host_xb) and host_xb.dtype == np.float32
        np.testing.assert_array_equal(kernel_backend.to_numpy(yb), host_yb)


@pytest.mark.parametrize("groups, dtype, expected", [
    ("pixels", np.uint8, {"kernel pixels.gather_scale": 1}),
    ("pixels", np.float32, {"kernel pixels.gather_copy": 1}),
])
def test_gather_batch_is_one_launch_with_the_group_on(groups, dtype, expected):
    x, y = make_data(dtype, 30, (1, 6, 6))
    counts = {}
    for spec in ("none", groups):
        backend = standin_backend(kernels=spec)
        dev_x, dev_y, order = backend.asarray(x), backend.asarray(y), backend.asarray(np.arange(30, dtype=np.int64))
        backend.xp.work.reset()
        backend.xp.reset_transfers()
        gather_batch(dev_x, dev_y, order[3:19])
        assert backend.xp.transfers == {"to_device": 0, "to_host": 0}
        counts[spec] = (backend.xp.work.launches, dict(backend.xp.work.by_kind))
    assert counts[groups][1] == expected
    assert counts["none"][0] > 1  # the generic gathers (and astype, divide for uint8)


def test_gather_batch_falls_back_where_the_kernels_do_not_apply():
    backend = standin_backend(kernels="pixels")
    x, y = make_data(np.uint8, 10, (1, 2, 2))
    idx = np.array([3, 1, 3], np.int64)
    for dev_x, dev_y in ((backend.asarray(x), backend.asarray(y.astype(np.int32))),  # int32 labels
                         (backend.asarray(x.astype(np.float64)), backend.asarray(y))):  # float64 images
        backend.xp.work.reset()
        xb, yb = gather_batch(dev_x, dev_y, backend.asarray(idx))
        assert not any(kind.startswith("kernel") for kind in backend.xp.work.by_kind)
        np.testing.assert_array_equal(backend.to_numpy(yb), y[idx])
        np.testing.assert_allclose(backend.to_numpy(xb), float_batch(x[idx]) if dev_x.dtype == np.uint8
                                   else x[idx].astype(np.float64))
