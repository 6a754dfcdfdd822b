"""im2col / col2im by kernel offsets, shared by Conv2D and the pooling layers.

Both loop over the ``kh * kw`` kernel offsets only: each offset (i, j) is one
strided slice of the padded input, copied whole (im2col) or added back whole
(col2im). No Python loop ever runs over samples or pixels.

Seed 004 ("convolution as a matrix multiplication"): after im2col the
convolution of every window with every kernel is one matrix multiply.
"""
from __future__ import annotations

from ..backend import array_module


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    """Seed 004: o = (i + p_before + p_after - k) // s + 1 (floor, as PyTorch)."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def offset_slices(i: int, j: int, stride: int, out_h: int, out_w: int):
    """The (rows, cols) slices of the padded input that kernel offset (i, j) reads."""
    return (
        slice(i, i + stride * (out_h - 1) + 1, stride),
        slice(j, j + stride * (out_w - 1) + 1, stride),
    )


def im2col(x_padded, kh: int, kw: int, stride: int, out_h: int, out_w: int):
    """(N, C, Hp, Wp) -> columns (C, kh, kw, N, out_h, out_w).

    Reshaped to (C*kh*kw, N*out_h*out_w) each column is one receptive field.
    """
    xp = array_module(x_padded)
    n, c = x_padded.shape[:2]
    x_cn = x_padded.transpose(1, 0, 2, 3)  # (C, N, Hp, Wp), a view
    cols = xp.empty((c, kh, kw, n, out_h, out_w), dtype=x_padded.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = offset_slices(i, j, stride, out_h, out_w)
            cols[:, i, j] = x_cn[:, :, rows, columns]  # (C, N, out_h, out_w)
    return cols


def col2im(cols, padded_shape: tuple, stride: int):
    """Columns (C, kh, kw, N, out_h, out_w) -> (N, C, Hp, Wp), overlaps summed.

    The adjoint of :func:`im2col`: every offset's slice is added back in place.
    """
    xp = array_module(cols)
    c, kh, kw, n, out_h, out_w = cols.shape
    _, _, hp, wp = padded_shape
    dx_cn = xp.zeros((c, n, hp, wp), dtype=cols.dtype)  # (C, N, Hp, Wp)
    for i in range(kh):
        for j in range(kw):
            rows, columns = offset_slices(i, j, stride, out_h, out_w)
            dx_cn[:, :, rows, columns] += cols[:, i, j]
    return dx_cn.transpose(1, 0, 2, 3)  # (N, C, Hp, Wp)


def pad_nchw(x, top: int, bottom: int, left: int, right: int, value=0.0):
    """Pad the H and W axes of (N, C, H, W); returns x itself when nothing to pad."""
    if top == bottom == left == right == 0:
        return x
    xp = array_module(x)
    return xp.pad(
        x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="constant", constant_values=value
    )
