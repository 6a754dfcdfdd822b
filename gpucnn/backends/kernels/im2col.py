"""Conv2D's im2col and col2im as one launch each (kernels ``im2col.im2col`` and
``im2col.col2im``), their NumPy twins, and the launchers Conv2D calls.

Columns are (K, P): K = C*kh*kw rows ordered (c, i, j), P = OH*OW*N columns in the
blocked order of :func:`gpucnn.nn.layers.im2col.im2col`, (ph, pw, OH/bh, OW/bw, N) for
``blocks`` (bh, bw). Padding (top, left given; bottom, right implied by OH, OW) reads as
zero: the padded input never exists.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .runtime import element_strides, grid_1d, launch, memory_order

MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y: the kernels loop over channels beyond it


def _padded_extent(size: int, kernel: int, stride: int, pad_before: int, out: int) -> int:
    """Rows (or columns) of the zero-padded input that the windows and the input span."""
    return max(pad_before + size, stride * (out - 1) + kernel)


def _check_reach(x, c, h, w, n, strides):
    """The twin's bounds check: every element the strides name lies inside x."""
    reach = sum((size - 1) * abs(int(s)) for size, s in zip((n, c, h, w), strides))
    if min(int(s) for s in strides) < 0 or reach >= x.size:
        raise ValueError(f"im2col: element strides {tuple(int(s) for s in strides)} for (N, C, H, W) "
                         f"({n}, {c}, {h}, {w}) reach element {reach}, but x has {x.size}; "
                         "pass the strides of x's own memory (dense_buffer)")


def im2col(x, cols, c, h, w, n, s_n, s_c, s_h, s_w, kh, kw, stride, pad_top, pad_left,
           out_h, out_w, bh, bw):
    """Twin of ``im2col.im2col``: x, a flat float32 buffer holding the (N, C, H, W) input at
    element strides (s_n, s_c, s_h, s_w) -> rows 0..K-1 of cols (K = c*kh*kw, P = out_h*out_w*n
    columns in the blocked order), zero where a window reaches the padding. A copy: exact."""
    x = x.reshape(-1)  # flat buffer, a view
    _check_reach(x, c, h, w, n, (s_n, s_c, s_h, s_w))
    item = x.itemsize
    x_chwn = np.lib.stride_tricks.as_strided(
        x, shape=(c, h, w, n), strides=(s_c * item, s_h * item, s_w * item, s_n * item))  # (C, H, W, N) view
    rows = _padded_extent(h, kh, stride, pad_top, out_h)
    columns = _padded_extent(w, kw, stride, pad_left, out_w)
    padded = np.zeros((c, rows, columns, n), dtype=x.dtype)  # (C, Hp, Wp, N)
    padded[:, pad_top:pad_top + h, pad_left:pad_left + w] = x_chwn
    block_h, block_w = out_h // bh, out_w // bw
    s_c, s_h, s_w, s_n = padded.strides
    # windows[c, i, j, ph, pw, qh, qw, n] = padded[c, i + stride*(bh*qh + ph), j + stride*(bw*qw + pw), n]
    windows = np.lib.stride_tricks.as_strided(
        padded, shape=(c, kh, kw, bh, bw, block_h, block_w, n),
        strides=(s_c, s_h, s_w, stride * s_h, stride * s_w, bh * stride * s_h, bw * stride * s_w, s_n))
    k, positions = c * kh * kw, out_h * out_w * n
    out = cols.reshape(-1)[:k * positions].reshape(
        c, kh, kw, bh, bw, block_h, block_w, n)  # (C, kh, kw, bh, bw, OH/bh, OW/bw, N) view
    out[...] = windows


def col2im(dcols, dx, c, h, w, n, kh, kw, stride, pad_top, pad_left, out_h, out_w, bh, bw):
    """Twin of ``im2col.col2im``: dcols (K, P) in the blocked column order -> dx, C-contiguous
    (C, H, W, N) unpadded, each element the sum over the offsets (i, j) whose window covers it.
    float32 accumulation from zero, offsets in (i, j) row-major order, as the kernel: the
    same additions in the same order, so kernel and twin agree bit for bit."""
    block_h, block_w = out_h // bh, out_w // bw
    k, positions = c * kh * kw, out_h * out_w * n
    cols = dcols.reshape(-1)[:k * positions].reshape(
        c, kh, kw, bh, bw, block_h, block_w, n)  # (C, kh, kw, bh, bw, OH/bh, OW/bw, N) view
    rows = _padded_extent(h, kh, stride, pad_top, out_h)
    columns = _padded_extent(w, kw, stride, pad_left, out_w)
    padded = np.zeros((c, rows, columns, n), dtype=np.float32)  # (C, Hp, Wp, N), float32 sums
    s_c, s_h, s_w, s_n = padded.strides
    for i in range(kh):
        for j in range(kw):
            # the padded positions offset (i, j) reads, [c, ph, pw, qh, qw, n]; no two coincide
            reads = np.lib.stride_tricks.as_strided(
                padded[:, i:, j:], shape=(c, bh, bw, block_h, block_w, n),
                strides=(s_c, stride * s_h, stride * s_w, bh * stride * s_h, bw * stride * s_w, s_n))
            reads += cols[:, i, j]
    dx.reshape(c, h, w, n)[...] = padded[:, pad_top:pad_top + h, pad_left:pad_left + w]  # (C, H, W, N)


# -- launchers (what Conv2D calls) ---------------------------------------------------------

def dense_buffer(x):
    """x (any shape, any strides) -> (buffer, element strides of x's axes): ``buffer`` is a
    C-contiguous array over x's memory (x's axes permuted, no copy) when x is a transposed
    C-contiguous array, as Conv2D's NCHW views of (C, H, W, N) memory are; else a C-contiguous
    copy of x (one launch)."""
    buffer, perm = memory_order(x)
    return buffer, element_strides(buffer, perm)


def _grid(positions: int, channels: int):
    grid, block = grid_1d(positions)
    return (grid[0], min(channels, MAX_GRID_Y)), block


def _check_float32(what, a):
    if a.dtype != np.float32:
        raise TypeError(f"{what}: the im2col kernels take float32 arrays, got {a.dtype}; "
                        "cast once with astype(numpy.float32) or run the group off")


def im2col_into(x, cols, kh, kw, stride, pad_top, pad_left, out_h, out_w, blocks=(1, 1)):
    """x (N, C, H, W) float32, any strides -> writes cols (C*kh*kw, OH*OW*N), C-contiguous,
    columns in the blocked order for ``blocks`` (bh, bw); one launch (none for the layout)."""
    _check_float32("im2col_into", x)
    n, c, h, w = x.shape
    bh, bw = blocks
    expected = (c * kh * kw, out_h * out_w * n)
    if tuple(cols.shape) != expected or cols.dtype != np.float32 or not cols.flags.c_contiguous:
        raise ValueError(f"im2col_into expected cols: C-contiguous float32 {expected}, got "
                         f"{cols.dtype} {tuple(cols.shape)}; pass rows 0..K-1 of the workspace")
    buffer, (s_n, s_c, s_h, s_w) = dense_buffer(x)
    grid, block = _grid(out_h * out_w * n, c)
    launch("im2col.im2col", grid, block,
           (buffer, cols, np.int32(c), np.int32(h), np.int32(w), np.int32(n),
            np.int64(s_n), np.int64(s_c), np.int64(s_h), np.int64(s_w),
            np.int32(kh), np.int32(kw), np.int32(stride), np.int32(pad_top), np.int32(pad_left),
            np.int32(out_h), np.int32(out_w), np.int32(bh), np.int32(bw)))
    return cols


def col2im_nchw(dcols, c, h, w, kh, kw, stride, pad_top, pad_left, out_h, out_w, blocks=(1, 1), out=None):
    """dcols (C*kh*kw, OH*OW*N) float32 C-contiguous, blocked columns -> dx (N, C, H, W), an
    NCHW view of C-contiguous (C, H, W, N) memory (unpadded), written into ``out`` when given
    (a C-contiguous float32 (C, H, W, N) array: some channels of a larger dx); one launch, a gather."""
    _check_float32("col2im_nchw", dcols)
    xp = array_module(dcols)
    n = dcols.shape[1] // (out_h * out_w)
    if out is not None and (tuple(out.shape) != (c, h, w, n) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"col2im_nchw expected out: C-contiguous float32 {(c, h, w, n)}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    dx = xp.empty((c, h, w, n), dtype=np.float32) if out is None else out  # (C, H, W, N)
    grid, block = _grid(h * w * n, c)
    launch("im2col.col2im", grid, block,
           (dcols, dx, np.int32(c), np.int32(h), np.int32(w), np.int32(n),
            np.int32(kh), np.int32(kw), np.int32(stride), np.int32(pad_top), np.int32(pad_left),
            np.int32(out_h), np.int32(out_w), np.int32(blocks[0]), np.int32(blocks[1])))
    return dx.transpose(3, 0, 1, 2)  # (N, C, H, W) view
