"""Backend selection, and every layer, the loss and every optimizer equal across backends.

Each parity test runs on NumPy, on the CuPy stand-in (always; tests/standin/ checks every
call against the installed CuPy and fails the test on any finding) and on real CuPy when a
CUDA device is usable (skipped with the reason otherwise).

Adding a layer or an optimizer to every backend test, the strict stand-in included, is one
line: an entry in LAYERS or OPTIMIZERS below (a test fails until every class has one).
"""
from __future__ import annotations

import inspect
import sys
import types
import warnings

import numpy as np
import pytest

from gpucnn import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                    GlobalAvgPool2D, MaxPool2D, Normalize, ReLU, Sequential, SoftmaxCrossEntropy, optim)
from gpucnn.backends.backend import GPUFallbackWarning, array_module, get_backend, gpu_status
from gpucnn.nn.layers import LAYER_TYPES
from gpucnn.optim import SGD, Adam, AdamW
from tolerance import (assert_within, batchnorm_bounds, elementwise_bound, linear_layer_bounds,
                       softmax_ce_bounds)


# name -> (layer factory taking a host Generator, input shape). One line per case.
def evaluating(layer):
    layer.training = False
    return layer


LAYERS = {
    "conv_s1_same": (lambda r: Conv2D(3, 4, 3, padding="same", rng=r), (4, 3, 9, 9)),
    "conv_s2_pad": (lambda r: Conv2D(2, 5, (3, 2), stride=2, padding=((1, 0), (0, 1)), rng=r), (3, 2, 8, 7)),
    "relu": (lambda r: ReLU(), (3, 2, 5, 5)),
    "maxpool": (lambda r: MaxPool2D(2), (3, 2, 6, 6)),
    "maxpool_3s2p1": (lambda r: MaxPool2D(3, stride=2, padding=1), (3, 2, 7, 7)),
    "maxpool_1": (lambda r: MaxPool2D(1), (3, 2, 4, 4)),
    "avgpool": (lambda r: AvgPool2D(3, stride=2, padding=1), (3, 2, 7, 7)),
    "avgpool_2": (lambda r: AvgPool2D(2), (3, 2, 6, 6)),
    "flatten": (lambda r: Flatten(), (3, 2, 4, 4)),
    "dense": (lambda r: Dense(10, 6, rng=r), (5, 10)),
    "batchnorm2d": (lambda r: BatchNorm2D(2), (4, 2, 5, 5)),
    "batchnorm1d": (lambda r: BatchNorm1D(6), (8, 6)),
    # training-mode masks come from each device's own generator (they differ on real CuPy):
    # test_toolkit_layers.py checks them statistically on every backend
    "dropout_eval": (lambda r: evaluating(Dropout(0.3, rng=r)), (3, 2, 5, 5)),
    "globalavgpool": (lambda r: GlobalAvgPool2D(), (3, 2, 5, 5)),
    "normalize": (lambda r: Normalize([0.5, 0.2], [2.0, 4.0]), (3, 2, 5, 5)),
}

# name -> optimizer factory taking a model. One line per case.
OPTIMIZERS = {
    "sgd": lambda m: SGD(m, 0.1),
    "momentum": lambda m: SGD(m, 0.1, momentum=0.9),
    "adam": lambda m: Adam(m, 1e-2),
    "nesterov_wd": lambda m: SGD(m, 0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adamw": lambda m: AdamW(m, 1e-2),
}


def test_every_layer_and_optimizer_has_a_backend_case():
    """A new layer type or optimizer class joins the backend suite with one line above."""
    covered = {type(make(np.random.default_rng(0))) for make, _ in LAYERS.values()}
    missing = sorted(name for name, cls in LAYER_TYPES.items() if cls not in covered)
    assert not missing, f"add a line to LAYERS in tests/test_backends.py for: {', '.join(missing)}"
    model = Sequential([Dense(2, 2, rng=np.random.default_rng(0))])
    covered = {type(make(model)) for make in OPTIMIZERS.values()}
    classes = [cls for _, cls in inspect.getmembers(optim, inspect.isclass)
               if issubclass(cls, optim.Optimizer) and cls is not optim.Optimizer
               and cls.__module__ == optim.__name__]
    missing = sorted(cls.__name__ for cls in classes if cls not in covered)
    assert not missing, f"add a line to OPTIMIZERS in tests/test_backends.py for: {', '.join(missing)}"


# -- get_backend ------------------------------------------------------------------------
def test_cpu_backend_round_trip():
    b = get_backend("cpu")
    assert b.name == "cpu" and b.xp is np
    a = b.asarray([1, 2, 3], dtype=np.float32)
    assert a.dtype == np.float32 and isinstance(b.to_numpy(a), np.ndarray)
    b.synchronize()


def test_unknown_backend_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"'cpu', 'gpu', 'auto'.*got 'tpu'"):
        get_backend("tpu")


@pytest.mark.skipif(gpu_status()[0] is not None, reason="a GPU is present: no fallback to see")
def test_gpu_without_gpu_falls_back_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = get_backend("gpu")
    assert b.name == "cpu"
    fallback = [w for w in caught if issubclass(w.category, GPUFallbackWarning)]
    assert len(fallback) == 1
    assert "falling back to the CPU" in str(fallback[0].message)


def test_auto_without_gpu_is_silent_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_backend("auto").name == "cpu"


def _fake_cupy(device_count=None, alloc_error=None):
    cupy = types.ModuleType("cupy")

    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))

    def zeros(*a, **k):
        raise alloc_error
    cupy.zeros = zeros
    cupy.float32 = np.float32
    return cupy


@pytest.mark.parametrize("fake, reason", [
    (None, "CuPy is not importable"),
    (_fake_cupy(device_count=RuntimeError("cudaErrorNoDevice")), "CuPy is installed but no CUDA device is available"),
    (_fake_cupy(device_count=0), "CuPy is installed but no CUDA device is available"),
    (_fake_cupy(device_count=1, alloc_error=RuntimeError("out of memory")), "test allocation failed"),
])
def test_each_detection_step_names_its_failure(monkeypatch, fake, reason):
    monkeypatch.setitem(sys.modules, "cupy", fake)
    cupy, why = gpu_status()
    assert cupy is None and reason in why
    with pytest.warns(GPUFallbackWarning, match=reason):
        assert get_backend("gpu").name == "cpu"


# -- every layer: same host weights and data -> same numbers on every backend ----------------
EXACT = (ReLU, MaxPool2D, Dropout, Flatten)  # copies, comparisons and maxima: no rounding to differ


def parity_bounds(layer, x, y, dy):
    """{"y", "dx", "grad <name>"} -> how far two devices' float32 results may differ: the
    float32 error bound of what the layer computes (tests/tolerance.py)."""
    if isinstance(layer, EXACT):
        return {"y": 0.0, "dx": 0.0}
    if isinstance(layer, (BatchNorm1D, BatchNorm2D)):
        return batchnorm_bounds(x, layer.params["weight"], dy, layer.eps, layer.training, layer.momentum,
                                running_stats=(layer.state["running_mean"], layer.state["running_var"]))
    if isinstance(layer, Normalize):  # (x - mean) / std, and dy / std
        return {"y": elementwise_bound(y, 2), "dx": elementwise_bound(dy / np.asarray(layer.std).reshape(-1, 1, 1), 1)}
    return linear_layer_bounds(layer, x, dy)  # Conv2D, Dense, the average pools, Flatten


def layer_parity(name, backend):
    """Forward and backward of LAYERS[name] on ``backend`` against NumPy, from the same
    host weights and data, within the float32 error bound of the layer's computation;
    returns the device layer."""
    make, shape = LAYERS[name]
    host_layer = make(np.random.default_rng(3))
    dev_layer = make(np.random.default_rng(3)).to(backend)
    data = np.random.default_rng(4)
    x = data.standard_normal(shape).astype(np.float32)
    y = host_layer.forward(x)
    dy = data.standard_normal(y.shape).astype(np.float32)
    dx = host_layer.backward(dy)
    bounds = parity_bounds(make(np.random.default_rng(3)), x, y, dy)

    y_dev = dev_layer.forward(backend.asarray(x))
    dx_dev = dev_layer.backward(backend.asarray(dy))
    assert array_module(y_dev) is backend.xp and array_module(dx_dev) is backend.xp
    assert y_dev.dtype == np.float32 and dx_dev.dtype == np.float32
    assert_within(backend.to_numpy(y_dev), y, bounds["y"], f"{name} y")
    assert_within(backend.to_numpy(dx_dev), dx, bounds["dx"], f"{name} dx")
    for key in host_layer.grads:
        assert_within(backend.to_numpy(dev_layer.grads[key]), host_layer.grads[key], bounds[f"grad {key}"],
                      f"{name} grad {key}")
    return dev_layer


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_equal_across_backends(name, backend):
    layer_parity(name, backend)


def test_loss_equal_across_backends(backend):
    r = np.random.default_rng(5)
    logits = r.standard_normal((8, 10)).astype(np.float32)
    labels = r.integers(0, 10, 8)
    host, dev = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    loss = host.forward(logits, labels)
    loss_dev = dev.forward(backend.asarray(logits), backend.asarray(labels))
    bounds = softmax_ce_bounds(logits, labels)
    assert_within(float(loss_dev), float(loss), bounds["loss"], "loss")
    assert_within(backend.to_numpy(dev.backward()), host.backward(), bounds["dlogits"], "dlogits")


def small_model(seed):
    r = np.random.default_rng(seed)
    return Sequential([Conv2D(1, 4, 3, padding=1, rng=r), ReLU(), MaxPool2D(2),
                       Conv2D(4, 6, 3, stride=2, rng=r), ReLU(), AvgPool2D(1),
                       Flatten(), Dense(6 * 2 * 2, 10, rng=r)])


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_training_step_equal_across_backends(optimizer, backend):
    """forward, loss, backward, optimizer step (x2) from the same host weights and data."""
    data = np.random.default_rng(6)
    x = data.standard_normal((16, 1, 10, 10)).astype(np.float32)
    labels = data.integers(0, 10, 16)
    results = []
    for b in (get_backend("cpu"), backend):
        model = small_model(7).to(b)
        opt, loss_fn = OPTIMIZERS[optimizer](model), SoftmaxCrossEntropy()
        xb, yb = b.asarray(x), b.asarray(labels)
        losses = []
        for _ in range(2):
            losses.append(loss_fn.forward(model.forward(xb), yb))
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
        results.append(([float(v) for v in losses], model.state_dict()))
    (host_losses, host_state), (dev_losses, dev_state) = results
    np.testing.assert_allclose(dev_losses, host_losses, rtol=1e-5)
    for key in host_state:
        assert dev_state[key].dtype == np.float32
        np.testing.assert_allclose(dev_state[key], host_state[key], rtol=1e-4, atol=1e-5, err_msg=key)


# -- memory layout: batch-innermost from the first conv to the dense layer, both ways ----------
def batch_innermost(a) -> bool:
    """(N, C, H, W) whose memory is (C, H, W, N) (any slicing of it), or (N, F) whose memory
    is (F, N): the batch axis has the smallest stride and the others descend."""
    strides = a.strides
    return strides[0] == a.itemsize and list(strides[1:]) == sorted(strides[1:], reverse=True)


def test_layout_stays_batch_innermost_through_the_network(backend):
    """conv -> relu -> pool -> conv -> relu -> pool -> flatten -> dense, forward and backward:
    no layer hands on an NCHW (or (N, F) C-ordered) array, so no hidden transposing copies.
    On CuPy this needs every elementwise result written into an empty_like array."""
    r = np.random.default_rng(8)
    layers = [Conv2D(1, 4, 3, padding=1, rng=r), ReLU(), MaxPool2D(2), Conv2D(4, 6, 3, rng=r),
              MaxPool2D(3, stride=1, padding=1), ReLU(), AvgPool2D(2), Flatten(), Dense(6, 5, rng=r)]
    for layer in layers:
        layer.to(backend)
    x = backend.asarray(r.standard_normal((7, 1, 8, 8)).astype(np.float32))
    for layer in layers[:-1]:
        x = layer.forward(x)
        assert batch_innermost(x), f"{layer!r}.forward lost the layout: strides {x.strides}"
    dy = backend.asarray(r.standard_normal((7, 5)).astype(np.float32))
    dy = layers[-1].forward(x) * 0 + dy  # run the dense forward for its cache
    for layer in reversed(layers):
        dy = layer.backward(dy)
        assert batch_innermost(dy), f"{layer!r}.backward lost the layout: strides {dy.strides}"
