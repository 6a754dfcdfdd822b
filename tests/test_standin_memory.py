"""The stand-in's count of device memory (tests/standin/memory.py), and what it shows of
Conv2D's scratch: a layer's columns in channel groups (gpucnn/nn/layers/conv_chunks.py) lower a
step's high-water mark by about the columns it no longer holds at once. Device: the stand-in."""
from __future__ import annotations

import gc

import numpy as np

from gpucnn import Conv2D
from gpucnn.nn.layers import conv as conv_module
from gpucnn.nn.layers import conv_chunks, scratch
from standin import standin_backend


def test_a_buffer_counts_once_from_its_first_device_array_until_it_is_freed():
    xp = standin_backend().xp
    start = xp.memory.live
    a = xp.zeros((10, 100), dtype=np.float32)
    assert xp.memory.live == start + 4000
    view, row = a.T, a[3]
    assert xp.memory.live == start + 4000  # views share the buffer
    b = a + 1  # a new buffer
    assert xp.memory.live == start + 8000 and xp.memory.peak >= start + 8000
    del a, view, row, b
    gc.collect()
    assert xp.memory.live == start
    xp.memory.reset_peak()
    assert xp.memory.peak == start


def step_peak(chunk_bytes, monkeypatch) -> int:
    """Bytes above the start of a second forward + backward of a conv whose columns are shared."""
    monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", 0)
    monkeypatch.setattr(conv_chunks, "CHUNK_BYTES", chunk_bytes)
    backend = standin_backend(kernels="all")
    scratch.release_shared_scratch(backend.xp)
    layer = Conv2D(8, 4, 3, padding=1, rng=np.random.default_rng(0)).to(backend)
    x = backend.asarray(np.ones((4, 8, 16, 16), np.float32))
    dy = backend.asarray(np.ones((4, 4, 16, 16), np.float32))
    layer.forward(x), layer.backward(dy)
    scratch.release_shared_scratch(backend.xp)
    gc.collect()
    memory = backend.xp.memory
    memory.reset_peak()
    start = memory.live
    layer.forward(x), layer.backward(dy)
    return memory.peak - start


def test_channel_groups_lower_a_steps_high_water_mark(monkeypatch):
    whole, grouped = step_peak(2 ** 40, monkeypatch), step_peak(1, monkeypatch)
    columns = (8 * 9 + 1) * 16 * 16 * 4 * 4  # the layer's columns, bytes
    group = (9 + 1) * 16 * 16 * 4 * 4  # one channel's, with the ones row
    # saved: the columns less one group's, less what the grouped backward holds longer (its dx
    # is made before the groups fill it: 32 KiB here)
    assert 0.75 * (columns - group) <= whole - grouped <= columns - group
