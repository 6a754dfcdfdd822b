"""The fused batch norm (kernels batchnorm.stats / .normalize / .backward_reduce /
.backward_dx, group "batchnorm"): kernel against twin (stand-in; a real GPU under .ci/gpu),
the statistics against float64 on large-mean data, BatchNorm2D / BatchNorm1D with the group
on against their NumPy path, and launch counts.

Tolerances. The per-channel sums (stats, backward_reduce) accumulate in float64 on both
sides, in different orders: two evaluations of a K-term float64 sum differ by at most
2 * gamma64(K) * sum|terms| (Higham 3.1, u = 2**-53; tests/tolerance.py states the float32
form of the same rule), and each side then rounds once to float32, so the two float32
results are equal or adjacent: at most 2**-23 |value| apart. Those per-channel differences
are propagated to first order through the element-wise float32 steps (inv_std, y, dx), each
of which adds a few float32 roundings per side (8 u in all). normalize and backward_dx
given the SAME per-channel inputs do the same float32 operations in the same order on both
sides (the kernels use round-to-nearest intrinsics, nothing is contracted into an FMA), so
they are compared exactly. Layer against NumPy uses tests/tolerance.py's batchnorm_bounds
(the NumPy path sums in float32, E[x^2] - mean^2).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import BatchNorm1D, BatchNorm2D
from gpucnn.backends.kernels import launch
from gpucnn.backends.kernels.batchnorm import backward, channel_layout, normalized, train_forward
from standin import standin_backend
from tolerance import U32, assert_within, batchnorm_bounds

U64 = 2.0 ** -53  # float64 unit roundoff
EPS, MOMENTUM = 1e-5, 0.1


def gamma64(k):
    return k * U64 / (1.0 - k * U64)


def chwn(x):
    """x (N, C, H, W) -> the same values as an NCHW view of (C, H, W, N) memory (Conv2D's output)."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # (N, C, H, W)


def in_layout(x, layout):
    return chwn(x) if layout == "chwn" else np.ascontiguousarray(x)


def to_device(backend, x, layout):
    """Host x (N, C, H, W) -> a device array in ``layout`` (the layout survives the upload)."""
    if layout == "chwn":
        return backend.asarray(np.ascontiguousarray(x.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2)  # (N, C, H, W)
    return backend.asarray(np.ascontiguousarray(x))


def same_layout(a, b) -> bool:
    """Same memory layout: equal strides on every axis longer than 1."""
    return a.shape == b.shape and all(sa == sb for sa, sb, n in zip(a.strides, b.strides, a.shape) if n > 1)


def per_channel(x):
    """x (N, C, ...) -> float64 (C, M): each channel's values."""
    return np.moveaxis(np.asarray(x, np.float64), 1, 0).reshape(x.shape[1], -1)  # (C, M)


def bcast(v, ndim):
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))  # (1, C, 1, 1)


def stats_bounds(x):
    """How far kernel and twin may put mean and var (C,) apart: the float64 sums of
    d = x - x[first] and d^2 (2 gamma64(M) sum|terms| each), through var = (S2 - S1^2/M)/M,
    plus each side's final rounding to float32 (adjacent floats: 2**-23 |value|)."""
    v = per_channel(x)  # (C, M)
    m = v.shape[1]
    d = v - v[:, :1]
    s1, abs1, s2 = d.sum(axis=1), np.abs(d).sum(axis=1), (d * d).sum(axis=1)
    d_s1, d_s2 = 2 * gamma64(m) * abs1, 2 * gamma64(m) * s2
    mean, var = v.mean(axis=1), v.var(axis=1)
    d_mean = d_s1 / m + 8 * U64 * (np.abs(mean) + np.abs(v[:, 0]))
    d_var = (d_s2 + 2 * np.abs(s1) / m * d_s1 + d_s1 ** 2 / m) / m + 8 * U64 * s2 / m
    return d_mean + 2.0 ** -23 * np.abs(mean), d_var + 2.0 ** -23 * var


def y_bound(x, mean, var, weight, bias, d_mean, d_var):
    """|y1 - y2| for y = (x - mean) * weight / sqrt(var + eps) + bias computed from
    statistics d_mean, d_var apart, with 8 u of element-wise rounding on top."""
    nd = x.ndim
    mean, var, d_mean, d_var = (bcast(a, nd) for a in (mean, var, d_mean, d_var))
    w, b = np.abs(bcast(weight, nd)), np.abs(bcast(bias, nd))
    r = 1.0 / np.sqrt(var + EPS)
    d_r = r * (d_var / (2 * (var + EPS)) + 4 * U32)
    centred = np.abs(np.asarray(x, np.float64) - mean)
    return w * (r * d_mean + centred * d_r) + 8 * U32 * (w * centred * r + b)


def random_data(shape, rng, loc=0.5, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def channel_params(c, rng):
    weight = (1 + 0.5 * rng.standard_normal(c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    running_mean = (0.1 * rng.standard_normal(c)).astype(np.float32)
    running_var = (1 + 0.2 * rng.random(c)).astype(np.float32)
    return weight, bias, running_mean, running_var


SHAPES = [pytest.param((n, c, h, w), id=f"N{n}_C{c}_{h}x{w}")
          for c in (1, 3, 64) for n in (1, 5) for h, w in ((1, 1), (5, 7))]


# -- kernel against twin --------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["chwn", "nchw"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_equal_their_twins(kernel_backend, shape, layout):
    rng = np.random.default_rng(sum(shape))
    be = kernel_backend
    x = random_data(shape, rng)
    dy = random_data(shape, rng, loc=0.0)
    weight, bias, running_mean, running_var = channel_params(shape[1], rng)
    host = [x_host := in_layout(x, layout), weight, bias, running_mean.copy(), running_var.copy()]
    dev = [to_device(be, x, layout), *(be.asarray(a) for a in (weight, bias, running_mean, running_var))]
    m = x.size // shape[1]

    if m >= 2:  # training forward: stats then normalize
        y_h, mean_h, var_h = train_forward(channel_layout(host[0]), *host[1:], EPS, MOMENTUM)
        y_d, mean_d, var_d = train_forward(channel_layout(dev[0]), *dev[1:], EPS, MOMENTUM)
        d_mean, d_var = stats_bounds(x)
        assert_within(be.to_numpy(mean_d), mean_h, d_mean, "mean")
        assert_within(be.to_numpy(var_d), var_h, d_var, "var")
        keep, unbiased = 1 - MOMENTUM, MOMENTUM * m / (m - 1)
        assert_within(be.to_numpy(dev[3]), host[3], MOMENTUM * d_mean + 4 * U32 * (np.abs(running_mean) + 1),
                      "running_mean")
        assert_within(be.to_numpy(dev[4]), host[4], unbiased * d_var + 4 * U32 * (keep * running_var + 1),
                      "running_var")
        assert same_layout(y_d, dev[0]) and same_layout(y_h, x_host)  # x's layout
        assert_within(be.to_numpy(y_d), y_h, y_bound(x, mean_h, var_h, weight, bias, d_mean, d_var), "y")
    else:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            train_forward(channel_layout(dev[0]), *dev[1:], EPS, MOMENTUM)

    # evaluation forward: normalize on the same statistics on both sides -> bit-identical
    y_h = normalized(channel_layout(host[0]), running_mean, running_var, weight, bias, EPS)
    y_d = normalized(channel_layout(dev[0]), *(be.asarray(a) for a in (running_mean, running_var)),
                     dev[1], dev[2], EPS)
    np.testing.assert_array_equal(be.to_numpy(y_d), y_h)

    # backward, on the same statistics on both sides (the batch's, rounded to float32)
    mean = per_channel(x).mean(axis=1).astype(np.float32)
    var = per_channel(x).var(axis=1).astype(np.float32)
    v, g = per_channel(x), per_channel(dy)  # (C, M)
    r = 1.0 / np.sqrt(var.astype(np.float64) + EPS)
    d_dbias = 2 * gamma64(m) * np.abs(g).sum(axis=1) + 2.0 ** -23 * np.abs(g.sum(axis=1))
    sum_dyx = (g * (v - mean[:, None])).sum(axis=1) * r
    d_dweight = (2 * gamma64(m) * np.abs(g * (v - mean[:, None])).sum(axis=1) * r
                 + 4 * U64 * np.abs(sum_dyx) + 2.0 ** -23 * np.abs(sum_dyx))
    for training in (True, False):
        dx_h, dw_h, db_h = backward(channel_layout(host[0]), in_layout(dy, layout), mean, var, weight,
                                    EPS, training)
        dx_d, dw_d, db_d = backward(channel_layout(dev[0]), to_device(be, dy, layout), be.asarray(mean),
                                    be.asarray(var), dev[1], EPS, training)
        assert_within(be.to_numpy(db_d), db_h, d_dbias, "dbias")
        assert_within(be.to_numpy(dw_d), dw_h, d_dweight, "dweight")
        assert same_layout(dx_d, dev[0])
        if not training:  # dx = scale * dy: no sums involved
            np.testing.assert_array_equal(be.to_numpy(dx_d), dx_h)
            continue
        nd = x.ndim
        scale = np.abs(bcast(weight, nd)) * bcast(r, nd)
        x_hat = np.abs((x - bcast(mean, nd)) * bcast(r, nd))
        dx_bound = scale * ((bcast(d_dbias, nd) + x_hat * bcast(d_dweight, nd)) / m
                            + 8 * U32 * (np.abs(dy) + np.abs(bcast(db_h, nd)) / m + x_hat * np.abs(bcast(dw_h, nd)) / m))
        assert_within(be.to_numpy(dx_d), dx_h, dx_bound, "dx")


@pytest.mark.parametrize("layout", ["chwn", "nchw"])
def test_backward_dx_kernel_is_bit_identical_to_its_twin(kernel_backend, layout):
    """Given the same per-channel sums, dx is the same float32 operations in the same order."""
    rng = np.random.default_rng(7)
    be, shape = kernel_backend, (5, 3, 5, 7)
    x, dy = random_data(shape, rng), random_data(shape, rng, loc=0.0)
    c = shape[1]
    per = [rng.standard_normal(c).astype(np.float32) for _ in range(4)]  # mean, weight, dweight, dbias
    var = (0.5 + rng.random(c)).astype(np.float32)
    results = []
    for xp_x, xp_dy, arrays in ((in_layout(x, layout), in_layout(dy, layout), (per[0], var, *per[1:])),
                                (to_device(be, x, layout), to_device(be, dy, layout),
                                 tuple(be.asarray(a) for a in (per[0], var, *per[1:])))):
        lay = channel_layout(xp_x)
        dx_buffer, dx = lay.empty()
        launch("batchnorm.backward_dx", (3, c), (128,),
               (lay.buffer, lay.like(xp_dy), *arrays[:3], *arrays[3:], dx_buffer, *lay.scalars(),
                np.float32(EPS), np.float32(1 / 175)))
        results.append(dx)
    np.testing.assert_array_equal(be.to_numpy(results[1]), results[0])


@pytest.mark.parametrize("layout", ["chwn", "nchw"])
def test_statistics_of_large_mean_data_keep_the_variance(kernel_backend, layout):
    """x = 1000 + noise of std 0.01: mean^2 / var = 1e10, which one-pass float32
    E[x^2] - mean^2 loses entirely; the kernels' shifted float64 sums keep var to float32
    rounding of the exact (float64, two-pass) variance of the same float32 data."""
    rng = np.random.default_rng(11)
    be, shape = kernel_backend, (5, 3, 5, 7)
    x = random_data(shape, rng, loc=1000.0, scale=0.01)
    weight, bias, running_mean, running_var = channel_params(3, rng)
    y, mean, var = train_forward(channel_layout(to_device(be, x, layout)), *(be.asarray(a) for a in (
        weight, bias, running_mean, running_var)), EPS, MOMENTUM)
    exact_mean, exact_var = per_channel(x).mean(axis=1), per_channel(x).var(axis=1)
    d_mean, d_var = stats_bounds(x)  # about 2**-23 relative
    assert_within(be.to_numpy(mean), exact_mean, d_mean, "mean")
    assert_within(be.to_numpy(var), exact_var, d_var, "var")
    assert np.all(np.abs(be.to_numpy(var) / exact_var - 1) < 1e-6)
    assert_within(be.to_numpy(y), (x - bcast(exact_mean, 4)) / np.sqrt(bcast(exact_var, 4) + EPS)
                  * bcast(weight, 4) + bcast(bias, 4),
                  y_bound(x, exact_mean, exact_var, weight, bias, d_mean, d_var), "y")


# -- the layers with the group on, against their NumPy path -------------------------------
LAYER_CASES = {
    "bn2d_chwn": (lambda: BatchNorm2D(3), (5, 3, 5, 7), "chwn"),
    "bn2d_nchw": (lambda: BatchNorm2D(3), (5, 3, 5, 7), "nchw"),
    "bn2d_batch1_C64": (lambda: BatchNorm2D(64), (1, 64, 5, 7), "chwn"),
    "bn2d_1x1": (lambda: BatchNorm2D(3), (5, 3, 1, 1), "chwn"),
    "bn1d": (lambda: BatchNorm1D(6), (8, 6), "nchw"),
}


def _prepare(make, rng):
    layer = make()
    c = layer.num_features
    weight, bias, running_mean, running_var = channel_params(c, rng)
    layer.params["weight"][...], layer.params["bias"][...] = weight, bias
    layer.state["running_mean"][...], layer.state["running_var"][...] = running_mean, running_var
    return layer


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_with_the_group_on_equals_numpy(kernel_backend, case):
    make, shape, layout = LAYER_CASES[case]
    rng = np.random.default_rng(5)
    host, dev = _prepare(make, np.random.default_rng(1)), _prepare(make, np.random.default_rng(1))
    dev.to(kernel_backend)
    be = kernel_backend
    for step, training in enumerate((True, True, False)):  # two steps move the running statistics
        host.training = dev.training = training
        x = random_data(shape, rng)
        dy = random_data(shape, rng, loc=0.0)
        x_host = in_layout(x, layout) if x.ndim == 4 else x
        x_dev = to_device(be, x, layout) if x.ndim == 4 else be.asarray(x)
        bounds = batchnorm_bounds(x, host.params["weight"], dy, host.eps, training, host.momentum,
                                  running_stats=(host.state["running_mean"], host.state["running_var"]))
        y_host, y_dev = host.forward(x_host), dev.forward(x_dev)
        assert same_layout(y_dev, x_dev) and y_dev.dtype == np.float32
        assert_within(be.to_numpy(y_dev), y_host, bounds["y"], f"{case} step {step} y")
        for name in ("running_mean", "running_var"):
            if training:  # the bound of this step's update, plus the previous steps' (twice)
                assert_within(be.to_numpy(dev.state[name]), host.state[name],
                              (step + 1) * bounds[f"state {name}"], f"{case} step {step} {name}")
        dx_host, dx_dev = host.backward(dy), dev.backward(be.asarray(dy))
        assert same_layout(dx_dev, x_dev)
        assert_within(be.to_numpy(dx_dev), dx_host, bounds["dx"], f"{case} step {step} dx")
        for key in ("weight", "bias"):
            assert_within(be.to_numpy(dev.grads[key]), host.grads[key], bounds[f"grad {key}"],
                          f"{case} step {step} grad {key}")


def test_a_strided_view_input_is_copied_once_and_normalised():
    be = standin_backend(kernels="batchnorm")
    rng = np.random.default_rng(2)
    x = random_data((4, 3, 6, 8), rng)
    host, dev = _prepare(lambda: BatchNorm2D(3), rng), None
    dev = _prepare(lambda: BatchNorm2D(3), np.random.default_rng(2)).to(be)
    host = _prepare(lambda: BatchNorm2D(3), np.random.default_rng(2))
    view = x[:, :, ::2]  # (4, 3, 3, 8), not a permutation of dense memory
    before = be.xp.work.launches
    y_dev = dev.forward(be.asarray(x)[:, :, ::2])
    assert be.xp.work.launches - before == 3  # the copy, stats, normalize
    dy = random_data(view.shape, rng, loc=0.0)
    bounds = batchnorm_bounds(view, host.params["weight"], dy, host.eps)
    assert_within(be.to_numpy(y_dev), host.forward(view), bounds["y"], "y")
    assert_within(be.to_numpy(dev.backward(be.asarray(dy))), host.backward(dy), bounds["dx"], "dx")


def test_float64_layers_keep_the_generic_path():
    be = standin_backend(kernels="batchnorm")
    layer = BatchNorm2D(3, dtype=np.float64).to(be)
    layer.forward(be.asarray(np.random.default_rng(0).standard_normal((4, 3, 2, 2))))
    assert not any(kind.startswith("kernel batchnorm") for kind in be.xp.work.by_kind)


# -- launch counts ------------------------------------------------------------------------
def _launches(kernels, layer_make, shape, training, need_input_grad=True):
    be = standin_backend(kernels=kernels)
    layer = layer_make().to(be)
    layer.training = training
    rng = np.random.default_rng(0)
    x = to_device(be, random_data(shape, rng), "chwn") if len(shape) == 4 else be.asarray(random_data(shape, rng))
    dy = to_device(be, random_data(shape, rng), "chwn") if len(shape) == 4 else be.asarray(random_data(shape, rng))
    work = be.xp.work
    start = work.launches
    layer.forward(x)
    forward = work.launches - start
    start = work.launches
    layer.backward(dy, need_input_grad=need_input_grad)
    return forward, work.launches - start


@pytest.mark.parametrize("make, shape", [(lambda: BatchNorm2D(8), (4, 8, 6, 6)),
                                         (lambda: BatchNorm1D(8), (16, 8))])
def test_launch_counts(make, shape):
    # measured on the stand-in, generic CuPy path (kernels off), BatchNorm2D on batch-
    # innermost input: training forward 20, backward 15; evaluation forward 7, backward 7
    generic_train, generic_eval = _launches("none", make, shape, True), _launches("none", make, shape, False)
    assert _launches("batchnorm", make, shape, True) == (2, 2)  # stats + normalize; reduce + dx
    assert _launches("batchnorm", make, shape, False) == (1, 2)  # normalize; reduce + dx
    assert _launches("batchnorm", make, shape, True, need_input_grad=False) == (2, 1)  # reduce only
    assert generic_train[0] > 2 and generic_train[1] > 2 and generic_eval[0] > 1
