"""The fused max pool (kernels pool.maxpool_forward / pool.maxpool_backward, group
"maxpool") and ReLU backward (relu.relu_backward, group "relu"): kernel against twin
(stand-in; a real GPU under .ci/gpu), twin against MaxPool2D's NumPy path, the layers and
a Sequential with the groups on against NumPy, and launch counts.

Every comparison here is exact: a max, a first-maximum offset and a mask are exact, and
the backward gather adds each input's terms from 0 in the same order (ascending window
offset) as MaxPool2D's NumPy path, in float32, so even overlapping windows sum alike."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import _NEEDS_GPU, backend_of
from gpucnn import Conv2D, Flatten, MaxPool2D, ReLU, Sequential
from gpucnn.backends.kernels.pool import NO_OFFSET, TIE_SCALE, max_pool, max_pool_grad
from standin import standin_backend

# (input shape (N, C, H, W), kernel_size, stride, padding)
GEOMETRIES = {
    "2x2": ((2, 3, 6, 6), 2, 2, 0),
    "3x3_s2_p1": ((3, 2, 7, 7), 3, 2, 1),  # overlapping windows, padding windows
    "1x1": ((2, 3, 4, 5), 1, 1, 0),
    "3x2_s2": ((2, 2, 7, 9), (3, 2), 2, 0),
    "2x2_odd": ((2, 3, 7, 9), 2, 2, 0),  # the pool drops the last row and column
    "3x3_s1_p1_batch1": ((1, 1, 5, 5), 3, 1, 1),  # up to 9 windows per input
    "2x2_large": ((5, 7, 13, 11), 2, 2, 0),  # 1050 outputs: not a multiple of the block
    "3x3_s3_p1": ((3, 2, 8, 7), 3, 3, 1),
}
KINDS = ["distinct", "duplicates", "constant", "negative", "near_ties", "nan"]


def make_x(kind, shape, seed=0):
    """float32 (N, C, H, W) test data: distinct values, or ties of one kind."""
    r = np.random.default_rng(seed)
    size = int(np.prod(shape))
    if kind == "distinct":
        return ((r.permutation(size) - size / 2) / size).astype(np.float32).reshape(shape)
    if kind == "duplicates":  # exact ties within most windows
        return r.integers(-2, 3, shape).astype(np.float32)
    if kind == "constant":  # every window one value
        return np.full(shape, 0.75, np.float32)
    if kind == "negative":  # padding must count as -inf, not 0
        return -(r.random(shape, dtype=np.float32) + 0.5)
    if kind == "near_ties":  # values at and just across the tie threshold y - 16 eps |y|
        m = r.standard_normal((shape[0], shape[1], 1, 1)).astype(np.float32)
        tied = np.abs(m) * TIE_SCALE + m  # float32, as _tied_with_max
        choices = np.stack(np.broadcast_arrays(m, tied, np.nextafter(tied, -np.inf), np.nextafter(tied, np.inf)))
        pick = r.integers(0, 4, shape)
        return np.take_along_axis(choices, pick[None], axis=0)[0].astype(np.float32)
    if kind == "nan":
        x = make_x("distinct", shape, seed)
        x.reshape(-1)[r.choice(size, max(1, size // 10), replace=False)] = np.nan
        return x
    raise ValueError(kind)


def on_device(backend, a, layout):
    """Host (N, C, H, W) -> device array of the same shape in ``layout``."""
    if layout == "nchw":
        return backend.asarray(np.ascontiguousarray(a))
    if layout == "batch_innermost":  # an NCHW view of (C, H, W, N) memory
        return backend.asarray(np.ascontiguousarray(a.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2)
    if layout == "sliced":  # no order of its axes is contiguous: the launcher copies
        n, c, h, w = a.shape
        wide = np.zeros((n, c, h, 2 * w), np.float32)
        wide[..., ::2] = a
        return backend.asarray(wide)[..., ::2]
    raise ValueError(layout)


def batch_innermost(a) -> bool:
    strides = a.strides
    return strides[0] == a.itemsize and list(strides[1:]) == sorted(strides[1:], reverse=True)


def pool_layer(geometry):
    shape, kernel, stride, padding = GEOMETRIES[geometry]
    return shape, MaxPool2D(kernel, stride=stride, padding=padding)


def run_launchers(x, dy, layer, relu=False):
    """max_pool then max_pool_grad with layer's geometry -> (y, offset, dx)."""
    out_hw = layer.output_shape(x.shape)[2:]
    y, offset = max_pool(x, layer.kernel_size, layer.stride, layer.padding, out_hw, relu=relu)
    dx = max_pool_grad(dy, offset, x.shape, layer.kernel_size, layer.stride, layer.padding)
    return y, offset, dx


# -- 1. kernel against twin ----------------------------------------------------------------
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "batch_innermost", "sliced"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_kernels_equal_their_twins(kernel_backend, geometry, kind, layout, relu):
    shape, layer = pool_layer(geometry)
    x = make_x(kind, shape)
    dy = np.random.default_rng(1).standard_normal(layer.output_shape(shape)).astype(np.float32)
    y, offset, dx = run_launchers(x, dy, layer, relu)  # NumPy arrays: the twins
    dy_layout = "nchw" if layout == "batch_innermost" else "batch_innermost"
    found = run_launchers(on_device(kernel_backend, x, layout), on_device(kernel_backend, dy, dy_layout), layer, relu)
    y_dev, offset_dev, dx_dev = (kernel_backend.to_numpy(a) for a in found)
    assert y_dev.dtype == np.float32 and offset_dev.dtype == np.uint8 and dx_dev.dtype == np.float32
    assert batch_innermost(found[0]) and batch_innermost(found[2])
    np.testing.assert_array_equal(offset_dev, offset)
    np.testing.assert_array_equal(y_dev, y)  # NaN equals NaN here
    np.testing.assert_array_equal(dx_dev, dx)  # same terms added in the same order: exact
    assert np.all((offset < layer.kernel_size[0] * layer.kernel_size[1]) | (offset == NO_OFFSET))


def test_windows_of_more_than_255_elements_are_refused_before_launching():
    backend = standin_backend(kernels="maxpool")
    x = backend.asarray(np.zeros((1, 1, 16, 16), np.float32))
    before = backend.xp.work.launches
    with pytest.raises(ValueError, match=r"at most 255 elements .* got 16x16 = 256; use a smaller kernel_size"):
        max_pool(x, (16, 16), 16, 0, (1, 1))
    assert backend.xp.work.launches == before
    layer = MaxPool2D(16)  # the layer runs its generic path instead
    assert not layer.fused(x)
    np.testing.assert_array_equal(backend.to_numpy(layer.forward(x)), np.zeros((1, 1, 1, 1)))


# -- 2. twin against MaxPool2D's NumPy path ------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_twins_equal_the_numpy_max_pool(geometry, kind):
    shape, layer = pool_layer(geometry)
    x = make_x(kind, shape, seed=2)
    dy = np.random.default_rng(3).standard_normal(layer.output_shape(shape)).astype(np.float32)
    for x_in in (x, np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)):  # both layouts
        y, offset, dx = run_launchers(x_in, dy, layer)
        np.testing.assert_array_equal(y, layer.forward(x_in))
        np.testing.assert_array_equal(dx, layer.backward(dy))  # ties included, bit for bit


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("geometry", ["2x2", "3x3_s2_p1", "2x2_odd", "3x3_s1_p1_batch1"])
def test_the_relu_flag_equals_max_pool_then_relu_on_numpy(geometry, kind):
    """relu(max) == max(relu): the flag gives ReLU's values and the gradient of ReLU then
    the pool (nothing where the pooled value is not > 0)."""
    shape, layer = pool_layer(geometry)
    x = make_x(kind, shape, seed=4)
    dy = np.random.default_rng(5).standard_normal(layer.output_shape(shape)).astype(np.float32)
    relu = ReLU()
    y, offset, dx = run_launchers(x, dy, layer, relu=True)
    np.testing.assert_array_equal(y, relu.forward(layer.forward(x)))
    np.testing.assert_array_equal(dx, layer.backward(relu.backward(dy)))


def test_first_maximum_within_the_tie_threshold_takes_the_gradient():
    """One window [t, m, m] with t = m - 16 eps |m| (float32): offset 0; just below t: offset 1."""
    m = np.float32(1.2345678)
    t = np.abs(m) * TIE_SCALE + m
    for first, expected in ((t, 0), (np.nextafter(t, np.float32(-np.inf)), 1)):
        x = np.array([first, m, m], np.float32).reshape(1, 1, 1, 3)
        _, offset, dx = run_launchers(x, np.ones((1, 1, 1, 1), np.float32), MaxPool2D((1, 3)))
        assert offset.reshape(-1)[0] == expected
        np.testing.assert_array_equal(dx.reshape(-1), np.eye(3, dtype=np.float32)[expected])


# -- 2b. the layers with the groups on, against NumPy ----------------------------------------
@pytest.fixture(params=[pytest.param("standin", id="standin"), pytest.param("cupy", id="cupy", marks=_NEEDS_GPU)])
def pool_backend(request):
    """The stand-in or a real GPU, running the maxpool and relu groups only."""
    yield from backend_of(request.param, "maxpool,relu")


def run_model(model, x, dy):
    y = model.forward(x)
    return y, model.backward(dy)


@pytest.mark.parametrize("order", ["pool_relu", "relu_pool"])
@pytest.mark.parametrize("geometry", ["2x2", "3x3_s2_p1", "2x2_odd"])
@pytest.mark.parametrize("kind", ["distinct", "duplicates", "near_ties"])
def test_max_pool_and_relu_layers_with_the_groups_on_equal_numpy(pool_backend, geometry, kind, order):
    shape, kernel, stride, padding = GEOMETRIES[geometry]

    def model():
        layers = [MaxPool2D(kernel, stride=stride, padding=padding), ReLU()]
        return Sequential(layers if order == "pool_relu" else layers[::-1])

    x = make_x(kind, shape, seed=6) - np.float32(0.25)  # some pooled values <= 0
    out_shape = MaxPool2D(kernel, stride=stride, padding=padding).output_shape(shape)  # ReLU keeps it
    dy = np.random.default_rng(7).standard_normal(out_shape).astype(np.float32)
    y, dx = run_model(model(), x, dy)
    device_model = model().to(pool_backend)
    x_dev = on_device(pool_backend, x, "batch_innermost")
    y_dev, dx_dev = run_model(device_model, x_dev, on_device(pool_backend, dy, "batch_innermost"))
    assert batch_innermost(y_dev) and batch_innermost(dx_dev)
    np.testing.assert_array_equal(pool_backend.to_numpy(y_dev), y)
    np.testing.assert_array_equal(pool_backend.to_numpy(dx_dev), dx)


def dyadic_model(seed):
    """Conv2D -> ReLU -> MaxPool2D -> Flatten with weights that are small multiples of 1/4:
    with inputs of that kind every sum is exact in float32, in any order, so the device
    and NumPy results (ties included) must agree exactly."""
    r = np.random.default_rng(seed)
    layers = [Conv2D(2, 8, 3, padding=1, rng=r), ReLU(), MaxPool2D(2), Flatten()]
    layers[0].params["weight"] = (r.integers(-4, 5, layers[0].params["weight"].shape) / 4).astype(np.float32)
    layers[0].params["bias"] = (r.integers(-4, 5, layers[0].params["bias"].shape) / 4).astype(np.float32)
    return Sequential(layers)


@pytest.mark.parametrize("size", [8, 9])  # 9: the pool drops the last row and column
def test_conv_relu_pool_model_with_maxpool_on_equals_numpy(pool_backend, size):
    model, device_model = dyadic_model(8), dyadic_model(8).to(pool_backend)
    assert [type(u).__name__ for u in model._units][:2] == ["ConvPool", "ReLU"]
    data = np.random.default_rng(9)
    x = (data.integers(-4, 5, (3, 2, size, size)) / 4).astype(np.float32)  # many exact ties
    dy = (data.integers(-4, 5, (3, 8 * (size // 2) ** 2)) / 4).astype(np.float32)  # (N, C*OH*OW)
    y, dx = run_model(model, x, dy)
    y_dev, dx_dev = run_model(device_model, pool_backend.asarray(x), pool_backend.asarray(dy))
    assert not device_model.layers[2].cached_blocks  # the fused pool: the plain calls
    np.testing.assert_array_equal(pool_backend.to_numpy(y_dev), y)
    np.testing.assert_array_equal(pool_backend.to_numpy(dx_dev), dx)
    for key in ("weight", "bias"):
        np.testing.assert_array_equal(pool_backend.to_numpy(device_model.layers[0].grads[key]),
                                      model.layers[0].grads[key])


# -- 3. launch counts on the stand-in ----------------------------------------------------------
def launches(backend, run):
    before = backend.xp.work.launches
    result = run()
    return backend.xp.work.launches - before, result


@pytest.mark.parametrize("geometry", ["2x2", "3x3_s2_p1", "2x2_odd"])
def test_the_fused_max_pool_is_one_launch_each_way(geometry):
    shape, kernel, stride, padding = GEOMETRIES[geometry]
    x = make_x("distinct", shape)
    counts = {}
    for groups in ("maxpool", "none"):
        backend = standin_backend(kernels=groups)
        layer = MaxPool2D(kernel, stride=stride, padding=padding)
        x_dev = on_device(backend, x, "batch_innermost")
        forward, y = launches(backend, lambda: layer.forward(x_dev))
        dy_dev = backend.xp.ones_like(y)
        backward, _ = launches(backend, lambda: layer.backward(dy_dev))
        counts[groups] = (forward, backward)
    assert counts["maxpool"] == (1, 1)
    assert counts["none"][0] > 1 and counts["none"][1] > 1  # the generic path, for comparison


def test_fused_relu_backward_is_one_launch_in_any_layout():
    counts = {}
    for groups in ("relu", "none"):
        backend = standin_backend(kernels=groups)
        x = make_x("distinct", (3, 2, 5, 5)) - np.float32(0.1)
        layer = ReLU()
        x_dev = on_device(backend, x, "batch_innermost")
        layer.forward(x_dev)
        dy = on_device(backend, np.ones(x.shape, np.float32), "batch_innermost")
        count, dx = launches(backend, lambda: layer.backward(dy))
        assert batch_innermost(dx)
        np.testing.assert_array_equal(backend.to_numpy(dx), (x > 0).astype(np.float32))
        counts[groups] = count
    assert counts == {"relu": 1, "none": 2}


def test_conv_pool_unit_takes_the_plain_calls_with_maxpool_on():
    backend = standin_backend(kernels="maxpool")
    model = dyadic_model(10).to(backend)
    x = backend.asarray(np.ones((2, 2, 8, 8), np.float32))
    model.forward(x)
    assert not model.layers[2].cached_blocks
    assert backend.xp.work.by_kind["kernel pool.maxpool_forward"] == 1
