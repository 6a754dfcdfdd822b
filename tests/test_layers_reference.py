"""Layers against the naive-loop references in tests/reference.py, on random configurations."""
from __future__ import annotations

import numpy as np
import pytest

import reference
from gpucnn import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, SoftmaxCrossEntropy

CONV_CASES = [  # (C_in, C_out, kernel, stride, padding, H, W)
    (1, 1, 3, 1, 0, 5, 5),
    (2, 3, 3, 1, 1, 6, 7),
    (3, 2, 3, 2, 0, 7, 7),
    (2, 4, (2, 3), 2, 1, 8, 6),
    (1, 2, 2, 1, "same", 5, 4),
    (3, 2, 3, 1, "same", 5, 5),
    (2, 2, 3, 2, ((1, 0), (2, 1)), 6, 5),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_naive_loops(case, rng):
    c_in, c_out, k, stride, padding, h, w = case
    conv = Conv2D(c_in, c_out, k, stride=stride, padding=padding, dtype=np.float64, rng=rng)
    conv.params["bias"][...] = rng.standard_normal(c_out)
    x = rng.standard_normal((3, c_in, h, w))
    y = conv.forward(x)
    ref = reference.conv2d(x, conv.params["weight"], conv.params["bias"], stride, conv.pads)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dy_before = dy.copy()
    dx = conv.backward(dy)
    ref_dx, ref_dw, ref_db = reference.conv2d_backward(x, conv.params["weight"], dy, stride, conv.pads)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["weight"], ref_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["bias"], ref_db, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(dy, dy_before)  # backward never mutates dy


POOL_CASES = [(2, None, 0, 4, 4), (2, None, 0, 5, 7), (3, 2, 0, 5, 5), (3, 2, 1, 6, 6), (2, 1, 0, 4, 5), (3, 3, 1, 7, 7)]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_naive_loops(mode, case, rng):
    k, stride, padding, h, w = case
    layer = (MaxPool2D if mode == "max" else AvgPool2D)(k, stride=stride, padding=padding)
    x = rng.permutation(2 * 3 * h * w).reshape(2, 3, h, w).astype(np.float64)  # distinct values
    y = layer.forward(x)
    ref, where = reference.pool2d(x, k, layer.stride, mode, padding)
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, reference.pool2d_backward(x.shape, dy, k, layer.stride, mode, where, padding),
                               rtol=1e-12, atol=1e-12)


def test_maxpool_ties_go_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 4))
    x[0, 0] = [[3, 3, 1, 2], [3, 0, 2, 2]]
    pool = MaxPool2D(2)
    pool.forward(x)
    dx = pool.backward(np.array([[[[5.0, 7.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[5, 0, 0, 7], [0, 0, 0, 0]])


def test_dense_relu_flatten_match_numpy(rng):
    dense = Dense(6, 4, dtype=np.float64, rng=rng)
    x = rng.standard_normal((5, 6))
    np.testing.assert_allclose(dense.forward(x), x @ dense.params["weight"] + dense.params["bias"])
    relu = ReLU()
    z = rng.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(relu.forward(z), np.maximum(z, 0))
    flatten = Flatten()
    t = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_array_equal(flatten.forward(t), t.reshape(2, 60))
    np.testing.assert_array_equal(flatten.backward(t.reshape(2, 60)), t)


def test_softmax_cross_entropy_matches_naive_loops(rng):
    logits = rng.standard_normal((6, 10)) * 5
    labels = rng.integers(0, 10, 6)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, labels)
    ref_loss, ref_grad = reference.softmax_cross_entropy(logits, labels)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), ref_grad, rtol=1e-10, atol=1e-14)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], dtype=np.float32)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, np.array([0, 0]))
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(1e5 / 2, rel=1e-6)
    assert np.all(np.isfinite(loss_fn.backward()))


@pytest.mark.parametrize("make", [
    lambda r: Conv2D(2, 3, 3, padding=1, rng=r), lambda r: MaxPool2D(2), lambda r: AvgPool2D(2),
    lambda r: ReLU(), lambda r: Flatten(),
])
def test_float32_stays_float32(make, rng):
    layer = make(rng)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    dx = layer.backward(np.ones(y.shape, dtype=np.float32))
    assert dx.dtype == np.float32
    for g in layer.grads.values():
        assert g.dtype == np.float32
    for p in layer.params.values():
        assert p.dtype == np.float32


def test_float32_dense_and_loss(rng):
    dense = Dense(8, 3, rng=rng)
    y = dense.forward(rng.standard_normal((4, 8)).astype(np.float32))
    loss_fn = SoftmaxCrossEntropy()
    assert loss_fn.forward(y, np.array([0, 1, 2, 0])).dtype == np.float32
    g = loss_fn.backward()
    assert g.dtype == np.float32 and dense.backward(g).dtype == np.float32
    assert dense.grads["weight"].dtype == np.float32
