"""Conv2D's products in groups of input channels, for layers whose im2col columns would pass
CHUNK_BYTES (the fused GPU path's shared columns, gpucnn/nn/layers/scratch.py).

Why: the columns of a large layer dwarf its activations. vgg at batch 512 (64 -> 64 channels
of 32x32, 3x3) has columns of 577 x 524288 floats, 1154 MiB, against about 800 MiB of
activations kept for backward by the whole network (counted on the CuPy stand-in); PyTorch's
high-water mark there was 1560 MiB (H200, 2026-12-04). Grouped, a layer's scratch is one
group's columns, at most CHUNK_BYTES (unless one channel alone is larger).

How: the rows of the columns come in blocks of kh*kw per input channel, so a group of
channels c0..c1 is rows c0*kh*kw .. c1*kh*kw, made by im2col of x[:, c0:c1] (a channel slice
of Conv2D's (C, H, W, N) memory: no copy). The ones row that carries the bias rides with the
last group.

    forward:  y = sum over groups of Wb[:, rows] @ cols[rows]   (cuBLAS beta = 1 after the first)
    backward: grads[rows] = cols[rows] @ dy^T                    (weight and bias gradient rows)
              dcols[rows] = W[:, rows]^T @ dy -> col2im into dx[c0:c1] (whole channels: no sums
              across groups)

Same arithmetic per element as the ungrouped products except the forward's sum, which adds the
groups' partial sums in order (within float32 rounding of the single product). Costs per extra
group: one read and write of y in forward, and a few launches. The products themselves:
docs/math.md, "Convolution".
"""
from __future__ import annotations

import operator

from ...backends.backend import array_module
from ...backends.kernels.gemm import matmul_for
from ...backends.kernels.im2col import col2im_nchw, im2col_into
from .scratch import shared_scratch

CHUNK_BYTES = 256 * 2**20  # at most this many bytes of columns at once (one group's)


def channel_groups(in_channels: int, kh: int, kw: int, columns: int, itemsize: int,
                   limit: int | None = None) -> list[tuple[int, int]]:
    """[(c0, c1)]: input channels in as few groups as keep each group's columns (c1 - c0) * kh *
    kw x ``columns`` within ``limit`` bytes (CHUNK_BYTES by default; at least one channel a
    group), their sizes as even as the count allows (the largest group sizes the buffer)."""
    limit = CHUNK_BYTES if limit is None else limit
    per_channel = kh * kw * columns * itemsize
    most = max(1, limit // max(per_channel, 1))  # channels a group may hold
    count = -(-in_channels // most)  # groups needed
    size = -(-in_channels // count)  # channels in the largest: even groups
    return [(c0, min(c0 + size, in_channels)) for c0 in range(0, in_channels, size)]


class Geometry:
    """What im2col and col2im need of one Conv2D call: kernel (kh, kw), stride, padding (top,
    left), output (out_h, out_w), blocks (bh, bw) and the input's (h, w)."""

    __slots__ = ("kh", "kw", "stride", "top", "left", "out_h", "out_w", "blocks", "h", "w")

    def __init__(self, kh, kw, stride, top, left, out_h, out_w, blocks, h, w):
        self.kh, self.kw, self.stride, self.top, self.left = kh, kw, stride, top, left
        self.out_h, self.out_w, self.blocks, self.h, self.w = out_h, out_w, tuple(blocks), h, w


def _group_columns(x, c0, c1, last, g: Geometry):
    """The shared columns of channels c0..c1 of x (N, C, H, W), with the ones row when ``last``:
    ((c1 - c0)*kh*kw (+ 1), OH*OW*N) C-contiguous float32."""
    xp = array_module(x)
    rows = (c1 - c0) * g.kh * g.kw
    m = g.out_h * g.out_w * x.shape[0]
    cols = shared_scratch(xp, "conv columns", (rows + int(last), m), x.dtype)  # (rows (+1), OH*OW*N)
    im2col_into(x[:, c0:c1], cols[:rows], g.kh, g.kw, g.stride, g.top, g.left, g.out_h, g.out_w, g.blocks)
    if last:
        cols[rows].fill(1)
    return cols


def _reserve(x, groups, g: Geometry) -> None:
    """Grow the shared columns once to the largest group's (with the ones row), so no group
    replaces the buffer while the one before it may still be in use."""
    rows = max(c1 - c0 for c0, c1 in groups) * g.kh * g.kw + 1
    shared_scratch(array_module(x), "conv columns", (rows, g.out_h * g.out_w * x.shape[0]), x.dtype)


def forward_in_groups(x, weight_and_bias, groups, g: Geometry):
    """x (N, C_in, H, W), weight_and_bias (C_out, C_in*kh*kw + 1) -> y (C_out, OH*OW*N),
    C-contiguous, columns in im2col's order for g.blocks."""
    _reserve(x, groups, g)
    xp, matmul = array_module(x), matmul_for(x)
    per_channel = g.kh * g.kw
    y = xp.empty((weight_and_bias.shape[0], g.out_h * g.out_w * x.shape[0]), dtype=x.dtype)  # (C_out, OH*OW*N)
    for i, (c0, c1) in enumerate(groups):
        last = i == len(groups) - 1
        cols = _group_columns(x, c0, c1, last, g)  # (rows (+1), OH*OW*N)
        weights = xp.ascontiguousarray(weight_and_bias[:, c0 * per_channel:c1 * per_channel + int(last)])  # (C_out, rows (+1))
        if i == 0:
            matmul_into(matmul, weights, cols, y)
        else:
            matmul_into(matmul, weights, cols, y, accumulate=True)
    return y


def backward_in_groups(x, weight, dy_2d, groups, g: Geometry, need_input_grad: bool):
    """x (N, C_in, H, W), weight (C_out, C_in, kh, kw), dy_2d (C_out, OH*OW*N) -> (grads
    (C_in*kh*kw + 1, C_out): rows of the weight gradient (transposed) and last the bias
    gradient; dx (N, C_in, H, W), an NCHW view of (C_in, H, W, N) memory, or None)."""
    _reserve(x, groups, g)
    xp, matmul = array_module(x), matmul_for(x)
    c_out, c_in = weight.shape[:2]
    per_channel = g.kh * g.kw
    weight_2d = weight.reshape(c_out, c_in * per_channel)  # (C_out, C_in*kh*kw)
    grads = xp.empty((c_in * per_channel + 1, c_out), dtype=x.dtype)  # (C_in*kh*kw + 1, C_out)
    dx = xp.empty((c_in, g.h, g.w, x.shape[0]), dtype=x.dtype) if need_input_grad else None  # (C_in, H, W, N)
    for i, (c0, c1) in enumerate(groups):
        last = i == len(groups) - 1
        r0, r1 = c0 * per_channel, c1 * per_channel
        cols = _group_columns(x, c0, c1, last, g)  # (rows (+1), OH*OW*N)
        matmul_into(matmul, cols, dy_2d.T, grads[r0:r1 + int(last)])  # (rows (+1), C_out)
        if dx is None:
            continue
        weights_t = xp.ascontiguousarray(weight_2d[:, r0:r1].T)  # (rows, C_out)
        dcols = cols[:r1 - r0]  # the columns' memory: dead once their gradient rows are taken
        matmul_into(matmul, weights_t, dy_2d, dcols)  # (rows, OH*OW*N)
        col2im_nchw(dcols, c1 - c0, g.h, g.w, g.kh, g.kw, g.stride, g.top, g.left, g.out_h, g.out_w,
                    g.blocks, out=dx[c0:c1])  # (C1-C0, H, W, N) channels of dx
    return grads, (None if dx is None else dx.transpose(3, 0, 1, 2))  # (N, C_in, H, W) view


def matmul_into(matmul, a, b, out, accumulate=False):
    """out (=, or += with ``accumulate``) a @ b, through ``matmul`` (gemm.matmul or ``@``)."""
    if matmul is not operator.matmul:
        matmul(a, b, out=out, accumulate=accumulate)
    elif accumulate:
        out += a @ b
    else:
        array_module(a).matmul(a, b, out=out)
