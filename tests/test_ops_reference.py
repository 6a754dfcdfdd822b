"""The reference ops (gpucnn/backends/ops.py) against today's layers, on NumPy and on the CuPy
stand-in (with and without the fused kernels), and the worked examples of docs/math.md
through them. Bounds: tests/tolerance.py; exact where the layers' arithmetic is the same
operations in the same order (pool routing, the optimizers' updates on NumPy)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import backend_of
from gpucnn import AvgPool2D, BatchNorm2D, Conv2D, Dense, MaxPool2D, Sequential, SoftmaxCrossEntropy
from gpucnn.backends.ops import Ops
from gpucnn.optim import SGD, Adam, AdamW
from test_seed_examples import (HAND_STEP_BIAS, HAND_STEP_CONV_OUT, HAND_STEP_INPUT, HAND_STEP_INPUT_GRAD,
                                HAND_STEP_KERNEL, HAND_STEP_KERNEL_GRAD, HAND_STEP_LR, HAND_STEP_NEW_BIAS,
                                HAND_STEP_NEW_KERNEL, HAND_STEP_POOL_GRAD, HAND_STEP_POOLED, STRIDED_DI,
                                STRIDED_DK, STRIDED_I, STRIDED_K, STRIDED_MAXPOOL, STRIDED_O)
from tolerance import (U32, assert_within, batchnorm_bounds, elementwise_bound, linear_layer_bounds,
                       softmax_ce_bounds)


@pytest.fixture(params=["cpu", "standin", "standin-generic"])
def dev(request):
    """A backend (NumPy, the stand-in with its fused kernels, the stand-in without) and the
    reference Ops on its array module."""
    for backend in backend_of(request.param):
        yield backend, Ops(backend.xp)


def host(backend, a):
    return None if a is None else backend.to_numpy(a)


CONV_CASES = [  # (C_in, C_out, kernel, stride, padding, H, W)
    (1, 2, 3, 1, 0, 5, 5), (2, 3, 3, 1, 1, 6, 7), (3, 2, 3, 2, 0, 7, 7),
    (2, 4, (2, 3), 2, 1, 8, 6), (1, 2, 2, 1, "same", 5, 4), (2, 2, 3, 2, ((1, 0), (2, 1)), 6, 5),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_the_layer(dev, case, rng):
    backend, ops = dev
    c_in, c_out, k, stride, padding, h, w = case
    conv = Conv2D(c_in, c_out, k, stride=stride, padding=padding, rng=rng)
    conv.params["bias"][...] = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((3, c_in, h, w)).astype(np.float32)
    dy = rng.standard_normal(conv.output_shape(x.shape)).astype(np.float32)
    bounds = linear_layer_bounds(conv, x, dy)  # on the host, float64
    conv.to(backend)
    want = {"y": conv.forward(backend.asarray(x))}
    want["dx"] = conv.backward(backend.asarray(dy))
    weight, bias = conv.params["weight"], conv.params["bias"]
    y, cache = ops.conv2d_forward(backend.asarray(x), weight, bias, stride, conv.pads)
    dx, dweight, dbias = ops.conv2d_backward(backend.asarray(dy), weight, cache)
    got = {"y": y, "dx": dx, "grad weight": dweight, "grad bias": dbias}
    want.update({"grad weight": conv.grads["weight"], "grad bias": conv.grads["bias"]})
    for key, value in got.items():
        assert value.dtype == np.float32, key
        assert_within(host(backend, value), host(backend, want[key]), bounds[key], key)
    assert ops.conv2d_backward(backend.asarray(dy), weight, cache, need_input_grad=False)[0] is None


POOL_CASES = [(2, 2, 0, 4, 4), (2, 2, 0, 5, 7), (3, 2, 0, 5, 5), (3, 2, 1, 6, 6), (2, 1, 0, 4, 5), (3, 3, 1, 7, 7)]


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_matches_the_layer_exactly(dev, case, rng):
    backend, ops = dev
    k, stride, padding, h, w = case
    x = rng.permutation(2 * 3 * h * w).reshape(2, 3, h, w).astype(np.float32)  # distinct values
    pool = MaxPool2D(k, stride=stride, padding=padding)
    want_y = pool.forward(backend.asarray(x))
    dy = rng.standard_normal(want_y.shape).astype(np.float32)
    want_dx = pool.backward(backend.asarray(dy))
    y, cache = ops.max_pool_forward(backend.asarray(x), k, k, stride, padding)
    dx = ops.max_pool_backward(backend.asarray(dy), cache)
    np.testing.assert_array_equal(host(backend, y), host(backend, want_y))
    if stride >= k:  # one contribution per input: exact
        np.testing.assert_array_equal(host(backend, dx), host(backend, want_dx))
    else:  # overlapping windows: sums of the same dy values, perhaps in another order
        assert_within(host(backend, dx), host(backend, want_dx),
                      4 * U32 * (k * k) * np.abs(host(backend, want_dx)) + 1e-30, "dx")
    # each window's dy went to exactly one input
    np.testing.assert_allclose(host(backend, dx).sum(), dy.sum(), rtol=1e-5)


def test_max_pool_ties_go_to_the_first_maximum(dev):
    """Values within 16 float epsilons of the maximum count as tied, and the first one in
    row-major order takes the gradient: exact ties, and the hand-trained step's 1.9s with a
    later one a few ulps larger."""
    backend, ops = dev
    x = np.array([[3, 3, 1, 2], [3, 0, 2, 2]], dtype=np.float32)[None, None]
    x[0, 0, 1, 2] = np.nextafter(np.float32(2), np.float32(3))  # a later tie, 1 ulp larger
    dy = np.array([[[[5.0, 7.0]]]], dtype=np.float32)
    y, cache = ops.max_pool_forward(backend.asarray(x), 2, 2, 2)
    dx = host(backend, ops.max_pool_backward(backend.asarray(dy), cache))
    np.testing.assert_array_equal(dx[0, 0], [[5, 0, 0, 7], [0, 0, 0, 0]])
    pool = MaxPool2D(2)
    pool.forward(backend.asarray(x))
    np.testing.assert_array_equal(dx, host(backend, pool.backward(backend.asarray(dy))))
    x[0, 0, 1, 2] = 2.001  # far beyond 16 eps: no longer a tie
    _, cache = ops.max_pool_forward(backend.asarray(x), 2, 2, 2)
    dx = host(backend, ops.max_pool_backward(backend.asarray(dy), cache))
    np.testing.assert_array_equal(dx[0, 0], [[5, 0, 0, 0], [0, 0, 7, 0]])


@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool_matches_the_layer(dev, case, rng):
    backend, ops = dev
    k, stride, padding, h, w = case
    pool = AvgPool2D(k, stride=stride, padding=padding)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    dy = rng.standard_normal(pool.output_shape(x.shape)).astype(np.float32)
    bounds = linear_layer_bounds(pool, x, dy)
    want = {"y": pool.forward(backend.asarray(x))}
    want["dx"] = pool.backward(backend.asarray(dy))
    y, cache = ops.avg_pool_forward(backend.asarray(x), k, k, stride, padding)
    got = {"y": y, "dx": ops.avg_pool_backward(backend.asarray(dy), cache)}
    for key in got:
        assert got[key].dtype == np.float32
        assert_within(host(backend, got[key]), host(backend, want[key]), bounds[key], key)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_the_layer(dev, training, rng):
    backend, ops = dev
    x = (rng.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    bn = BatchNorm2D(3)
    bn.params["weight"][...] = rng.uniform(0.5, 1.5, 3)
    bn.params["bias"][...] = rng.standard_normal(3)
    bn.state["running_mean"][...] = rng.standard_normal(3)
    bn.state["running_var"][...] = rng.uniform(0.5, 2.0, 3)
    start = {name: value.copy() for name, value in bn.state.items()}
    bounds = batchnorm_bounds(x, bn.params["weight"], dy, bn.eps, training, bn.momentum,
                              running_stats=(start["running_mean"], start["running_var"]))
    bn.to(backend)
    bn.training = training
    want = {"y": bn.forward(backend.asarray(x))}
    want["dx"] = bn.backward(backend.asarray(dy))
    want.update({"grad weight": bn.grads["weight"], "grad bias": bn.grads["bias"],
                 "state running_mean": bn.state["running_mean"], "state running_var": bn.state["running_var"]})
    running_mean, running_var = backend.asarray(start["running_mean"]), backend.asarray(start["running_var"])
    y, cache = ops.batch_norm_forward(backend.asarray(x), bn.params["weight"], bn.params["bias"], bn.eps,
                                      training, running_mean, running_var, bn.momentum)
    dx, dgamma, dbeta = ops.batch_norm_backward(backend.asarray(dy), cache)
    got = {"y": y, "dx": dx, "grad weight": dgamma, "grad bias": dbeta,
           "state running_mean": running_mean, "state running_var": running_var}
    for key, value in got.items():
        assert value.dtype == np.float32, key
        bound = bounds.get(key, 0.0)  # evaluation: the running statistics stay as they were
        assert_within(host(backend, value), host(backend, want[key]), bound, key)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_matches_the_loss(dev, smoothing, rng):
    backend, ops = dev
    logits = (rng.standard_normal((7, 5)) * 3).astype(np.float32)
    labels = rng.integers(0, 5, 7)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=smoothing)
    want_loss = loss_fn.forward(backend.asarray(logits), backend.asarray(labels))
    want_grad = loss_fn.backward()
    loss, dlogits = ops.softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), smoothing)
    bounds = softmax_ce_bounds(logits, labels, smoothing)
    assert dlogits.dtype == np.float32
    assert_within(host(backend, loss), host(backend, want_loss), bounds["loss"], "loss")
    assert_within(host(backend, dlogits), host(backend, want_grad), bounds["dlogits"], "dlogits")
    np.testing.assert_allclose(host(backend, dlogits).sum(axis=1), 0, atol=1e-7)  # p and target both sum to 1


OPTIMIZERS = [
    (SGD, dict(lr=0.1)), (SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (Adam, dict(lr=1e-2, weight_decay=1e-3)), (AdamW, dict(lr=1e-2, weight_decay=0.1)),
]


@pytest.mark.parametrize("make, hyper", OPTIMIZERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_optimizer_updates_match(dev, make, hyper, rng):
    """Three steps with new gradients each: exact on NumPy (the same float32 operations in the
    same order); within a few roundings per step on the stand-in (the fused multi-tensor twin)."""
    backend, ops = dev
    model = Sequential([Dense(4, 3, rng=rng)]).to(backend)
    layer = model.layers[0]
    optimizer = make(model, **hyper)
    weights = {name: layer.params[name].copy() for name in layer.params}
    buffers = {name: {b: backend.xp.zeros_like(w) for b in ("velocity", "m", "v")} for name, w in weights.items()}
    for step in range(1, 4):
        for name, w in weights.items():
            grad = backend.asarray(rng.standard_normal(w.shape).astype(np.float32))
            layer.grads[name] = grad
            state = buffers[name]
            if make is SGD:
                ops.sgd_update(w, grad, state["velocity"], hyper["lr"], hyper.get("momentum", 0.0),
                               hyper.get("nesterov", False), hyper.get("weight_decay", 0.0))
            else:
                ops.adam_update(w, grad, state["m"], state["v"], step, hyper["lr"],
                                weight_decay=hyper["weight_decay"], decoupled=make is AdamW)
        optimizer.step()
    for name, w in weights.items():
        assert w.dtype == np.float32
        got, want = host(backend, w), host(backend, layer.params[name])
        if backend.name == "cpu":
            np.testing.assert_array_equal(got, want)
        else:
            assert_within(got, want, elementwise_bound(want, roundings=24) + 1e-6 * hyper["lr"], name)


# -- docs/math.md, "Worked examples", through the reference ------------------------------------
def test_hand_trained_step_through_the_reference(dev):
    """Conv ('same' for a 2x2 kernel: the extra zero row and column go top/left), ReLU,
    2x2 max pool with the FIRST maximum taking ties, upstream [10, 20, 30, 40], one SGD step."""
    backend, ops = dev
    xp = backend.xp
    x = backend.asarray(np.array(HAND_STEP_INPUT, dtype=np.float32)[None, None])  # (1, 1, 4, 4)
    weight = backend.asarray(np.array(HAND_STEP_KERNEL, dtype=np.float32)[None, None])  # (1, 1, 2, 2)
    bias = backend.asarray(np.array([HAND_STEP_BIAS], dtype=np.float32))
    tol = dict(rtol=0, atol=2e-6)
    conv_out, conv_cache = ops.conv2d_forward(x, weight, bias, 1, (1, 0, 1, 0))
    np.testing.assert_allclose(host(backend, conv_out)[0, 0], HAND_STEP_CONV_OUT, **tol)
    relu_out = xp.maximum(conv_out, 0)
    pooled, pool_cache = ops.max_pool_forward(relu_out, 2, 2, 2)
    np.testing.assert_allclose(host(backend, pooled).ravel(), HAND_STEP_POOLED, **tol)
    dpooled = backend.asarray(np.array([10, 20, 30, 40], dtype=np.float32).reshape(1, 1, 2, 2))
    drelu = ops.max_pool_backward(dpooled, pool_cache)
    np.testing.assert_array_equal(host(backend, drelu)[0, 0], HAND_STEP_POOL_GRAD)
    dconv = drelu * (conv_out > 0)
    dx, dweight, dbias = ops.conv2d_backward(dconv, weight, conv_cache)
    np.testing.assert_allclose(host(backend, dweight)[0, 0], HAND_STEP_KERNEL_GRAD, **tol)
    np.testing.assert_allclose(host(backend, dbias), [100], **tol)
    np.testing.assert_allclose(host(backend, dx)[0, 0], HAND_STEP_INPUT_GRAD, **tol)
    ops.sgd_update(weight, dweight, None, HAND_STEP_LR)
    ops.sgd_update(bias, dbias, None, HAND_STEP_LR)
    np.testing.assert_allclose(host(backend, weight)[0, 0], HAND_STEP_NEW_KERNEL, **tol)
    np.testing.assert_allclose(host(backend, bias), [HAND_STEP_NEW_BIAS], **tol)


def test_strided_convolution_as_a_matrix_product(dev):
    """s = 2, p = 0: each 3x3 window is a column of im2col, O = k^T @ columns; the kernel
    gradient is columns @ dL/dO and the input gradient col2im(k dL/dO^T), for L = sum(O)."""
    backend, ops = dev
    image = backend.asarray(np.array(STRIDED_I, dtype=np.float32)[None, None])  # (1, 1, 5, 5)
    kernel = backend.asarray(np.array(STRIDED_K, dtype=np.float32)[None, None])  # (1, 1, 3, 3)
    cols = host(backend, ops.im2col(image, 3, 3, 2, (0, 0, 0, 0)))  # (9, 4)
    assert cols.shape == (9, 4)
    np.testing.assert_array_equal(cols[:, 0], np.array(STRIDED_I)[0:3, 0:3].ravel())
    np.testing.assert_array_equal(cols[:, 3], np.array(STRIDED_I)[2:5, 2:5].ravel())
    np.testing.assert_array_equal((np.ravel(STRIDED_K) @ cols).reshape(2, 2), STRIDED_O)
    y, cache = ops.conv2d_forward(image, kernel, None, 2, (0, 0, 0, 0))
    np.testing.assert_array_equal(host(backend, y)[0, 0], STRIDED_O)
    ones = backend.asarray(np.ones((1, 1, 2, 2), dtype=np.float32))
    dx, dk, db = ops.conv2d_backward(ones, kernel, cache)
    np.testing.assert_array_equal(host(backend, dk)[0, 0], STRIDED_DK)
    np.testing.assert_array_equal(host(backend, dx)[0, 0], STRIDED_DI)
    dcols = backend.asarray(np.outer(np.ravel(STRIDED_K), np.ones(4)).astype(np.float32))  # (9, 4)
    np.testing.assert_array_equal(host(backend, ops.col2im(dcols, (1, 1, 5, 5), 3, 3, 2, (0,) * 4))[0, 0],
                                  STRIDED_DI)
    pooled, _ = ops.max_pool_forward(image, 3, 3, 2)
    np.testing.assert_array_equal(host(backend, pooled)[0, 0], STRIDED_MAXPOOL)
