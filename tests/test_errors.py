"""Bad input gets a clear error naming the layer, what was expected and what was received."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import (AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential,
                    SoftmaxCrossEntropy)
from gpucnn.optim import SGD, Adam

R = np.random.default_rng(0)


def x32(*shape):
    return np.zeros(shape, dtype=np.float32)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: Conv2D(3, 4, 3, rng=R).forward(x32(32, 28, 28)), ValueError,
     r"Conv2D\(in_channels=3.*expected x of shape \(N, 3, H, W\), got \(32, 28, 28\); add a channel axis"),
    (lambda: Conv2D(3, 4, 3, rng=R).forward(x32(2, 1, 28, 28)), ValueError, r"\(N, 3, H, W\), got \(2, 1, 28, 28\)"),
    (lambda: Conv2D(1, 4, 3, rng=R).forward(np.zeros((2, 1, 8, 8))), TypeError,
     r"expected x of dtype float32, got float64; cast once"),
    (lambda: Conv2D(1, 4, 3, rng=R).forward(np.zeros((2, 1, 8, 8), dtype=np.uint8)), TypeError, r"float32, got uint8"),
    (lambda: Conv2D(1, 4, 5, rng=R).forward(x32(2, 1, 3, 3)), ValueError,
     r"kernel 5x5 is larger than the padded input 3x3"),
    (lambda: Conv2D(1, 0, 3, rng=R), ValueError, r"out_channels to be a positive int, got 0"),
    (lambda: Conv2D(1, 2, -1, rng=R), ValueError, r"kernel_size to be a positive int, got -1"),
    (lambda: Conv2D(1, 2, 3, stride=0, rng=R), ValueError, r"stride to be a positive int, got 0"),
    (lambda: Conv2D(1, 2, 3, padding="full", rng=R), ValueError, r"unknown padding mode 'full'"),
    (lambda: Conv2D(1, 2, 3, padding=-1, rng=R), ValueError, r"non-negative int padding"),
    (lambda: Conv2D(1, 2, 3, stride=2, padding="same", rng=R), ValueError, r"'same' needs stride=1"),
    (lambda: Conv2D(1, 2, 3, rng=42), TypeError, r"expected rng to be a numpy.random.Generator, got int"),
    (lambda: Conv2D(1, 2, 3, rng=R, dtype=np.int32), TypeError, r"expected dtype float32 or float64, got int32"),
    (lambda: MaxPool2D(0), ValueError, r"MaxPool2D expected kernel_size to be a positive int, got 0"),
    (lambda: MaxPool2D(2, stride=-2), ValueError, r"stride to be a positive int, got -2"),
    (lambda: MaxPool2D(2, padding=2), ValueError, r"at most half the kernel"),
    (lambda: MaxPool2D(3).forward(x32(1, 1, 2, 2)), ValueError, r"window 3x3 is larger than the padded input 2x2"),
    (lambda: AvgPool2D(2).forward(x32(1, 4, 4)), ValueError, r"expected x of shape \(N, C, H, W\), got \(1, 4, 4\)"),
    (lambda: ReLU().forward(np.zeros(3, dtype=np.int64)), TypeError, r"ReLU\(\) expected a float32 or float64 array, got int64"),
    (lambda: ReLU().forward([1.0, 2.0]), TypeError, r"expected an array"),
    (lambda: Dense(10, 2, rng=R).forward(x32(4, 2, 5)), ValueError, r"\(N, 10\), got \(4, 2, 5\); put a Flatten"),
    (lambda: Flatten().forward(x32(5)), ValueError, r"Flatten\(\) expected x of shape \(N, ...\), got \(5,\)"),
    (lambda: Sequential([]), ValueError, r"non-empty list of layers"),
    (lambda: Sequential([ReLU(), "relu"]), TypeError, r"got str at position 1"),
])
def test_bad_input_is_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("layer", [Conv2D(1, 2, 3, rng=R), ReLU(), MaxPool2D(2), AvgPool2D(2), Flatten(),
                                   Dense(3, 2, rng=R)])
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        layer.backward(x32(1, 2, 2, 2))


def test_backward_with_wrong_shape():
    conv = Conv2D(1, 2, 3, rng=R)
    conv.forward(x32(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 2, 3, 3\).*got \(2, 2, 5, 5\)"):
        conv.backward(x32(2, 2, 5, 5))


def test_loss_errors():
    loss = SoftmaxCrossEntropy()
    logits = x32(3, 10)
    with pytest.raises(ValueError, match=r"labels in \[0, 10\), got values in \[0, 10\]"):
        loss.forward(logits, np.array([0, 3, 10]))
    with pytest.raises(ValueError, match=r"labels in \[0, 10\), got values in \[-1, 3\]"):
        loss.forward(logits, np.array([0, 3, -1]))
    with pytest.raises(ValueError, match=r"labels of shape \(3,\).*got \(3, 10\); pass one integer class"):
        loss.forward(logits, np.eye(10)[:3].astype(np.int64))
    with pytest.raises(TypeError, match=r"integer labels, got float64"):
        loss.forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits of shape \(N, classes\), got \(3, 10, 1\)"):
        loss.forward(x32(3, 10, 1), np.array([0, 1, 2]))
    with pytest.raises(RuntimeError, match=r"before forward"):
        SoftmaxCrossEntropy().backward()


def test_optimizer_errors():
    model = Sequential([Dense(3, 2, rng=R)])
    with pytest.raises(ValueError, match=r"SGD expected lr > 0, got -0.1"):
        SGD(model, -0.1)
    with pytest.raises(ValueError, match=r"momentum < 1, got 1.5"):
        SGD(model, 0.1, momentum=1.5)
    with pytest.raises(RuntimeError, match=r"parameter 0.weight of Dense.*has no gradient"):
        Adam(model).step()
    with pytest.raises(TypeError, match=r"expected a gpucnn Sequential"):
        SGD([1, 2], 0.1)
