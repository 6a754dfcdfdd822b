"""im2col / col2im by kernel offsets, shared by Conv2D and the pooling layers.

Each kernel offset (i, j) is one strided slice of the padded input: im2col copies
all of them at once through one strided view; col2im adds them back one offset at a
time (their windows overlap). No Python loop ever runs over samples or pixels.

After im2col the convolution of every window with every kernel is one matrix
multiply: docs/math.md, "Convolution" (and, worked out on numbers, "Worked example:
a strided convolution as a matrix product").

This is the CPU path, and the generic GPU path. With the fused-kernel group "im2col"
on (gpucnn.backends.kernels), Conv2D runs gpucnn/backends/kernels/im2col.py instead: one launch for
im2col (reading x in any layout, padding included, no padded copy) and one for col2im
(a gather into the unpadded dx); its NumPy twins give the same columns and, bit for
bit, the same dx as the functions here.

Memory layout. The layers' public shapes are NCHW, but Conv2D stores its
activations batch-innermost, as (C, H, W, N) in memory, and hands out an NCHW
*view* of them (a transpose, no copy). Every offset slice then moves runs of N
contiguous floats instead of runs of W (often just 10 or 24), which makes these
copies several times faster on NumPy. Elementwise layers (ReLU, pooling) keep
whatever layout they receive, so the whole network stays in it: on CuPy too,
because they write their ufunc results into ``empty_like`` arrays (CuPy ufuncs
would otherwise return C-contiguous, i.e. NCHW, arrays).
"""
from __future__ import annotations

from ...backends.backend import array_module
from ...backends.cpu_threads import over_channel_chunks


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    """o = (i + p_before + p_after - k) // s + 1 (floor, as PyTorch; docs/math.md, "Output size")."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def offset_slices(i: int, j: int, stride: int, out_h: int, out_w: int):
    """The (rows, cols) slices of the padded input that kernel offset (i, j) reads."""
    return (
        slice(i, i + stride * (out_h - 1) + 1, stride),
        slice(j, j + stride * (out_w - 1) + 1, stride),
    )


def to_chwn(x, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0, value=0.0):
    """NCHW array (any strides) -> zero-padded, C-contiguous (C, Hp, Wp, N) array.

    One copy at most: none when x is already an NCHW view of (C, H, W, N) memory
    and needs no padding.
    """
    xp = array_module(x)
    x_chwn = x.transpose(1, 2, 3, 0)  # (C, H, W, N), a view
    if top == bottom == left == right == 0:
        return xp.ascontiguousarray(x_chwn)
    return xp.pad(x_chwn, ((0, 0), (top, bottom), (left, right), (0, 0)),
                  mode="constant", constant_values=value)  # (C, Hp, Wp, N)


def im2col(x_chwn, kh: int, kw: int, stride: int, out_h: int, out_w: int, out=None, blocks=(1, 1)):
    """Padded (C, Hp, Wp, N) -> columns (C*kh*kw, out_h*out_w*N).

    Row (c, i, j) holds input channel c at kernel offset (i, j) for every output
    position and sample: each column is one receptive field. ``out``: an array of
    that shape to write into (a reused buffer), else a new one.

    ``blocks`` (bh, bw) orders the columns (output positions) as (ph, pw, OH/bh, OW/bw, N)
    with oh = bh*(oh // bh) + ph: then the outputs of one bh x bw max-pooling window offset
    are contiguous (gpucnn.nn.execution_units). (1, 1), the default, is plain (OH, OW, N) order.

    All kh*kw offset slices are one strided view of the input (as_strided: offset
    (i, j) and output position (oh, ow) both step through rows and columns), copied
    in one go: one kernel on a GPU instead of kh*kw, and no slower on NumPy.
    """
    xp = array_module(x_chwn)
    c, _, _, n = x_chwn.shape
    (bh, bw), block_h, block_w = blocks, out_h // blocks[0], out_w // blocks[1]
    if out is None:
        out = xp.empty((c * kh * kw, out_h * out_w * n), dtype=x_chwn.dtype)
    s_c, s_h, s_w, s_n = x_chwn.strides
    # windows[c, i, j, ph, pw, oh, ow, n] = x_chwn[c, i + stride*(bh*oh + ph), j + stride*(bw*ow + pw), n]:
    # a view, no copy
    windows = xp.lib.stride_tricks.as_strided(
        x_chwn, shape=(c, kh, kw, bh, bw, block_h, block_w, n),
        strides=(s_c, s_h, s_w, stride * s_h, stride * s_w, bh * stride * s_h, bw * stride * s_w, s_n))
    out_8d = out.reshape(c, kh, kw, bh, bw, block_h, block_w, n)  # (C, kh, kw, bh, bw, OH/bh, OW/bw, N)

    def copy(channels):  # one group of input channels (all of them on a GPU)
        out_8d[channels] = windows[channels]

    over_channel_chunks(x_chwn, copy, axis=0)
    return out  # (C*kh*kw, OH*OW*N)


def col2im(cols, c: int, kh: int, kw: int, padded_hw: tuple, stride: int, out_h: int, out_w: int,
           blocks=(1, 1)):
    """Columns (C*kh*kw, out_h*out_w*N), in :func:`im2col`'s order for ``blocks`` ->
    padded (C, Hp, Wp, N), overlaps summed.

    The adjoint of :func:`im2col`: every offset's slice is added back in place, one
    group of input channels at a time (gpucnn.backends.cpu_threads), so the kh*kw additions into a
    group's part of dx find it in cache.
    """
    xp = array_module(cols)
    (bh, bw), block_h, block_w = blocks, out_h // blocks[0], out_w // blocks[1]
    n = cols.shape[1] // (out_h * out_w)
    cols = cols.reshape(c, kh, kw, bh, bw, block_h, block_w, n)  # (C, kh, kw, bh, bw, OH/bh, OW/bw, N)
    dx_chwn = xp.empty((c, *padded_hw, n), dtype=cols.dtype)  # (C, Hp, Wp, N)

    def accumulate(channels):  # one group of input channels (all of them on a GPU)
        dx_group = dx_chwn[channels]
        dx_group.fill(0)  # faster than xp.zeros for large arrays on NumPy
        s_c, s_h, s_w, s_n = dx_group.strides
        for i in range(kh):
            for j in range(kw):
                # the inputs that offset (i, j) read, as im2col's view: [c, ph, pw, oh, ow, n] is
                # row i + stride*(bh*oh + ph), column j + stride*(bw*ow + pw); no two coincide
                reads = xp.lib.stride_tricks.as_strided(
                    dx_group[:, i:, j:], shape=(dx_group.shape[0], bh, bw, block_h, block_w, n),
                    strides=(s_c, stride * s_h, stride * s_w, bh * stride * s_h, bw * stride * s_w, s_n))
                reads += cols[channels, i, j]

    over_channel_chunks(dx_chwn, accumulate, axis=0)
    return dx_chwn


def pad_nchw(x, top: int, bottom: int, left: int, right: int, value=0.0):
    """Pad the H and W axes of (N, C, H, W); returns x itself when nothing to pad.

    The padded copy keeps x's memory layout (batch-innermost stays batch-innermost).
    """
    if top == bottom == left == right == 0:
        return x
    xp = array_module(x)
    n, c, h, w = x.shape
    padded = xp.empty((c, h + top + bottom, w + left + right, n), dtype=x.dtype)  # (C, Hp, Wp, N)
    padded[...] = value
    padded = padded.transpose(3, 0, 1, 2)  # (N, C, Hp, Wp) view
    padded[:, :, top:top + h, left:left + w] = x
    return padded
