"""gpucnn.nn.execution_units: a Conv2D and the tiling max pool after it run as one unit, in the
window-blocked layout, with the numbers of the two layers run one by one."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, Normalize, ReLU, Sequential
from gpucnn.nn.execution_units import POOL_PASSES_SAVED, ConvPool, execution_units
from gpucnn.nn.layers.im2col import col2im, im2col, to_chwn


def unit_kinds(layers):
    return [type(unit).__name__ for unit in execution_units(layers)]


def test_a_conv_and_a_tiling_pool_after_it_become_one_unit():
    r = np.random.default_rng(0)
    assert unit_kinds([Conv2D(1, 4, 3, rng=r), ReLU(), MaxPool2D(2), Flatten()]) == ["ConvPool", "ReLU", "Flatten"]
    assert unit_kinds([Conv2D(1, 4, 3, rng=r), MaxPool2D(3)]) == ["ConvPool"]
    # windows that overlap, leave gaps or read padding: not a tiling, run as given
    assert unit_kinds([Conv2D(1, 4, 3, rng=r), MaxPool2D(3, stride=2)]) == ["Conv2D", "MaxPool2D"]
    assert unit_kinds([Conv2D(1, 4, 3, rng=r), MaxPool2D(2, padding=1)]) == ["Conv2D", "MaxPool2D"]
    assert unit_kinds([Conv2D(1, 4, 3, rng=r), MaxPool2D((2, 1), stride=2)]) == ["Conv2D", "MaxPool2D"]
    # something in between (BatchNorm does not commute with pooling)
    assert unit_kinds([Conv2D(1, 4, 3, rng=r), BatchNorm2D(4), MaxPool2D(2)]) == ["Conv2D", "BatchNorm2D", "MaxPool2D"]


def test_the_unit_is_made_only_where_the_blocked_layout_pays_off():
    """K = C_in*kh*kw rows of im2col (and of col2im, except for the first layer with
    parameters) against POOL_PASSES_SAVED passes over the C_out output channels."""
    r = np.random.default_rng(0)
    assert POOL_PASSES_SAVED == 4
    # first layer: K <= 4 C_out
    assert unit_kinds([Conv2D(2, 9, 4, rng=r), MaxPool2D(2)]) == ["ConvPool"]  # K = 32 <= 36
    assert unit_kinds([Conv2D(2, 7, 4, rng=r), MaxPool2D(2)]) == ["Conv2D", "MaxPool2D"]  # 32 > 28
    # later layers: 2K <= 4 C_out (lenet's second conv, K = 400 and C_out = 32, is not made one)
    later = [Conv2D(1, 8, 3, rng=r), MaxPool2D(2), Conv2D(8, 36, 3, rng=r), MaxPool2D(2),
             Conv2D(36, 32, 5, rng=r), MaxPool2D(2)]
    assert unit_kinds(later) == ["ConvPool", "ConvPool", "Conv2D", "MaxPool2D"]  # 144 <= 144; 1800 > 128
    # a layer without parameters in front does not make the first Conv2D a later one
    assert unit_kinds([Normalize([0.5], [0.25]), Conv2D(1, 1, 2, rng=r), MaxPool2D(2)]) == ["Normalize", "ConvPool"]


@pytest.mark.parametrize("blocks", [(1, 1), (2, 2), (3, 2)])
def test_im2col_blocks_reorder_the_columns_and_col2im_is_still_its_adjoint(blocks):
    """Column (ph, pw, oh', ow', n) of the blocked columns is column (bh*oh' + ph, bw*ow' + pw,
    n) of the plain ones; col2im with the same blocks gives the plain col2im's dx."""
    data = np.random.default_rng(1)
    x = data.standard_normal((3, 2, 8, 9))  # (N, C, H, W)
    x_chwn = to_chwn(x, 1, 1, 2, 1)  # (C, 10, 12, N)
    kh, kw, stride = 3, 2, 1  # room for 8x11 outputs; use the most that the blocks divide
    out_h, out_w = 8 - 8 % blocks[0], 10 - 10 % blocks[1]
    plain = im2col(x_chwn, kh, kw, stride, out_h, out_w)  # (C*kh*kw, OH*OW*N)
    blocked = im2col(x_chwn, kh, kw, stride, out_h, out_w, blocks=blocks)
    bh, bw = blocks
    k, n = plain.shape[0], x.shape[0]
    as_blocks = (plain.reshape(k, out_h // bh, bh, out_w // bw, bw, n)  # (K, OH', bh, OW', bw, N)
                 .transpose(0, 2, 4, 1, 3, 5).reshape(k, -1))  # (K, bh*bw*OH'*OW'*N)
    np.testing.assert_array_equal(blocked, as_blocks)

    dcols = data.standard_normal(plain.shape)
    dcols_blocked = (dcols.reshape(k, out_h // bh, bh, out_w // bw, bw, n)
                     .transpose(0, 2, 4, 1, 3, 5).reshape(k, -1))
    dx = col2im(dcols, 2, kh, kw, x_chwn.shape[1:3], stride, out_h, out_w)
    np.testing.assert_array_equal(col2im(dcols_blocked, 2, kh, kw, x_chwn.shape[1:3], stride, out_h, out_w,
                                         blocks), dx)
    # adjoint: <im2col(x), dcols> == <x, col2im(dcols)>
    np.testing.assert_allclose(np.vdot(blocked, dcols_blocked), np.vdot(x_chwn, dx), rtol=1e-12)


def conv_pool_pair(stride=1, padding=0, pool=2, seed=2, dtype=np.float64):
    r = np.random.default_rng(seed)
    return Conv2D(2, 3, 3, stride=stride, padding=padding, dtype=dtype, rng=r), MaxPool2D(pool)


@pytest.mark.parametrize("stride, padding, pool, size", [(1, 0, 2, 10), (1, 1, 2, 8), (2, 1, 2, 8), (1, 0, 3, 11)])
def test_conv_pool_unit_equals_the_two_layers(stride, padding, pool, size):
    """Forward values and dx exactly, the weight gradient to rounding (it adds the same
    products in another order); ties (exact and negative) go to the first maximum."""
    data = np.random.default_rng(3)
    x = data.standard_normal((4, 2, size, size))
    x[:, :, : size // 2] = np.round(x[:, :, : size // 2])  # many exact ties in the conv's output
    fused_conv, fused_pool = conv_pool_pair(stride, padding, pool)
    conv, plain_pool = conv_pool_pair(stride, padding, pool)
    unit = ConvPool(fused_conv, fused_pool)

    y = unit.forward(x)
    assert fused_pool.cached_blocks  # the blocked path ran
    y_ref = plain_pool.forward(conv.forward(x))
    np.testing.assert_array_equal(y, y_ref)
    dy = data.standard_normal(y.shape)
    dy[:, :, ::2] = 0.0
    dx = unit.backward(dy)
    np.testing.assert_array_equal(dx, conv.backward(plain_pool.backward(dy)))
    for key in ("weight", "bias"):
        np.testing.assert_allclose(fused_conv.grads[key], conv.grads[key], rtol=1e-12, atol=1e-12)
    assert unit.backward(dy, need_input_grad=False) is None


def test_sizes_the_pool_does_not_divide_run_the_two_layers_as_given():
    """A 9x9 convolution output under 2x2 pooling (the last row and column dropped): the
    plain calls, same numbers."""
    data = np.random.default_rng(4)
    x = data.standard_normal((2, 2, 11, 11))
    fused_conv, fused_pool = conv_pool_pair()
    conv, plain_pool = conv_pool_pair()
    unit = ConvPool(fused_conv, fused_pool)
    y = unit.forward(x)
    assert not fused_pool.cached_blocks
    np.testing.assert_array_equal(y, plain_pool.forward(conv.forward(x)))
    dy = data.standard_normal(y.shape)
    np.testing.assert_array_equal(unit.backward(dy), conv.backward(plain_pool.backward(dy)))
    np.testing.assert_array_equal(fused_conv.grads["weight"], conv.grads["weight"])


def test_a_model_trains_through_the_unit_like_the_layers_one_by_one():
    """Sequential with ConvPool units (and ReLU moved after the pool) against the layers
    run one by one in the declared order, in float32: equal to float32 rounding."""
    def layers(r):
        return [Conv2D(1, 4, 3, rng=r), ReLU(), MaxPool2D(2), Conv2D(4, 18, 3, padding=1, rng=r), ReLU(),
                MaxPool2D(2), Flatten(), Dense(18 * 3 * 3, 5, rng=r)]  # 2 * K = 72 <= 4 * C_out
    model, plain = Sequential(layers(np.random.default_rng(5))), layers(np.random.default_rng(5))
    assert [type(u).__name__ for u in model._units] == ["ConvPool", "ReLU", "ConvPool", "ReLU", "Flatten", "Dense"]
    data = np.random.default_rng(6)
    x = data.random((8, 1, 14, 14), dtype=np.float32)
    y = model.forward(x)
    h = x
    for layer in plain:
        h = layer.forward(h)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    dy = data.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dy)
    d = dy
    for layer in reversed(plain):
        d = layer.backward(d)
    np.testing.assert_allclose(dx, d, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(model.layers, plain):
        for key in ours.params:
            scale = np.abs(theirs.grads[key]).max()
            np.testing.assert_allclose(ours.grads[key], theirs.grads[key], rtol=0, atol=1e-5 * scale)


def test_the_blocked_and_plain_entry_points_refuse_each_others_cache():
    conv, pool = conv_pool_pair()
    x = np.random.default_rng(7).standard_normal((2, 2, 10, 10))
    y = ConvPool(conv, pool).forward(x)
    with pytest.raises(RuntimeError, match=r"backward\(\) after forward_blocks\(\); call backward_blocks\(\)"):
        pool.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=r"backward\(\) after forward_blocks\(\); call backward_blocks\(\)"):
        conv.backward(np.ones((2, 3, 8, 8)))
    conv.forward(x)
    with pytest.raises(ValueError, match=r"backward_blocks expected dy of shape \(3, 1, 1, 8, 8, 2\)"):
        conv.backward_blocks(np.ones((3, 2, 2, 4, 4, 2)))  # forward ran plain: blocks (1, 1)
    pool.forward(conv.forward(x))
    with pytest.raises(RuntimeError, match=r"backward_blocks\(\) after forward\(\); call backward\(\)"):
        pool.backward_blocks(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"blocks \(3, 3\) must divide the output size 8x8"):
        conv.forward_blocks(x, (3, 3))
