"""The toolkit layers of issue 10: BatchNorm2D, BatchNorm1D, Dropout, GlobalAvgPool2D,
Normalize. Naive references, float64 gradient checks, PyTorch as oracle, reproducible
dropout masks, every backend, saved running statistics, and Sequential's reordering."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gpucnn
import reference as ref
from gpucnn import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                    MaxPool2D, Normalize, ReLU, Sequential, SoftmaxCrossEntropy)
from gpucnn.backends.backend import array_module
from gpucnn.nn.layers import LAYER_TYPES, dropout as dropout_module
from gpucnn.nn.model import build, execution_order
from gpucnn.optim import SGD
from gpucnn.random import device_generator
from gradcheck import check_layer_gradients
from standin import optimizer_table_uploads, standin_backend
from test_backends import parity_bounds
from tolerance import assert_within

F = torch.nn.functional
F64 = dict(rtol=1e-10, atol=1e-10)


def chwn(x):
    """x (N, C, H, W) -> the same values as an NCHW view of (C, H, W, N) memory (Conv2D's output)."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # (N, C, H, W)


def random_affine(layer, rng):
    layer.params["weight"][...] = rng.standard_normal(layer.num_features)
    layer.params["bias"][...] = rng.standard_normal(layer.num_features)
    return layer


def as_torch(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


# -- naive references ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, shape, layout", [
    (lambda: BatchNorm2D(3, dtype=np.float64), (4, 3, 3, 5), "c"),
    (lambda: BatchNorm2D(3, dtype=np.float64), (4, 3, 3, 5), "chwn"),
    (lambda: BatchNorm1D(5, dtype=np.float64), (6, 5), "c"),
])
def test_batchnorm_training_matches_naive_reference(make, shape, layout, rng):
    layer = random_affine(make(), rng)
    x = 1.5 + 2 * rng.standard_normal(shape)
    x = chwn(x) if layout == "chwn" else x
    y = layer.forward(x)
    expected, mean, var = ref.batchnorm_forward(x, layer.params["weight"], layer.params["bias"], layer.eps)
    np.testing.assert_allclose(y, expected, **F64)
    dy = rng.standard_normal(shape)
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = ref.batchnorm_backward(x, layer.params["weight"], layer.eps, dy)
    np.testing.assert_allclose(dx, ref_dx, **F64)
    np.testing.assert_allclose(layer.grads["weight"], ref_dw, **F64)
    np.testing.assert_allclose(layer.grads["bias"], ref_db, **F64)
    count = x.size // x.shape[1]
    np.testing.assert_allclose(layer.state["running_mean"], 0.1 * mean, **F64)
    np.testing.assert_allclose(layer.state["running_var"], 0.9 + 0.1 * var * count / (count - 1), **F64)
    assert y.strides == x.strides and dx.strides == x.strides  # the input's memory layout


def test_batchnorm_eval_matches_naive_reference(rng):
    layer = random_affine(BatchNorm2D(3, dtype=np.float64), rng)
    layer.state["running_mean"] = rng.standard_normal(3)
    layer.state["running_var"] = rng.uniform(0.5, 2, 3)
    layer.training = False
    x = rng.standard_normal((2, 3, 4, 4))
    expected, _, _ = ref.batchnorm_forward(x, layer.params["weight"], layer.params["bias"], layer.eps,
                                           layer.state["running_mean"], layer.state["running_var"])
    np.testing.assert_allclose(layer.forward(x), expected, **F64)
    dy = rng.standard_normal(x.shape)
    scale = layer.params["weight"] / np.sqrt(layer.state["running_var"] + layer.eps)
    np.testing.assert_allclose(layer.backward(dy), dy * scale[:, None, None], **F64)


def test_dropout_mask_is_the_documented_device_draw(rng):
    """mask = gen.random(shape, float32) >= p, gen = device_generator(xp, host generator)."""
    p, x = 0.3, rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    layer = Dropout(p, rng=np.random.default_rng(11))
    y = layer.forward(x)
    keep = device_generator(np, np.random.default_rng(11)).random(x.shape, dtype=np.float32) >= p
    np.testing.assert_allclose(y, ref.dropout_forward(x.astype(np.float64), keep, p), rtol=1e-6)
    np.testing.assert_array_equal(y, np.where(keep, x * np.float32(1 / (1 - p)), 0))
    assert y.dtype == np.float32


def test_global_avg_pool_matches_naive_reference(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    layer = GlobalAvgPool2D()
    np.testing.assert_allclose(layer.forward(x), ref.global_avg_pool(x), **F64)
    dy = rng.standard_normal((3, 4))
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, np.broadcast_to(dy[:, :, None, None] / 30, x.shape), **F64)
    x32 = chwn(x.astype(np.float32))
    y32 = layer.forward(x32)
    assert y32.dtype == np.float32 and y32.shape == (3, 4)
    assert layer.backward(dy.astype(np.float32)).strides == x32.strides


def test_normalize_matches_naive_reference(rng):
    mean, std = [0.5, -1.0, 2.0], [0.25, 2.0, 1.5]
    layer = Normalize(mean, std, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(layer.forward(x), ref.normalize(x, mean, std), **F64)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(dy), dy / np.array(std)[:, None, None], **F64)
    x32 = chwn(x.astype(np.float32))
    y32 = Normalize(mean, std).forward(x32)
    assert y32.dtype == np.float32 and y32.strides == x32.strides
    np.testing.assert_allclose(y32, ref.normalize(x32, mean, std), rtol=1e-6, atol=1e-6)


# -- float64 central-difference gradient checks ---------------------------------------------------
@pytest.mark.parametrize("make, shape", [
    (lambda: BatchNorm2D(3, dtype=np.float64), (3, 3, 2, 3)),
    (lambda: BatchNorm1D(4, dtype=np.float64), (5, 4)),
])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(make, shape, training, rng):
    layer = random_affine(make(), rng)
    layer.state["running_mean"] = rng.standard_normal(layer.num_features)
    layer.state["running_var"] = rng.uniform(0.5, 2, layer.num_features)
    layer.training = training
    check_layer_gradients(layer, 0.5 + rng.standard_normal(shape), rng)


def test_dropout_gradient_with_the_mask_fixed(rng, monkeypatch):
    monkeypatch.setattr(dropout_module, "device_generator", lambda xp, host: xp.random.default_rng(5))
    check_layer_gradients(Dropout(0.4), rng.standard_normal((3, 2, 3, 3)), rng)


@pytest.mark.parametrize("make", [GlobalAvgPool2D, lambda: Normalize([0.1, -0.2], [0.5, 3.0], dtype=np.float64)])
def test_global_avg_pool_and_normalize_gradients(make, rng):
    check_layer_gradients(make(), rng.standard_normal((2, 2, 3, 4)), rng)


# -- PyTorch as oracle ------------------------------------------------------------------------------
@pytest.mark.parametrize("ours, theirs, shape", [
    (BatchNorm2D, torch.nn.BatchNorm2d, (4, 3, 5, 5)),
    (BatchNorm1D, torch.nn.BatchNorm1d, (8, 6)),
])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batchnorm_matches_torch_through_training_and_eval(ours, theirs, shape, momentum, rng):
    c = shape[1]
    layer = random_affine(ours(c, momentum=momentum, dtype=np.float64), rng)
    module = theirs(c, momentum=momentum).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.params["weight"]))
        module.bias.copy_(torch.from_numpy(layer.params["bias"]))
    for step in range(3):  # training steps on different batches: outputs, grads, running stats
        x = step + (1 + step) * rng.standard_normal(shape)
        tx = as_torch(x)
        module.zero_grad()
        ty = module(tx)
        y = layer.forward(x)
        np.testing.assert_allclose(y, ty.detach().numpy(), **F64)
        dy = rng.standard_normal(shape)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), **F64)
        np.testing.assert_allclose(layer.grads["weight"], module.weight.grad.numpy(), **F64)
        np.testing.assert_allclose(layer.grads["bias"], module.bias.grad.numpy(), **F64)
        np.testing.assert_allclose(layer.state["running_mean"], module.running_mean.numpy(), **F64)
        np.testing.assert_allclose(layer.state["running_var"], module.running_var.numpy(), **F64)
    layer.training = False
    module.eval()
    module.zero_grad()
    x = rng.standard_normal(shape)
    tx = as_torch(x)
    ty = module(tx)
    np.testing.assert_allclose(layer.forward(x), ty.detach().numpy(), **F64)
    dy = rng.standard_normal(shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), **F64)
    np.testing.assert_allclose(layer.grads["weight"], module.weight.grad.numpy(), **F64)
    np.testing.assert_allclose(layer.grads["bias"], module.bias.grad.numpy(), **F64)


def test_batchnorm2d_float32_on_conv_layout_matches_torch(rng):
    layer = random_affine(BatchNorm2D(8), rng)
    module = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.params["weight"]))
        module.bias.copy_(torch.from_numpy(layer.params["bias"]))
    x = chwn((3 + 2 * rng.standard_normal((16, 8, 6, 6))).astype(np.float32))
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    y = layer.forward(x)
    assert y.dtype == np.float32 and y.strides == x.strides
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=2e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    dx = layer.backward(dy)
    assert dx.dtype == np.float32 and dx.strides == x.strides
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(layer.grads["weight"], module.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.state["running_var"], module.running_var.numpy(), rtol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_matches_torch(p, rng):
    x = (rng.uniform(0.5, 2, 20000) * rng.choice([-1, 1], 20000)).astype(np.float32)  # no zeros
    layer = Dropout(p, rng=np.random.default_rng(0))
    y = layer.forward(x)
    kept = y != 0
    assert abs(1 - kept.mean() - p) < 0.02  # ~6 standard deviations
    torch.manual_seed(0)
    ty = F.dropout(torch.from_numpy(x), p, training=True).numpy()
    both = kept & (ty != 0)
    assert both.sum() > 0.5 * (1 - p) ** 2 * x.size  # about half the positions both keep
    np.testing.assert_array_equal(y[both], ty[both])  # kept values scaled exactly as torch does
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / (1 - p)))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, np.where(kept, dy * np.float32(1 / (1 - p)), 0))  # same mask
    layer.training = False
    assert layer.forward(x) is x and layer.backward(dy) is dy  # identity, as torch in eval mode
    np.testing.assert_array_equal(F.dropout(torch.from_numpy(x), p, training=False).numpy(), x)


def test_dropout_p_zero_is_the_identity_and_draws_nothing():
    gpucnn.manual_seed(3)
    before = gpucnn.default_generator().bit_generator.state
    x = np.ones((4, 5), dtype=np.float32)
    assert Dropout(0.0).forward(x) is x
    assert gpucnn.default_generator().bit_generator.state == before


def test_global_avg_pool_matches_torch(rng):
    x = rng.standard_normal((3, 5, 7, 6))
    tx = as_torch(x)
    ty = F.adaptive_avg_pool2d(tx, 1).flatten(1)
    layer = GlobalAvgPool2D()
    np.testing.assert_allclose(layer.forward(x), ty.detach().numpy(), **F64)
    dy = rng.standard_normal((3, 5))
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), **F64)


# -- reproducible dropout masks -----------------------------------------------------------------------
def _masks(layer, n=3, shape=(4, 6)):
    x = np.ones(shape, dtype=np.float32)
    return [layer.forward(x) != 0 for _ in range(n)]


def test_manual_seed_reproduces_dropout_masks():
    layer = Dropout(0.5)  # rng=None: gpucnn's default generator, looked up at each forward
    gpucnn.manual_seed(21)
    first = _masks(layer)
    gpucnn.manual_seed(21)
    again = _masks(layer)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # each forward draws a new mask


def test_restoring_the_host_generator_state_reproduces_the_next_masks():
    host = np.random.default_rng(8)
    layer = Dropout(0.5, rng=host)
    _masks(layer, n=2)
    saved = host.bit_generator.state
    expected = _masks(layer)
    host.bit_generator.state = saved
    for a, b in zip(expected, _masks(layer)):
        np.testing.assert_array_equal(a, b)
    layer.rng = np.random.default_rng(8)  # assignable: a fresh generator replays from the start
    replay = _masks(Dropout(0.5, rng=np.random.default_rng(8)), n=2)
    for a, b in zip(replay, _masks(layer, n=2)):
        np.testing.assert_array_equal(a, b)


# -- every backend ----------------------------------------------------------------------------------
def _bn(cls, c, training):
    def make(r):
        layer = random_affine(cls(c), r)
        layer.state["running_mean"] = r.standard_normal(c).astype(np.float32)
        layer.state["running_var"] = r.uniform(0.5, 2, c).astype(np.float32)
        layer.training = training
        return layer
    return make


BACKEND_CASES = {
    "bn2d_train": (_bn(BatchNorm2D, 3, True), (4, 3, 5, 5), "c"),
    "bn2d_train_conv_layout": (_bn(BatchNorm2D, 3, True), (4, 3, 5, 5), "chwn"),
    "bn2d_eval_conv_layout": (_bn(BatchNorm2D, 3, False), (4, 3, 5, 5), "chwn"),
    "bn1d_train": (_bn(BatchNorm1D, 6, True), (8, 6), "c"),
    "bn1d_eval": (_bn(BatchNorm1D, 6, False), (8, 6), "c"),
    "global_avg_pool": (lambda r: GlobalAvgPool2D(), (3, 4, 5, 5), "chwn"),
    "normalize": (lambda r: Normalize([0.5, -0.5, 1.0], [0.2, 1.0, 3.0]), (3, 3, 4, 4), "chwn"),
}


def _upload(backend, x, layout):
    if layout == "chwn":  # build the layout on the device, as Conv2D does
        return backend.asarray(np.ascontiguousarray(x.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2)
    return backend.asarray(x)


@pytest.mark.parametrize("name", list(BACKEND_CASES))
def test_toolkit_layer_equal_across_backends(name, device_backend):
    make, shape, layout = BACKEND_CASES[name]
    host_layer = make(np.random.default_rng(3))
    dev_layer = make(np.random.default_rng(3)).to(device_backend)
    dev_layer.training = host_layer.training
    data = np.random.default_rng(4)
    x = (1 + 2 * data.standard_normal(shape)).astype(np.float32)
    x_host = chwn(x) if layout == "chwn" else x
    y = host_layer.forward(x_host)
    dy = data.standard_normal(y.shape).astype(np.float32)
    dx = host_layer.backward(dy)

    x_dev = _upload(device_backend, x, layout)
    y_dev = dev_layer.forward(x_dev)
    dx_dev = dev_layer.backward(device_backend.asarray(dy))
    assert array_module(y_dev) is device_backend.xp and array_module(dx_dev) is device_backend.xp
    if name != "global_avg_pool":
        assert y_dev.strides == x_dev.strides
    assert dx_dev.strides == x_dev.strides
    bounds = parity_bounds(make(np.random.default_rng(3)), x_host, y, dy)
    for what, host, dev in [("y", y, y_dev), ("dx", dx, dx_dev),
                            *[(f"grad {k}", host_layer.grads[k], dev_layer.grads[k]) for k in host_layer.grads],
                            *[(f"state {k}", host_layer.state[k], dev_layer.state[k]) for k in host_layer.state]]:
        got = device_backend.to_numpy(dev)
        assert got.dtype == np.float32
        # running statistics in eval mode are never touched: equal
        assert_within(got, host, bounds.get(what, 0.0), f"{name} {what}")


def test_dropout_on_every_backend(device_backend):
    layer = Dropout(0.25, rng=np.random.default_rng(2)).to(device_backend)
    data = np.random.default_rng(5)
    x = (data.uniform(0.5, 2, (8, 4, 6, 6)) * data.choice([-1, 1], (8, 4, 6, 6))).astype(np.float32)
    x_dev = _upload(device_backend, x, "chwn")
    y = layer.forward(x_dev)
    dy = data.standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(device_backend.asarray(dy))
    assert array_module(y) is device_backend.xp and array_module(dx) is device_backend.xp
    assert y.strides == x_dev.strides and dx.strides == x_dev.strides
    y_host, dx_host = device_backend.to_numpy(y), device_backend.to_numpy(dx)
    kept, scale = y_host != 0, np.float32(1 / 0.75)
    assert abs(1 - kept.mean() - 0.25) < 0.05
    np.testing.assert_array_equal(y_host, np.where(kept, x * scale, 0))
    np.testing.assert_array_equal(dx_host, np.where(kept, dy * scale, 0))
    layer.rng = np.random.default_rng(2)  # the same host generator -> the same device mask
    np.testing.assert_array_equal(device_backend.to_numpy(layer.forward(x_dev)), y_host)


def toolkit_model(seed=0, dropout=True):
    r = np.random.default_rng(seed)
    return Sequential([Normalize([0.5], [0.25]), Conv2D(1, 4, 3, padding=1, rng=r), BatchNorm2D(4),
                       ReLU(), MaxPool2D(2), Conv2D(4, 6, 3, rng=r), ReLU(), BatchNorm2D(6),
                       GlobalAvgPool2D(), *([Dropout(0.3, rng=r)] if dropout else []),
                       Dense(6, 8, rng=r), BatchNorm1D(8), ReLU(), Dense(8, 3, rng=r)])


def test_training_steps_with_toolkit_layers_make_no_hidden_transfers():
    b = standin_backend()
    model = toolkit_model(dropout=False).to(b)  # Dropout: see test_dropout_on_every_backend
    opt, loss_fn = SGD(model, 0.1), SoftmaxCrossEntropy()
    x = b.asarray(np.random.default_rng(0).uniform(0, 1, (8, 1, 8, 8)).astype(np.float32))
    y = b.asarray(np.arange(8) % 3)
    b.xp.reset_transfers()
    for _ in range(2):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
    model.eval()
    model.forward(x)
    assert b.xp.transfers == {"to_device": optimizer_table_uploads(b), "to_host": 0}  # the table: once


# -- Sequential: saved state, summary, rebuild, reordering -----------------------------------------------
def _train_a_little(model, steps=3):
    r = np.random.default_rng(9)
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model, 0.05)
    for _ in range(steps):
        x = r.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
        loss_fn.forward(model.forward(x), r.integers(0, 3, 8))
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()


def test_save_load_keeps_running_statistics(tmp_path):
    model = toolkit_model(1)
    _train_a_little(model)
    model.eval()
    x = np.random.default_rng(2).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    expected = model.forward(x)
    state = model.state_dict()
    assert {"2.running_mean", "2.running_var", "7.running_mean", "11.running_var"} <= set(state)
    assert not np.allclose(state["2.running_mean"], 0)  # training moved them
    model.save(tmp_path / "m.npz")
    loaded = gpucnn.load(tmp_path / "m.npz").eval()
    np.testing.assert_array_equal(loaded.forward(x), expected)
    assert loaded.layers[0].get_config() == {"mean": [0.5], "std": [0.25], "dtype": "float32"}


def test_a_file_without_running_statistics_still_loads(tmp_path):
    model = toolkit_model(1)
    _train_a_little(model)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as data:
        old = {k: data[k] for k in data.files if "running_" not in k}
    np.savez(tmp_path / "old.npz", **old)
    loaded = gpucnn.load(tmp_path / "old.npz")
    for i in (2, 7, 11):
        np.testing.assert_array_equal(loaded.layers[i].state["running_mean"], 0)
        np.testing.assert_array_equal(loaded.layers[i].state["running_var"], 1)
    np.testing.assert_array_equal(loaded.state_dict()["1.weight"], model.state_dict()["1.weight"])


def test_summary_describe_and_rebuild_cover_the_new_layers():
    model = toolkit_model()
    text = model.summary((2, 1, 8, 8))
    for shape in ["(2, 1, 8, 8)", "(2, 4, 8, 8)", "(2, 6, 2, 2)", "(2, 6)", "(2, 8)", "(2, 3)"]:
        assert shape in text
    assert f"{4 + 4:,}" in text  # BatchNorm2D(4): weight and bias; running stats are not params
    assert model.layers[0].describe() == "Normalize 1ch"
    assert model.layers[2].describe() == "BatchNorm2D 4"
    assert model.layers[8].describe() == "GlobalAvgPool2D"
    assert model.layers[9].describe() == "Dropout 0.3"
    assert model.layers[11].describe() == "BatchNorm1D 8"
    for name in ("BatchNorm2D", "BatchNorm1D", "Dropout", "GlobalAvgPool2D", "Normalize"):
        assert LAYER_TYPES[name] is getattr(gpucnn, name) and name in gpucnn.__all__
    g, masks = np.random.default_rng(4), np.random.default_rng(5)
    rebuilt = build(model.architecture(), rng=g, dropout_rng=masks)
    assert rebuilt.architecture() == model.architecture()
    assert rebuilt.layers[9].rng is masks  # Dropout draws masks from its own generator, not the weights'
    assert build(model.architecture(), rng=g).layers[9].rng is None  # None: gpucnn's default generator


def _given_order(layers, x, dy):
    for layer in layers:
        x = layer.forward(x)
    out = x
    for layer in reversed(layers):
        dy = layer.backward(dy)
    return out, dy


@pytest.mark.parametrize("make, swapped", [
    (lambda r: [Conv2D(2, 4, 3, padding=1, rng=r), BatchNorm2D(4), ReLU(), MaxPool2D(2)], [0, 1, 3, 2]),
    (lambda r: [Conv2D(2, 4, 3, padding=1, rng=r), ReLU(), MaxPool2D(2), BatchNorm2D(4)], [0, 2, 1, 3]),
    (lambda r: [Conv2D(2, 4, 3, padding=1, rng=r), ReLU(), BatchNorm2D(4), MaxPool2D(2)], [0, 1, 2, 3]),
])
def test_reordering_stays_exact_with_batchnorm(make, swapped):
    """Sequential runs a ReLU after a directly following MaxPool2D; BatchNorm does not
    commute with pooling and is never moved: same values and gradients as the given order."""
    model = Sequential(make(np.random.default_rng(0)))
    plain = make(np.random.default_rng(0))
    assert execution_order(model.layers) == swapped
    data = np.random.default_rng(1)
    x = data.standard_normal((4, 2, 6, 6)).astype(np.float32)
    y = model.forward(x)
    dy = data.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dy)
    y_ref, dx_ref = _given_order(plain, x, dy)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    for ours, theirs in zip(model.layers, plain):
        for key in ours.params:
            if isinstance(ours, Conv2D):  # with a directly following pool it runs as one unit
                # (gpucnn.nn.execution_units), its gradient adding the same products in another order
                scale = np.abs(theirs.grads[key]).max()
                np.testing.assert_allclose(ours.grads[key], theirs.grads[key], rtol=0, atol=1e-6 * scale)
            else:
                np.testing.assert_array_equal(ours.grads[key], theirs.grads[key])
        for key in ours.state:
            np.testing.assert_array_equal(ours.state[key], theirs.state[key])


# -- errors ------------------------------------------------------------------------------------------
def x32(*shape):
    return np.zeros(shape, dtype=np.float32)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: BatchNorm2D(0), ValueError, r"BatchNorm2D expected num_features to be a positive int, got 0"),
    (lambda: BatchNorm1D(2.5), ValueError, r"BatchNorm1D expected num_features to be a positive int, got 2.5"),
    (lambda: BatchNorm2D(16).forward(x32(8, 3, 5, 5)), ValueError,
     r"^BatchNorm2D\(num_features=16\) expected x of shape \(N, 16, H, W\), got \(8, 3, 5, 5\)$"),
    (lambda: BatchNorm2D(16).forward(x32(8, 16)), ValueError, r"got \(8, 16\); use BatchNorm1D"),
    (lambda: BatchNorm1D(16).forward(x32(8, 16, 2, 2)), ValueError,
     r"BatchNorm1D\(num_features=16\) expected x of shape \(N, 16\), got \(8, 16, 2, 2\); use BatchNorm2D"),
    (lambda: BatchNorm2D(3).forward(x32(1, 3, 1, 1)), ValueError, r"more than 1 value per channel in training mode"),
    (lambda: BatchNorm2D(3).forward(np.zeros((2, 3, 2, 2))), TypeError, r"expected x of dtype float32, got float64"),
    (lambda: BatchNorm2D(3, eps=0), ValueError, r"BatchNorm2D expected eps > 0, got 0"),
    (lambda: BatchNorm2D(3, momentum=1.5), ValueError, r"expected momentum in \[0, 1\], got 1.5"),
    (lambda: BatchNorm2D(3).backward(x32(2, 3, 2, 2)), RuntimeError, r"backward\(\) called before forward"),
    (lambda: Dropout(1.0), ValueError, r"Dropout expected p, the probability of zeroing a value, in \[0, 1\), got 1.0"),
    (lambda: Dropout(-0.1), ValueError, r"in \[0, 1\), got -0.1"),
    (lambda: Dropout(True), ValueError, r"in \[0, 1\), got True"),
    (lambda: Dropout(0.5, rng=42), TypeError, r"Dropout expected rng to be a numpy.random.Generator, got int"),
    (lambda: Dropout(0.5).forward(np.zeros(3, dtype=np.int64)), TypeError, r"expected a float32 or float64 array"),
    (lambda: Normalize([0.5], [0.0]), ValueError, r"Normalize expected every std > 0, got std=\[0.0\]"),
    (lambda: Normalize([0.5, 0.5], [-1.0, 1.0]), ValueError, r"every std > 0"),
    (lambda: Normalize([0.5, 0.5], [1.0]), ValueError, r"same length.*got 2 means and 1 stds"),
    (lambda: Normalize(0.5, [0.2]), ValueError, r"mean as a sequence of per-channel floats, got 0.5; pass mean=\[0.5\]"),
    (lambda: Normalize([], []), ValueError, r"one value per channel, got an empty sequence"),
    (lambda: Normalize([0.1], [0.3]).forward(x32(2, 3, 4, 4)), ValueError,
     r"Normalize\(1 channels\) expected x of shape \(N, 1, H, W\), got \(2, 3, 4, 4\)"),
    (lambda: Normalize([0.1], [0.3]).forward(x32(2, 4, 4)), ValueError, r"add a channel axis with x\[:, None\]"),
    (lambda: GlobalAvgPool2D().forward(x32(2, 4, 4)), ValueError,
     r"GlobalAvgPool2D\(\) expected x of shape \(N, C, H, W\), got \(2, 4, 4\)"),
    (lambda: GlobalAvgPool2D().backward(x32(2, 4)), RuntimeError, r"called before forward"),
])
def test_toolkit_layer_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_backward_refuses_a_dy_of_the_wrong_shape():
    layer = BatchNorm2D(2)
    layer.forward(np.ones((2, 2, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 2, 3, 3\)"):
        layer.backward(x32(2, 2, 3))
    drop = Dropout(0.5)
    drop.forward(x32(4, 3))
    with pytest.raises(ValueError, match=r"expected dy of shape \(4, 3\)"):
        drop.backward(x32(3, 4))
