"""Conv2D's large im2col columns on the fused GPU path go to one buffer per device
(gpucnn/nn/layers/scratch.py) and are rebuilt in backward from the kept input: the same
numbers as the private-columns path and as NumPy (inputs and weights are multiples of
1/4, so every sum is exact on every device), and one buffer for every layer.
Device: the CuPy stand-in, and a real GPU where present."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import Conv2D, MaxPool2D, ReLU, Sequential
from gpucnn.backends.backend import get_backend
from gpucnn.nn.layers import conv as conv_module
from gpucnn.nn.layers import scratch
from standin import standin_backend


def two_convs(seed):
    r = np.random.default_rng(seed)
    model = Sequential([Conv2D(2, 4, 3, padding=1, rng=r), ReLU(), MaxPool2D(2),
                        Conv2D(4, 3, (3, 2), stride=1, padding=((1, 0), (0, 1)), rng=r)])
    for layer in (model.layers[0], model.layers[3]):  # multiples of 1/4: exact sums in any order
        layer.params = {k: (np.round(v * 4) / 4).astype(np.float32) for k, v in layer.params.items()}
    return model


def run(model, backend, x, dy):
    model = model.to(backend)
    y = model.forward(backend.asarray(x))
    dx = model.backward(backend.asarray(dy))
    grads = {f"{i}.{k}": backend.to_numpy(v) for i, layer in enumerate(model.layers) for k, v in layer.grads.items()}
    return backend.to_numpy(y), backend.to_numpy(dx), grads


def assert_equals_numpy(backend, data_seed, model_seed):
    """two_convs forward and backward on ``backend`` give NumPy's output, input gradient and
    weight gradients exactly (inputs in multiples of 1/4: exact sums on every side)."""
    data = np.random.default_rng(data_seed)
    x = (data.integers(-4, 5, (3, 2, 8, 8)) / 4).astype(np.float32)
    dy = (data.integers(-4, 5, (3, 3, 3, 4)) / 4).astype(np.float32)
    dev = run(two_convs(model_seed), backend, x, dy)
    host = run(two_convs(model_seed), get_backend("cpu"), x, dy)
    np.testing.assert_array_equal(dev[0], host[0])
    np.testing.assert_array_equal(dev[1], host[1])
    for key in host[2]:
        np.testing.assert_array_equal(dev[2][key], host[2][key], err_msg=key)


@pytest.mark.parametrize("threshold", [0, 2 ** 40])  # every layer shared / every layer private
def test_shared_columns_give_the_numbers_of_private_ones_and_of_numpy(monkeypatch, threshold, kernel_backend):
    monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", threshold)
    assert_equals_numpy(kernel_backend, data_seed=0, model_seed=1)


def test_every_conv_of_a_device_uses_one_columns_buffer(monkeypatch):
    monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", 0)
    backend = standin_backend(kernels="im2col")
    model = two_convs(2).to(backend)
    model.forward(backend.asarray(np.ones((2, 2, 8, 8), np.float32)))
    first, second = model.layers[0], model.layers[3]
    assert not first._buffers and not second._buffers  # no private columns kept
    assert first._cache[0].x is not None and second._cache[0].shape == (4 * 3 * 2 + 1, 3 * 4 * 2)
    held = scratch._BUFFERS[backend.xp]["conv columns"]
    assert held.size == (2 * 9 + 1) * 8 * 8 * 2  # the larger of the two layers' columns


def test_the_column_gradients_reuse_the_columns_memory(monkeypatch):
    """Backward writes W^T dy into the shared columns (dead once the weight gradient is taken):
    one buffer per device for both, not two. Stand-in."""
    monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", 0)
    backend = standin_backend(kernels="im2col")
    model = two_convs(3).to(backend)
    model.forward(backend.asarray(np.ones((2, 2, 8, 8), np.float32)))
    model.backward(backend.asarray(np.ones((2, 3, 3, 4), np.float32)))
    assert list(scratch._BUFFERS[backend.xp]) == ["conv columns"]


def test_rebuilding_costs_two_launches_in_backward(monkeypatch):
    def launches(threshold):
        monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", threshold)
        backend = standin_backend(kernels="im2col")
        layer = Conv2D(3, 5, 3, padding=1, rng=np.random.default_rng(0)).to(backend)
        x = backend.asarray(np.ones((2, 3, 6, 6), np.float32))
        dy = backend.asarray(np.ones((2, 5, 6, 6), np.float32))
        layer.forward(x), layer.backward(dy)  # first step: private buffers get made
        before = backend.xp.work.launches
        layer.forward(x)
        middle = backend.xp.work.launches
        layer.backward(dy)
        return middle - before, backend.xp.work.launches - middle

    (private_forward, private_backward), (shared_forward, shared_backward) = launches(2 ** 40), launches(0)
    assert shared_forward == private_forward + 1  # the ones row
    assert shared_backward == private_backward + 2  # the ones row and im2col again


@pytest.mark.parametrize("chunk_bytes", [1, 2 * 9 * 3 * 8 * 8 * 4])  # a channel a group; two channels
def test_columns_in_channel_groups_give_the_numbers_of_numpy(monkeypatch, chunk_bytes, kernel_backend):
    """Columns over CHUNK_BYTES go a group of input channels at a time (conv_chunks.py): forward
    adds the groups' products, backward takes each group's gradient rows and dx channels. With
    sums exact on every device, the outputs, input gradients and weight gradients equal NumPy's."""
    from gpucnn.nn.layers import conv_chunks
    monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", 0)
    monkeypatch.setattr(conv_chunks, "CHUNK_BYTES", chunk_bytes)
    assert_equals_numpy(kernel_backend, data_seed=5, model_seed=4)


def test_channel_groups_keep_the_columns_under_the_limit():
    from gpucnn.nn.layers.conv_chunks import channel_groups
    per_channel = 9 * 1000 * 4  # 3x3 rows of 1000 columns, float32
    assert channel_groups(64, 3, 3, 1000, 4, limit=10 * per_channel) == [  # 7 groups, as even as they go
        (0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60), (60, 64)]
    assert channel_groups(64, 3, 3, 1000, 4, limit=56 * per_channel) == [(0, 32), (32, 64)]  # not 56 + 8
    assert channel_groups(5, 3, 3, 1000, 4, limit=1) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert channel_groups(5, 3, 3, 1000, 4, limit=10**9) == [(0, 5)]


def test_grouped_columns_hold_one_group_at_a_time(monkeypatch):
    """The shared buffer holds one group's columns (with the ones row), not the layer's. Stand-in."""
    from gpucnn.nn.layers import conv_chunks
    monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", 0)
    monkeypatch.setattr(conv_chunks, "CHUNK_BYTES", 1)  # one input channel a group
    backend = standin_backend(kernels="all")
    layer = Conv2D(4, 3, 3, padding=1, rng=np.random.default_rng(0)).to(backend)
    layer.forward(backend.asarray(np.ones((2, 4, 6, 6), np.float32)))
    layer.backward(backend.asarray(np.ones((2, 3, 6, 6), np.float32)))
    assert scratch._BUFFERS[backend.xp]["conv columns"].size == (9 + 1) * 6 * 6 * 2  # not (4 * 9 + 1) rows
