"""Float64 central-difference gradient checks for every layer and a whole model."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, SoftmaxCrossEntropy
from gradcheck import check_layer_gradients, numeric_grad


@pytest.mark.parametrize("stride, padding", [  # 'same' is defined for stride 1 only
    (1, 0), (1, 1), (1, "same"), (1, ((0, 1), (2, 0))), (2, 0), (2, 1), (2, ((0, 1), (2, 0)))])
def test_conv2d_gradients(stride, padding, rng):
    conv = Conv2D(2, 3, 3, stride=stride, padding=padding, dtype=np.float64, rng=rng)
    conv.params["bias"][...] = rng.standard_normal(3)
    check_layer_gradients(conv, rng.standard_normal((2, 2, 6, 5)), rng)


def test_conv2d_even_kernel_gradients(rng):
    conv = Conv2D(3, 2, (2, 3), stride=2, padding="valid", dtype=np.float64, rng=rng)
    check_layer_gradients(conv, rng.standard_normal((3, 3, 7, 6)), rng)


@pytest.mark.parametrize("layer_cls", [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 0), (3, 2, 1), (2, 1, 1)])
def test_pooling_gradients(layer_cls, kernel, stride, padding, rng):
    layer = layer_cls(kernel, stride=stride, padding=padding)
    # distinct values spaced far apart, so the max never switches under a 1e-6 nudge
    x = rng.permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6) * 0.1
    check_layer_gradients(layer, x.astype(np.float64), rng)


def test_relu_gradients(rng):
    x = rng.standard_normal((3, 2, 4, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    check_layer_gradients(ReLU(), x, rng)


def test_dense_and_flatten_gradients(rng):
    check_layer_gradients(Dense(12, 5, dtype=np.float64, rng=rng), rng.standard_normal((4, 12)), rng)
    check_layer_gradients(Flatten(), rng.standard_normal((2, 3, 2, 2)), rng)


def test_softmax_cross_entropy_gradient(rng):
    logits = rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, 5)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, labels)
    analytic = loss_fn.backward()
    numeric = numeric_grad(lambda: float(SoftmaxCrossEntropy().forward(logits, labels)), logits)
    np.testing.assert_allclose(analytic, numeric, atol=1e-8, rtol=1e-6)


def test_whole_model_gradients(rng):
    """Conv(s=1) -> ReLU -> MaxPool -> Conv(s=2, pad) -> AvgPool -> Flatten -> Dense -> loss, batch 3."""
    model = Sequential([
        Conv2D(2, 3, 3, padding=1, dtype=np.float64, rng=rng), ReLU(), MaxPool2D(2),
        Conv2D(3, 4, 3, stride=2, padding=1, dtype=np.float64, rng=rng), AvgPool2D(2),
        Flatten(), Dense(4, 5, dtype=np.float64, rng=rng),
    ])
    for layer in model.layers:
        if "bias" in layer.params:
            layer.params["bias"][...] = rng.standard_normal(layer.params["bias"].shape) * 0.1
    x = rng.standard_normal((3, 2, 8, 8))
    labels = rng.integers(0, 5, 3)

    def loss():
        return float(SoftmaxCrossEntropy().forward(model.forward(x), labels))

    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(x), labels)
    dx = model.backward(loss_fn.backward())
    analytic = {key: layer.grads[name].copy() for key, layer, name in model.named_parameters()}
    np.testing.assert_allclose(dx, numeric_grad(loss, x), atol=1e-7, rtol=1e-5)
    for key, layer, name in model.named_parameters():
        np.testing.assert_allclose(analytic[key], numeric_grad(loss, layer.params[name]),
                                   atol=1e-7, rtol=1e-5, err_msg=key)
