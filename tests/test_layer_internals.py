"""Internals behind the layers' speed: the columns' ones row that carries Conv2D's bias,
workspaces that are set up once, and the accuracy of BatchNorm's one-pass variance."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import BatchNorm2D, Conv2D


def test_conv_bias_rides_in_the_gemm_across_batch_sizes(rng):
    """The ones row is written when the columns' workspace is (re)made, for every shape."""
    conv = Conv2D(2, 3, 3, padding=1, rng=rng)
    conv.params["bias"][...] = [0.5, -1.0, 2.0]
    for n in (4, 2, 2, 4):  # a new workspace, a new shape, the same one again, back
        x = rng.standard_normal((n, 2, 5, 5)).astype(np.float32)
        expected = conv.forward(x) - conv.params["bias"][:, None, None]
        conv.params["bias"][...] = 0
        np.testing.assert_allclose(conv.forward(x), expected, rtol=1e-6, atol=1e-6)
        conv.params["bias"][...] = [0.5, -1.0, 2.0]
        cols = conv._buffers["cols"]
        np.testing.assert_array_equal(cols[-1], 1)  # the ones row
        dy = rng.standard_normal((n, 3, 5, 5)).astype(np.float32)
        conv.forward(x)
        conv.backward(dy)
        np.testing.assert_allclose(conv.grads["bias"], dy.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_workspace_initialize_runs_only_for_a_new_buffer():
    conv = Conv2D(1, 1, 1)
    calls = []
    first = conv._workspace("w", (2, 3), np.float32, np, initialize=calls.append)
    again = conv._workspace("w", (2, 3), np.float32, np, initialize=calls.append)
    other = conv._workspace("w", (3, 3), np.float32, np, initialize=calls.append)
    assert first is again and other is not first and calls == [first, other]


@pytest.mark.parametrize("offset, tolerance", [(0.0, 1e-5), (3.0, 1e-4), (10.0, 2e-3)])
def test_batchnorm_one_pass_variance_in_float32(offset, tolerance, rng):
    """E[x^2] - mean^2 in float32 loses digits as |mean| / std grows (the documented limit):
    these are the offsets convolution outputs have, checked against float64."""
    x = (offset + rng.standard_normal((64, 4, 16, 16))).astype(np.float32)
    layer = BatchNorm2D(4)
    layer.forward(x)
    count = x.size // 4
    unbiased = x.astype(np.float64).var(axis=(0, 2, 3)) * count / (count - 1)
    running_var = (layer.state["running_var"] - 0.9) / 0.1  # one step from 1 with momentum 0.1
    np.testing.assert_allclose(running_var, unbiased, rtol=tolerance)


@pytest.mark.parametrize("kernel", [2, 3])
def test_tiled_max_pool_backward_equals_the_offset_by_offset_path(kernel, monkeypatch):
    """Windows that tile a batch-innermost input take the all-offsets-at-once path; with ties
    (equal and within 16 eps) it must route dy exactly as the general path does."""
    from gpucnn.nn.layers import MaxPool2D, pooling
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 2 * kernel * 3, kernel * 4)).astype(np.float32)
    x[:, :, ::kernel, 1::kernel] = x[:, :, ::kernel, ::kernel]  # exact ties in the first row
    x[:, 1, 1::kernel, ::kernel] = x[:, 1, ::kernel, ::kernel] * np.float32(1 - 4e-7)  # ties within eps
    x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # (C, H, W, N) memory
    layer = MaxPool2D(kernel)
    y = layer.forward(x)
    dy = np.ascontiguousarray(rng.standard_normal(y.shape).astype(np.float32).transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    tiled_calls = []
    route = pooling.MaxPool2D._route_tiled
    monkeypatch.setattr(pooling.MaxPool2D, "_route_tiled",
                        lambda self, *a: (tiled_calls.append(1), route(self, *a))[1])
    fast = layer.backward(dy)
    assert tiled_calls
    monkeypatch.setattr(pooling, "_batch_innermost", lambda a: False)
    general = layer.backward(dy)
    np.testing.assert_array_equal(fast, general)
    assert np.count_nonzero(fast) == dy.size  # one input per window
