"""PyTorch as an independent oracle: forward values and autograd gradients on random
configurations. torch is a test-only dependency; these tests skip without it."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import AvgPool2D, Conv2D, Dense, MaxPool2D, SoftmaxCrossEntropy

torch = pytest.importorskip("torch", reason="PyTorch (test-only) is not installed: pip install torch")
F = torch.nn.functional


def as_torch(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


def random_conv_configs(n=12, seed=7):
    r = np.random.default_rng(seed)
    for _ in range(n):
        kh, kw = int(r.integers(1, 5)), int(r.integers(1, 5))
        stride = int(r.integers(1, 4))
        pad = (int(r.integers(0, kh)), int(r.integers(0, kw)))
        h, w = int(r.integers(kh, 12)), int(r.integers(kw, 12))
        yield int(r.integers(1, 4)), int(r.integers(1, 5)), (kh, kw), stride, pad, h, w


@pytest.mark.parametrize("config", list(random_conv_configs()), ids=str)
def test_conv2d_matches_torch(config, rng):
    c_in, c_out, kernel, stride, pad, h, w = config
    conv = Conv2D(c_in, c_out, kernel, stride=stride, padding=pad, dtype=np.float64, rng=rng)
    conv.params["bias"][...] = rng.standard_normal(c_out)
    x = rng.standard_normal((3, c_in, h, w))
    y = conv.forward(x)
    tx, tw, tb = as_torch(x), as_torch(conv.params["weight"]), as_torch(conv.params["bias"])
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.grads["weight"], tw.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.grads["bias"], tb.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_conv2d_float32_matches_torch(rng):
    conv = Conv2D(3, 8, 5, padding=2, rng=rng)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    ty = F.conv2d(torch.from_numpy(x), torch.from_numpy(conv.params["weight"]),
                  torch.from_numpy(conv.params["bias"]), padding=2)
    np.testing.assert_allclose(conv.forward(x), ty.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("kernel, stride, padding, h, w", [
    (2, 2, 0, 8, 8), (3, 2, 0, 9, 7), (3, 2, 1, 8, 8), (2, 1, 0, 5, 6), (3, 3, 1, 10, 10), (4, 2, 2, 9, 9)])
def test_pooling_matches_torch(mode, kernel, stride, padding, h, w, rng):
    layer = (MaxPool2D if mode == "max" else AvgPool2D)(kernel, stride=stride, padding=padding)
    x = rng.standard_normal((2, 3, h, w))
    y = layer.forward(x)
    tx = as_torch(x)
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    ty = fn(tx, kernel, stride=stride, padding=padding)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_maxpool_ties_match_torch():
    """Exact ties everywhere (ReLU zeros): both route to the first maximum."""
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, ::2, ::2] = 1.0
    pool = MaxPool2D(2)
    pool.forward(x)
    dy = np.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    tx = as_torch(x)
    F.max_pool2d(tx, 2).backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(pool.backward(dy), tx.grad.numpy())


def test_dense_matches_torch_linear(rng):
    dense = Dense(7, 4, dtype=np.float64, rng=rng)
    dense.params["bias"][...] = rng.standard_normal(4)
    x = rng.standard_normal((5, 7))
    tx, tw, tb = as_torch(x), as_torch(dense.params["weight"]), as_torch(dense.params["bias"])
    ty = F.linear(tx, tw.T, tb)  # torch stores (out, in); gpucnn (in, out)
    y = dense.forward(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dense.backward(dy), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dense.grads["weight"], tw.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dense.grads["bias"], tb.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_cross_entropy_matches_torch(scale, rng):
    logits = rng.standard_normal((9, 10)) * scale
    labels = rng.integers(0, 10, 9)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, labels)
    tl = as_torch(logits)
    t_loss = F.cross_entropy(tl, torch.from_numpy(labels))
    t_loss.backward()
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), tl.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_optimizers_match_torch(rng):
    """SGD, SGD+momentum and Adam: three steps on the same gradients as torch.optim."""
    from gpucnn import Sequential
    from gpucnn.optim import SGD, Adam
    for make_ours, make_theirs in [
        (lambda m: SGD(m, 0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
        (lambda m: SGD(m, 0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        (lambda m: Adam(m, 0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    ]:
        dense = Dense(3, 2, dtype=np.float64, rng=rng)
        model = Sequential([dense])
        opt = make_ours(model)
        tw = torch.tensor(dense.params["weight"].copy(), requires_grad=True)
        tb = torch.tensor(dense.params["bias"].copy(), requires_grad=True)
        topt = make_theirs([tw, tb])
        for _ in range(3):
            gw, gb = rng.standard_normal((3, 2)), rng.standard_normal(2)
            dense.grads = {"weight": gw, "bias": gb}
            tw.grad, tb.grad = torch.from_numpy(gw.copy()), torch.from_numpy(gb.copy())
            opt.step()
            topt.step()
        np.testing.assert_allclose(dense.params["weight"], tw.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(dense.params["bias"], tb.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_label_smoothed_cross_entropy_matches_torch(smoothing, scale, rng):
    logits = rng.standard_normal((9, 10)) * scale
    labels = rng.integers(0, 10, 9)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=smoothing)
    loss = loss_fn.forward(logits, labels)
    tl = as_torch(logits)
    t_loss = F.cross_entropy(tl, torch.from_numpy(labels), label_smoothing=smoothing)
    t_loss.backward()
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), tl.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_label_smoothed_cross_entropy_float32_matches_torch(rng):
    logits = (rng.standard_normal((16, 7)) * 5).astype(np.float32)
    labels = rng.integers(0, 7, 16)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=0.2)
    loss = loss_fn.forward(logits, labels)
    dlogits = loss_fn.backward()
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32
    tl = torch.tensor(logits, requires_grad=True)
    t_loss = F.cross_entropy(tl, torch.from_numpy(labels), label_smoothing=0.2)
    t_loss.backward()
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-6)
    np.testing.assert_allclose(dlogits, tl.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_label_smoothing_is_validated_and_shown():
    assert repr(SoftmaxCrossEntropy()) == "SoftmaxCrossEntropy()"
    assert repr(SoftmaxCrossEntropy(label_smoothing=0.1)) == "SoftmaxCrossEntropy(label_smoothing=0.1)"
    for bad in (-0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy expected 0 <= label_smoothing <= 1, got .*; "
                                             r"0.1 is the usual choice"):
            SoftmaxCrossEntropy(label_smoothing=bad)
