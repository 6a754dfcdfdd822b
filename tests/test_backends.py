"""Backend selection, and every layer and a full training step equal across backends.

The device backends are the CuPy-rules stand-in (always; see tests/standin.py) and a
real CUDA GPU when one is present (skipped with the reason otherwise)."""
from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest

from gpucnn import (AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential,
                    SoftmaxCrossEntropy)
from gpucnn.backend import GPUFallbackWarning, array_module, get_backend, gpu_status
from gpucnn.optim import SGD, Adam
from standin import DeviceDisciplineError, standin_backend

F32 = dict(rtol=2e-5, atol=2e-6)  # float32 tolerances: BLAS summation order differs per device


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


# -- the stand-in enforces CuPy's rules -----------------------------------------------------
def test_standin_refuses_numpy_functions_and_host_mixing():
    b = standin_backend()
    x = b.asarray(np.ones((2, 3), dtype=np.float32))
    for bad in (lambda: np.exp(x), lambda: np.pad(x, 1), lambda: np.asarray(x), lambda: np.sum(x),
                lambda: x + np.ones(3, np.float32), lambda: np.ones(3, np.float32) * x,
                lambda: x[np.array([0, 1])]):
        with pytest.raises(TypeError):
            bad()
    assert isinstance(DeviceDisciplineError("x"), TypeError)
    y = np.float32(2) * x + 1.5  # scalars are fine, as on CuPy
    assert array_module(y) is b.xp
    assert b.xp.transfers == {"to_device": 1, "to_host": 0}
    float(y.sum())
    b.to_numpy(y)
    assert b.xp.transfers == {"to_device": 1, "to_host": 2}


# -- every layer: same host weights and data -> same numbers on every backend ----------------
LAYERS = {
    "conv_s1_same": (lambda r: Conv2D(3, 4, 3, padding="same", rng=r), (4, 3, 9, 9)),
    "conv_s2_pad": (lambda r: Conv2D(2, 5, (3, 2), stride=2, padding=((1, 0), (0, 1)), rng=r), (3, 2, 8, 7)),
    "relu": (lambda r: ReLU(), (3, 2, 5, 5)),
    "maxpool": (lambda r: MaxPool2D(2), (3, 2, 6, 6)),
    "maxpool_3s2p1": (lambda r: MaxPool2D(3, stride=2, padding=1), (3, 2, 7, 7)),
    "avgpool": (lambda r: AvgPool2D(3, stride=2, padding=1), (3, 2, 7, 7)),
    "flatten": (lambda r: Flatten(), (3, 2, 4, 4)),
    "dense": (lambda r: Dense(10, 6, rng=r), (5, 10)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_equal_across_backends(name, device_backend):
    make, shape = LAYERS[name]
    host_layer = make(np.random.default_rng(3))
    dev_layer = make(np.random.default_rng(3)).to(device_backend)
    data = np.random.default_rng(4)
    x = data.standard_normal(shape).astype(np.float32)
    y = host_layer.forward(x)
    dy = data.standard_normal(y.shape).astype(np.float32)
    dx = host_layer.backward(dy)

    y_dev = dev_layer.forward(device_backend.asarray(x))
    dx_dev = dev_layer.backward(device_backend.asarray(dy))
    assert array_module(y_dev) is device_backend.xp and array_module(dx_dev) is device_backend.xp
    np.testing.assert_allclose(device_backend.to_numpy(y_dev), y, **F32)
    np.testing.assert_allclose(device_backend.to_numpy(dx_dev), dx, **F32)
    assert device_backend.to_numpy(dx_dev).dtype == np.float32
    for key in host_layer.grads:
        np.testing.assert_allclose(device_backend.to_numpy(dev_layer.grads[key]), host_layer.grads[key], **F32)


def test_loss_equal_across_backends(device_backend):
    r = np.random.default_rng(5)
    logits = r.standard_normal((8, 10)).astype(np.float32)
    labels = r.integers(0, 10, 8)
    host, dev = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    loss = host.forward(logits, labels)
    loss_dev = dev.forward(device_backend.asarray(logits), device_backend.asarray(labels))
    assert float(loss_dev) == pytest.approx(float(loss), rel=1e-6)
    np.testing.assert_allclose(device_backend.to_numpy(dev.backward()), host.backward(), **F32)


def small_model(seed):
    r = np.random.default_rng(seed)
    return Sequential([Conv2D(1, 4, 3, padding=1, rng=r), ReLU(), MaxPool2D(2),
                       Conv2D(4, 6, 3, stride=2, rng=r), ReLU(), AvgPool2D(1),
                       Flatten(), Dense(6 * 2 * 2, 10, rng=r)])


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_training_step_equal_across_backends(optimizer, device_backend):
    """forward, loss, backward, optimizer step (x2) from the same host weights and data."""
    make_opt = {"sgd": lambda m: SGD(m, 0.1), "momentum": lambda m: SGD(m, 0.1, momentum=0.9),
                "adam": lambda m: Adam(m, 1e-2)}[optimizer]
    data = np.random.default_rng(6)
    x = data.standard_normal((16, 1, 10, 10)).astype(np.float32)
    labels = data.integers(0, 10, 16)
    results = []
    for backend in (get_backend("cpu"), device_backend):
        model = small_model(7).to(backend)
        opt, loss_fn = make_opt(model), SoftmaxCrossEntropy()
        xb, yb = backend.asarray(x), backend.asarray(labels)
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


def test_training_step_makes_no_hidden_transfers():
    """Inside the batch loop: no upload, no download (no float(loss), no sync)."""
    b = standin_backend()
    model = small_model(8).to(b)
    opt, loss_fn = Adam(model), SoftmaxCrossEntropy()
    x = b.asarray(np.random.default_rng(0).standard_normal((8, 1, 10, 10)).astype(np.float32))
    y = b.asarray(np.arange(8) % 10)
    b.xp.reset_transfers()
    for _ in range(3):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
    assert b.xp.transfers == {"to_device": 0, "to_host": 0}
