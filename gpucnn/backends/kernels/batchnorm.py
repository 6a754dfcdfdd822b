"""BatchNorm's fused kernels (``batchnorm.stats``, ``.normalize``, ``.backward_reduce``,
``.backward_dx``), their NumPy twins, and the launchers BatchNorm2D / BatchNorm1D call.

Training forward: ``stats`` (per-channel mean, biased variance, running statistics moved in
place) then ``normalize``: two launches. Evaluation forward: ``normalize`` on the running
statistics: one. Backward: ``backward_reduce`` (dweight, dbias) then ``backward_dx``: two.

Every kernel reads its input through :class:`ChannelLayout`: a dense buffer of x seen as
(outer, C, inner) (see cuda/batchnorm.cu), and writes y / dx at x's offsets, so outputs keep
x's layout (batch-innermost stays batch-innermost) without a copy. Statistics are kept as
(mean, var); each kernel turns var into inv_std = 1 / sqrt(var + eps) the same way, so no
prep launch is needed in evaluation mode. x_hat is not saved: backward recomputes it from x,
mean and inv_std (one float32 subtract and multiply), which spares a whole activation of
memory and a write pass in forward for one extra read of x in backward.

Numerics: per-channel sums accumulate in float64 in the kernels and in the twins (the twins'
NumPy sums add in another order: results agree to within one float32 rounding); elementwise
steps are float32 with the same operations in the same order on both sides (the kernels use
round-to-nearest intrinsics so nothing is fused into an FMA): bit-identical given the same
per-channel inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import array_module
from .runtime import grid_1d, launch, memory_order

MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y: normalize / backward_dx loop over channels beyond it
MAX_REDUCE_BLOCK = 1024  # MAX_BLOCK in cuda/batchnorm.cu
ELEMENTS_PER_THREAD = 8  # normalize / backward_dx: values of one channel a thread handles (about)


# -- twins --------------------------------------------------------------------------------

def _view(a, channels, outer, inner):
    """A flat C-contiguous buffer -> its (outer, C, inner) view."""
    return a.reshape(-1)[:int(outer) * int(channels) * int(inner)].reshape(
        int(outer), int(channels), int(inner))  # (outer, C, inner)


def _inv_std(var, eps):
    """float32 1 / sqrt(var + eps), each step rounded as the kernels' __fadd_rn, __fsqrt_rn, __fdiv_rn."""
    return np.float32(1) / np.sqrt(var + eps)  # (C,) float32


def stats(x, mean, var, running_mean, running_var, channels, outer, inner, keep, momentum,
          momentum_unbiased):
    """Twin of ``batchnorm.stats``: per channel, float64 sums of d = x - x[0, c, 0] and d^2,
    mean = x[0, c, 0] + sum(d) / M, var = max((sum d^2 - sum(d) * (sum(d) / M)) / M, 0), both
    rounded to float32; running statistics moved in float32 as the kernel does."""
    c = int(channels)
    xs = _view(x, channels, outer, inner)  # (outer, C, inner)
    pivot = xs[0, :, :1].astype(np.float64)  # (C, 1) the channels' first elements
    d = xs.astype(np.float64) - pivot  # (outer, C, inner) float64
    s1 = d.sum(axis=(0, 2))  # (C,) float64 accumulation, as the kernel
    s2 = (d * d).sum(axis=(0, 2))  # (C,)
    count = np.float64(int(outer) * int(inner))
    shift = s1 / count
    mean_c = (pivot[:, 0] + shift).astype(np.float32)  # (C,)
    var_c = np.maximum((s2 - s1 * shift) / count, 0.0).astype(np.float32)  # (C,) biased
    mean.reshape(-1)[:c] = mean_c
    var.reshape(-1)[:c] = var_c
    rm, rv = running_mean.reshape(-1)[:c], running_var.reshape(-1)[:c]  # (C,) views
    rm[...] = keep * rm + momentum * mean_c  # float32 products and sum
    rv[...] = keep * rv + momentum_unbiased * var_c


def normalize(x, mean, var, weight, bias, y, channels, outer, inner, eps):
    """Twin of ``batchnorm.normalize``: y = (x - mean) * (weight * inv_std) + bias, float32."""
    c = int(channels)
    mean, var, weight, bias = (a.reshape(-1)[:c] for a in (mean, var, weight, bias))  # (C,)
    scale = weight * _inv_std(var, eps)  # (C,)
    out = _view(y, channels, outer, inner)  # (outer, C, inner)
    np.subtract(_view(x, channels, outer, inner), mean[:, None], out=out)
    out *= scale[:, None]
    out += bias[:, None]


def backward_reduce(x, dy, mean, var, dweight, dbias, channels, outer, inner, eps):
    """Twin of ``batchnorm.backward_reduce``: dbias = sum(dy), dweight = sum(dy * (x - mean))
    * inv_std per channel, float64 sums rounded to float32 as the kernel."""
    c = int(channels)
    mean, var = mean.reshape(-1)[:c], var.reshape(-1)[:c]  # (C,)
    g = _view(dy, channels, outer, inner).astype(np.float64)  # (outer, C, inner) float64
    centred = _view(x, channels, outer, inner).astype(np.float64) - mean.astype(np.float64)[:, None]
    dbias.reshape(-1)[:c] = g.sum(axis=(0, 2)).astype(np.float32)
    s_dyx = (g * centred).sum(axis=(0, 2))  # (C,) float64
    dweight.reshape(-1)[:c] = (s_dyx * _inv_std(var, eps).astype(np.float64)).astype(np.float32)


def backward_dx(x, dy, mean, var, weight, dweight, dbias, dx, channels, outer, inner, eps, inv_count):
    """Twin of ``batchnorm.backward_dx``: dx = weight * inv_std * ((dy - dbias * inv_count)
    - x_hat * (dweight * inv_count)), x_hat = (x - mean) * inv_std; float32, the kernel's order."""
    c = int(channels)
    mean, var, weight, dweight, dbias = (a.reshape(-1)[:c] for a in (mean, var, weight, dweight, dbias))
    inv_std = _inv_std(var, eps)  # (C,)
    scale, a, b = weight * inv_std, dbias * inv_count, dweight * inv_count  # (C,) float32
    x_hat = (_view(x, channels, outer, inner) - mean[:, None]) * inv_std[:, None]  # (outer, C, inner)
    out = _view(dx, channels, outer, inner)  # (outer, C, inner)
    np.subtract(_view(dy, channels, outer, inner), a[:, None], out=out)
    out -= x_hat * b[:, None]
    out *= scale[:, None]


# -- launchers (what BatchNorm calls) -------------------------------------------------------

@dataclass(frozen=True)
class ChannelLayout:
    """x (N, C, ...) as the kernels read it: ``buffer``, a C-contiguous array over x's memory
    (x's axes permuted by ``order``, outermost first; ``inverse`` permutes them back), seen as
    (outer, channels, inner). Everything is computed once, in :func:`channel_layout`: the
    launchers run on the host between launches, so they do no more than they must."""

    buffer: object
    order: tuple
    inverse: tuple
    outer: int
    channels: int
    inner: int
    shape: tuple  # x's shape, (N, C, ...)

    def like(self, a):
        """``a`` (x's shape) as a C-contiguous buffer in this layout's axis order: a view if
        ``a`` has x's layout, else one copy."""
        if tuple(a.shape) != self.shape:
            raise ValueError(f"expected an array of shape {self.shape} (the input's), got {tuple(a.shape)}")
        permuted = a.transpose(self.order)  # buffer's axis order
        return permuted if permuted.flags.c_contiguous else array_module(a).ascontiguousarray(permuted)

    def empty(self):
        """A new array of x's shape in x's layout: (buffer, (N, C, ...) view of it)."""
        out = array_module(self.buffer).empty_like(self.buffer)  # buffer's shape, C-contiguous
        return out, out.transpose(self.inverse)  # (N, C, ...) view

    def scalars(self):
        """The kernels' (channels, outer, inner) arguments."""
        return np.int32(self.channels), np.int64(self.outer), np.int64(self.inner)


def channel_layout(x) -> ChannelLayout:
    """x (N, C, ...) float32, any strides -> its ChannelLayout: x's own memory when x is a
    permutation of a C-contiguous array (NCHW, or Conv2D's batch-innermost view of
    (C, H, W, N) memory), else a C-contiguous copy (one launch)."""
    if x.dtype != np.float32:
        raise TypeError(f"the batchnorm kernels take float32 arrays, got {x.dtype}; "
                        "cast once with astype(numpy.float32) or run the group off")
    shape = tuple(int(n) for n in x.shape)
    buffer, order = memory_order(x)  # x's memory, axes outermost first (or an (N, C, ...) copy)
    position = order.index(1)
    sizes = [shape[axis] for axis in order]
    return ChannelLayout(buffer, order, tuple(order.index(axis) for axis in range(x.ndim)),
                         math.prod(sizes[:position]), shape[1], math.prod(sizes[position + 1:]), shape)


def _reduce_grid(layout: ChannelLayout):
    """One block per channel; a power-of-two block no larger than the channel's values need."""
    count, block = layout.outer * layout.inner, 32
    while block < min(count, MAX_REDUCE_BLOCK):
        block *= 2
    return (max(1, min(layout.channels, 2**31 - 1)),), (block,)


def _elementwise_grid(layout: ChannelLayout):
    """x over a channel's values, ELEMENTS_PER_THREAD each (the per-channel set-up, an IEEE
    sqrt and division, is paid once a thread), y over channels."""
    channels = min(layout.channels, MAX_GRID_Y)
    per_thread = -(-layout.outer * layout.inner // ELEMENTS_PER_THREAD)
    grid, block = grid_1d(per_thread, max_blocks=max(1, 65535 * 8 // channels))
    return (grid[0], channels), block


def train_forward(layout: ChannelLayout, weight, bias, running_mean, running_var, eps, momentum):
    """Batch statistics, running statistics moved in place (C-contiguous float32 (C,)), and
    y (x's shape and layout): two launches. Returns (y, mean, var), mean and var (C,) float32."""
    xp = array_module(layout.buffer)
    c, count = layout.channels, layout.outer * layout.inner
    if count < 2:
        raise ValueError(f"batch statistics need more than 1 value per channel, got {count} "
                         f"(x of shape {layout.shape}); use a larger batch, or evaluation mode")
    mean, var = xp.empty(c, dtype=np.float32), xp.empty(c, dtype=np.float32)  # (C,)
    grid, block = _reduce_grid(layout)
    launch("batchnorm.stats", grid, block,
           (layout.buffer, mean, var, running_mean, running_var, *layout.scalars(),
            np.float32(1 - momentum), np.float32(momentum), np.float32(momentum * count / (count - 1))))
    return normalized(layout, mean, var, weight, bias, eps), mean, var


def normalized(layout: ChannelLayout, mean, var, weight, bias, eps):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, x's shape and layout; one launch."""
    y_buffer, y = layout.empty()
    grid, block = _elementwise_grid(layout)
    launch("batchnorm.normalize", grid, block,
           (layout.buffer, mean, var, weight, bias, y_buffer, *layout.scalars(), np.float32(eps)))
    return y


def backward(layout: ChannelLayout, dy, mean, var, weight, eps, training, need_input_grad=True):
    """dy (x's shape, any layout) -> (dx in x's layout or None, dweight (C,), dbias (C,)):
    two launches (one without dx), plus one copy if dy's layout differs from x's."""
    xp = array_module(layout.buffer)
    dy_buffer = layout.like(dy)
    dweight, dbias = xp.empty(layout.channels, dtype=np.float32), xp.empty(layout.channels, dtype=np.float32)
    grid, block = _reduce_grid(layout)
    launch("batchnorm.backward_reduce", grid, block,
           (layout.buffer, dy_buffer, mean, var, dweight, dbias, *layout.scalars(), np.float32(eps)))
    if not need_input_grad:
        return None, dweight, dbias
    dx_buffer, dx = layout.empty()
    inv_count = np.float32(1 / (layout.outer * layout.inner)) if training else np.float32(0)
    grid, block = _elementwise_grid(layout)
    launch("batchnorm.backward_dx", grid, block,
           (layout.buffer, dy_buffer, mean, var, weight, dweight, dbias, dx_buffer, *layout.scalars(),
            np.float32(eps), inv_count))
    return dx, dweight, dbias
