"""Max pooling as two kernels (``pool.maxpool_forward``, ``pool.maxpool_backward``),
their NumPy twins, and the launchers MaxPool2D calls.

Forward writes the pooled values and, per window, the offset i*kw + j of its first
maximum (row-major, values within 16 float epsilons of the maximum count as tied:
gpucnn.nn.layers.pooling._tied_with_max); backward is a gather over those offsets. The
twins compute exactly what the kernels compute, comparison for comparison and addition
for addition in the same order (float32 accumulation): a real-GPU test compares them.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .runtime import element_strides, grid_1d, launch, memory_order

MAX_WINDOW = 255  # offsets are uint8; 255 itself means "no gradient" (NO_OFFSET)
NO_OFFSET = 255
TIE_SCALE = np.float32(-16) * np.finfo(np.float32).eps  # -2^-19, as _tied_with_max's factor


# -- the NumPy twins: the same parameters as the CUDA kernels ----------------------------
def _nchw(a, batch, channels, height, width, sn, sc, sh, sw):
    """A C-contiguous array's elements as the (N, C, H, W) view the kernel reads through
    element strides (sn, sc, sh, sw)."""
    item = a.itemsize
    return np.lib.stride_tricks.as_strided(
        a, shape=(int(batch), int(channels), int(height), int(width)),
        strides=(int(sn) * item, int(sc) * item, int(sh) * item, int(sw) * item), writeable=False)


def _window_slices(i, j, stride, out_h, out_w):
    return (slice(i, i + stride * (out_h - 1) + 1, stride), slice(j, j + stride * (out_w - 1) + 1, stride))


def maxpool_forward(x, y, offset, batch, channels, height, width, x_sn, x_sc, x_sh, x_sw,
                    out_h, out_w, kh, kw, stride, pad, relu):
    """Twin of ``pool.maxpool_forward``: y, offset (C, OH, OW, N) C-contiguous <- the max
    of each window of x (read through its element strides; padding is -inf) and the
    offset of its first tied maximum (NO_OFFSET: none; with ``relu``, also where the
    maximum is not > 0, and y = relu(max))."""
    kh, kw, stride, pad, out_h, out_w = map(int, (kh, kw, stride, pad, out_h, out_w))
    c, n = int(channels), int(batch)
    x_chwn = _nchw(x, batch, channels, height, width, x_sn, x_sc, x_sh, x_sw).transpose(1, 2, 3, 0)  # (C, H, W, N)
    padded = np.full((c, int(height) + 2 * pad, int(width) + 2 * pad, n), -np.inf, np.float32)  # (C, Hp, Wp, N)
    padded[:, pad:pad + int(height), pad:pad + int(width)] = x_chwn
    windows = [padded[:, rows, cols] for i in range(kh) for j in range(kw)
               for rows, cols in [_window_slices(i, j, stride, out_h, out_w)]]  # (C, OH, OW, N) each
    y = y.reshape(c, out_h, out_w, n)  # (C, OH, OW, N), a view
    offset = offset.reshape(c, out_h, out_w, n)  # (C, OH, OW, N), a view
    y.fill(-np.inf)
    for window in windows:  # the running maximum, as the kernel: a NaN wins and stays
        np.copyto(y, window, where=(window > y) | np.isnan(window))
    tied = np.abs(y)
    tied *= TIE_SCALE  # exact: a power of two
    tied += y  # one float32 rounding, as the kernel's __fadd_rn
    offset.fill(NO_OFFSET)
    for k in range(len(windows) - 1, -1, -1):  # the earliest offset written last: the first wins
        np.copyto(offset, np.uint8(k), where=windows[k] >= tied)
    if relu:
        no_gradient = ~(y > 0)
        offset[no_gradient] = NO_OFFSET
        y[no_gradient & ~np.isnan(y)] = 0.0


def maxpool_backward(dy, offset, dx, batch, channels, height, width, dy_sn, dy_sc, dy_sh, dy_sw,
                     out_h, out_w, kh, kw, stride, pad):
    """Twin of ``pool.maxpool_backward``: dx (C, H, W, N) C-contiguous <- for each input
    element, the sum of dy (read through its element strides) over the windows whose
    offset points at it, added from 0 in ascending window offset, in float32."""
    kh, kw, stride, pad, out_h, out_w = map(int, (kh, kw, stride, pad, out_h, out_w))
    c, h, w, n = int(channels), int(height), int(width), int(batch)
    dy_nchw = _nchw(dy, batch, channels, out_h, out_w, dy_sn, dy_sc, dy_sh, dy_sw)  # (N, C, OH, OW)
    dy_chwn = dy_nchw.transpose(1, 2, 3, 0)  # (C, OH, OW, N)
    offset = offset.reshape(c, out_h, out_w, n)  # (C, OH, OW, N)
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad, n), np.float32)  # (C, Hp, Wp, N)
    zero = np.float32(0)
    for i in range(kh):
        for j in range(kw):  # ascending offset k: each element's terms in the kernel's order
            rows, cols = _window_slices(i, j, stride, out_h, out_w)
            padded[:, rows, cols] += np.where(offset == i * kw + j, dy_chwn, zero)  # + 0: exact no-op
    dx.reshape(c, h, w, n)[...] = padded[:, pad:pad + h, pad:pad + w]  # (C, H, W, N)


# -- the launchers: what MaxPool2D calls --------------------------------------------------
def _element_strides(a):
    """(a's memory as a C-contiguous array, a's element strides as np.int64, NCHW order):
    no copy when a is a permutation of contiguous memory (e.g. an NCHW view of (C, H, W, N))."""
    memory, perm = memory_order(a)
    return memory, [np.int64(s) for s in element_strides(memory, perm)]


def _geometry(kernel_size, stride, padding, out_h, out_w):
    (kh, kw) = kernel_size
    if kh * kw > MAX_WINDOW:
        raise ValueError(f"the fused max pool takes windows of at most {MAX_WINDOW} elements (its offsets "
                         f"are uint8), got {kh}x{kw} = {kh * kw}; use a smaller kernel_size, or run "
                         "MaxPool2D without the 'maxpool' kernel group")
    return [np.int32(v) for v in (out_h, out_w, kh, kw, stride, padding)]


def max_pool(x, kernel_size, stride, padding, out_hw, relu=False):
    """x (N, C, H, W) float32, any strides -> y (N, C, OH, OW), an NCHW view of (C, OH,
    OW, N) memory, and offset (C, OH, OW, N) uint8: one launch. ``relu``: y = relu(max),
    offset NO_OFFSET where y is 0."""
    xp = array_module(x)
    n, c, h, w = x.shape
    out_h, out_w = out_hw
    geometry = _geometry(kernel_size, stride, padding, out_h, out_w)
    memory, strides = _element_strides(x)
    y = xp.empty((c, out_h, out_w, n), dtype=np.float32)  # (C, OH, OW, N)
    offset = xp.empty((c, out_h, out_w, n), dtype=np.uint8)  # (C, OH, OW, N)
    grid, block = grid_1d(y.size)
    launch("pool.maxpool_forward", grid, block,
           (memory, y, offset, *(np.int32(v) for v in (n, c, h, w)), *strides, *geometry, np.int32(bool(relu))))
    return y.transpose(3, 0, 1, 2), offset  # (N, C, OH, OW) view


def max_pool_grad(dy, offset, input_shape, kernel_size, stride, padding):
    """dy (N, C, OH, OW) float32, any strides; offset (C, OH, OW, N) from :func:`max_pool`
    -> dx (N, C, H, W), an NCHW view of (C, H, W, N) memory: one launch."""
    xp = array_module(dy)
    n, c, h, w = input_shape
    out_h, out_w = offset.shape[1:3]
    geometry = _geometry(kernel_size, stride, padding, out_h, out_w)
    memory, strides = _element_strides(dy)
    dx = xp.empty((c, h, w, n), dtype=np.float32)  # (C, H, W, N)
    grid, block = grid_1d(dx.size)
    launch("pool.maxpool_backward", grid, block,
           (memory, offset, dx, *(np.int32(v) for v in (n, c, h, w)), *strides, *geometry))
    return dx.transpose(3, 0, 1, 2)  # (N, C, H, W) view
