"""MaxPool2D and AvgPool2D over NCHW, windows gathered by kernel offsets (docs/math.md, "Pooling")."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...backends.backend import array_module
from ...backends.kernel_groups import active
from ...backends.kernels import pool as pool_kernels
from ...backends.cpu_threads import over_channel_chunks
from ...backends.ops import TIE_EPS_MULTIPLE
from .base import Layer, check_pair, check_positive_int, in_layout_of
from .im2col import offset_slices, output_size, pad_nchw



class _Pool2D(Layer):
    """Shared window geometry: kernel (kh, kw), stride, symmetric padding."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = check_pair(name, "kernel_size", kernel_size)
        self.stride = self.kernel_size[0] if stride is None else check_positive_int(name, "stride", stride)
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"{name} expected padding to be a non-negative int, got {padding!r}")
        if 2 * padding > min(self.kernel_size):
            raise ValueError(
                f"{name}: padding={padding} must be at most half the kernel {self.kernel_size}, "
                "or some windows would hold only padding"
            )
        self.padding = int(padding)

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": self.stride, "padding": self.padding}

    def describe(self):
        """``MaxPool2D 2x2``, plus `` s1`` / `` p1`` when not the default."""
        kh, kw = self.kernel_size
        text = f"{type(self).__name__} {kh}x{kw}"
        if self.stride != kh:
            text += f" s{self.stride}"
        return text + (f" p{self.padding}" if self.padding else "")

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4:
            hint = "; add a channel axis with x[:, None]" if len(shape) == 3 else ""
            raise ValueError(f"{self!r} expected x of shape (N, C, H, W), got {shape}{hint}")
        n, c, h, w = shape
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        out_h, out_w = output_size(h, kh, s, p, p), output_size(w, kw, s, p, p)
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"{self!r}: window {kh}x{kw} is larger than the padded input "
                f"{h + 2 * p}x{w + 2 * p}; use a smaller kernel_size"
            )
        return n, c, out_h, out_w

    def _windows(self, x_padded, out_hw):
        """Views (N, C, OH, OW) of the padded input, one per kernel offset, row-major."""
        (kh, kw), s = self.kernel_size, self.stride
        out_h, out_w = out_hw
        return [x_padded[:, :, rows, cols]
                for i in range(kh) for j in range(kw)
                for rows, cols in [offset_slices(i, j, s, out_h, out_w)]]

    @property
    def _overlapping(self) -> bool:
        return self.stride < max(self.kernel_size)

    def _prepare(self, x):
        self._check_floating(x)
        self._check_ndim(x, 4, "(N, C, H, W)")
        n, c, out_h, out_w = self.output_shape(x.shape)
        return out_h, out_w

    def _unpad(self, dx_padded):
        p = self.padding
        if p == 0:
            return dx_padded
        return dx_padded[:, :, p:dx_padded.shape[2] - p, p:dx_padded.shape[3] - p]  # (N, C, H, W)

    def _tiles(self, x_padded, out_hw) -> bool:
        """Whether the windows cover the padded input exactly once (each input in one window)."""
        (kh, kw), s = self.kernel_size, self.stride
        out_h, out_w = out_hw
        return s == kh == kw and x_padded.shape[2:] == (out_h * kh, out_w * kw)

    def _zero_unless_tiled(self, dx_padded, out_hw) -> None:
        """Zero a gradient buffer unless the windows tile it exactly (then every element is
        written by the scatter, and zeroing it first is wasted work)."""
        if not self._tiles(dx_padded, out_hw):
            dx_padded.fill(0)  # empty_like + fill: on NumPy zeros_like is slower for this layout

    def _gradient_buffer(self, x_padded, out_hw):
        """dx_padded, laid out like x_padded: zeros where no window writes."""
        dx_padded = array_module(x_padded).empty_like(x_padded)
        self._zero_unless_tiled(dx_padded, out_hw)
        return dx_padded

    def _scatter(self, dx_padded, dy, factors):
        """Window k of dx_padded gets dy * factors[k] (added where windows overlap)."""
        xp = array_module(dx_padded)
        product = xp.empty_like(dy) if self._overlapping else None
        for window, factor in zip(self._windows(dx_padded, dy.shape[2:]), factors):
            if self._overlapping:
                window += xp.multiply(dy, factor, out=product)
            else:  # disjoint windows: write straight into place
                xp.multiply(dy, factor, out=window)


class MaxPool2D(_Pool2D):
    """Max pooling: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H + 2p - kh) // stride + 1.

    ``stride`` defaults to ``kernel_size``. Windows are padded with -inf.
    Backward routes each window's gradient to ONE input: the first maximum in
    row-major order (as PyTorch; docs/math.md, "Max pooling and its gradient routing"),
    where values within ``TIE_EPS_MULTIPLE`` float epsilons of the maximum count as tied.
    """

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, OH, OW): a running maximum over the kernel offsets,
        one group of channels at a time (gpucnn.backends.cpu_threads: in cache, on a few threads).
        With the 'maxpool' kernel group: one launch (gpucnn.backends.kernels.pool), y an NCHW view
        of (C, OH, OW, N) memory."""
        out_hw = self._prepare(x)
        xp = array_module(x)
        if self.fused(x):
            y, offset = pool_kernels.max_pool(x, self.kernel_size, self.stride, self.padding, out_hw)
            self._cache = _FusedCache(offset, tuple(x.shape))  # offset (C, OH, OW, N) uint8
            return y
        x_padded = pad_nchw(x, *(self.padding,) * 4, value=-np.inf)  # (N, C, Hp, Wp)
        windows = self._windows(x_padded, out_hw)  # views, no copies
        # out=: CuPy ufuncs return C-contiguous arrays; empty_like (order 'K') keeps x's layout
        y = xp.empty_like(windows[0])  # (N, C, OH, OW)

        over_channel_chunks(x_padded, lambda channels: _running_max(
            [window[:, channels] for window in windows], y[:, channels]))
        self._cache = (x_padded, y)
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (N, C, OH, OW) -> dx (N, C, H, W): dy goes to each window's first maximum.
        After a fused forward: one launch, dx an NCHW view of (C, H, W, N) memory."""
        if isinstance(self._cache, _FusedCache):
            return self._backward_fused(dy, need_input_grad)
        x_padded, y = self._cached()
        if self.cached_blocks:
            raise RuntimeError(f"{self!r}.backward() after forward_blocks(); call backward_blocks()")
        self._check_dy(dy, y.shape)
        if not need_input_grad:
            return None
        xp = array_module(dy)
        dy = in_layout_of(dy, y)
        dx_padded = xp.empty_like(x_padded)  # (N, C, Hp, Wp), x's layout
        over_channel_chunks(x_padded, lambda channels: self._route_to_first_max(
            x_padded[:, channels], y[:, channels], dy[:, channels], dx_padded[:, channels]))
        return self._unpad(dx_padded)

    def fused(self, x) -> bool:
        """Whether forward(x) runs the fused kernels: the 'maxpool' group is active for x's
        array module, x is float32 and a window holds at most 255 elements."""
        (kh, kw) = self.kernel_size
        return (active("maxpool", array_module(x)) and x.dtype == np.float32
                and kh * kw <= pool_kernels.MAX_WINDOW)

    def _backward_fused(self, dy, need_input_grad):
        offset, input_shape = self._cache
        c, out_h, out_w, n = offset.shape
        self._check_dy(dy, (n, c, out_h, out_w))
        if not need_input_grad:
            return None
        if dy.dtype != np.float32:
            raise TypeError(f"{self!r}.backward expected dy of dtype float32 (as forward's output), got "
                            f"{dy.dtype}; cast with dy.astype(numpy.float32)")
        return pool_kernels.max_pool_grad(dy, offset, input_shape, self.kernel_size, self.stride,
                                          self.padding)  # (N, C, H, W)

    def _route_to_first_max(self, x_padded, y, dy, dx_padded):
        """Fill dx_padded (N, c, Hp, Wp) for one group of channels: each window's dy goes
        to its first maximum in row-major order."""
        xp = array_module(dy)
        out_hw = y.shape[2:]
        if self._tiles(x_padded, out_hw) and all(map(_batch_innermost, (x_padded, y, dy, dx_padded))):
            return self._route_tiled(x_padded, y, dy, dx_padded)
        # every temporary is allocated like y (empty_like): the layout stays batch-innermost
        tied_with_max = _tied_with_max(y)  # (N, c, OH, OW)
        self._zero_unless_tiled(dx_padded, out_hw)
        product = xp.empty_like(dy) if self._overlapping else None
        # Scan the offsets in row-major order: `hit` marks the windows whose first maximum
        # is at offset k, `found` those whose maximum an earlier offset already took.
        hit = xp.empty_like(y, dtype=bool)  # (N, c, OH, OW)
        windows = self._windows(x_padded, out_hw)
        last = len(windows) - 1
        for k, (window, dx_window) in enumerate(zip(windows, self._windows(dx_padded, out_hw))):
            xp.greater_equal(window, tied_with_max, out=hit)
            if k:
                xp.greater(hit, found, out=hit)  # and not found before (bools: a > b is a and not b)
            if self._overlapping:
                dx_window += xp.multiply(dy, hit, out=product)
            else:  # disjoint windows: write straight into place
                xp.multiply(dy, hit, out=dx_window)
            if k == 0:
                found, hit = hit, xp.empty_like(hit)
            elif k < last:
                found |= hit

    def _route_tiled(self, x_padded, y, dy, dx_padded):
        """_route_to_first_max where the windows tile the input and every array is an NCHW
        view of (C, H, W, N) memory (Conv2D's layout): then (C, H, W, N) is a free reshape
        to (C, OH, kh, OW, kw, N), so one comparison and one multiply cover every offset at
        once; only the first-maximum bookkeeping goes offset by offset, on booleans."""
        xp = array_module(dy)
        (kh, kw), (out_h, out_w) = self.kernel_size, y.shape[2:]
        n, c = y.shape[:2]

        def blocks(a, rows, cols):  # (N, c, OH*rows, OW*cols) -> (c, OH, rows, OW, cols, N), a view
            return a.transpose(1, 2, 3, 0).reshape(c, out_h, rows, out_w, cols, n)

        y6, dy6 = blocks(y, 1, 1), blocks(dy, 1, 1)  # (c, OH, 1, OW, 1, N)
        hit = xp.greater_equal(blocks(x_padded, kh, kw), _tied_with_max(y6),
                               out=xp.empty((c, out_h, kh, out_w, kw, n), dtype=bool))  # every offset
        _keep_first_hits([hit[:, :, i, :, j] for i in range(kh) for j in range(kw)])  # (c, OH, OW, N) each
        xp.multiply(dy6, hit, out=blocks(dx_padded, kh, kw))  # dy to each window's first maximum


    # -- on Conv2D.forward_blocks' layout (gpucnn.nn.execution_units.ConvPool) -----------------------
    def forward_blocks(self, x_blocks):
        """x (C, kh, kw, OH, OW, N), C-contiguous, the input at row kh*oh + i, column
        kw*ow + j in [:, i, j, oh, ow] (Conv2D.forward_blocks with this kernel) -> y (N, C,
        OH, OW), an NCHW view of (C, OH, OW, N) memory. Only for windows that tile the input
        (stride == kernel, no padding); then every window offset is one contiguous block,
        and each pass below is a plain run over memory instead of a stride through it."""
        self._check_floating(x_blocks)
        (kh, kw), s = self.kernel_size, self.stride
        if self.padding or not s == kh == kw or tuple(x_blocks.shape[1:3]) != (kh, kw):
            raise ValueError(f"{self!r}.forward_blocks expects tiling windows (stride == kernel, "
                             f"no padding) and x of shape (C, {kh}, {kw}, OH, OW, N), got "
                             f"{tuple(x_blocks.shape)}")
        xp = array_module(x_blocks)
        c, _, _, out_h, out_w, n = x_blocks.shape
        offsets = x_blocks.reshape(c, kh * kw, out_h, out_w, n)  # (C, kh*kw, OH, OW, N)
        y = xp.empty((c, out_h, out_w, n), dtype=x_blocks.dtype)  # (C, OH, OW, N)

        over_channel_chunks(x_blocks, lambda channels: _running_max(
            [offsets[channels, k] for k in range(kh * kw)], y[channels]), axis=0)
        self._cache = (x_blocks, y)  # y (C, OH, OW, N): marks the blocks layout for backward
        return y.transpose(3, 0, 1, 2)  # (N, C, OH, OW)

    @property
    def cached_blocks(self) -> bool:
        """Whether the last forward was :meth:`forward_blocks` (its backward is then
        :meth:`backward_blocks`)."""
        return self._cache is not None and self._cache[0].ndim == 6

    def backward_blocks(self, dy):
        """dy (N, C, OH, OW) -> dx in forward_blocks' layout (C, kh, kw, OH, OW, N): dy goes
        to each window's first maximum, as :meth:`backward`."""
        x_blocks, y = self._cached()
        if not self.cached_blocks:
            raise RuntimeError(f"{self!r}.backward_blocks() after forward(); call backward()")
        c, out_h, out_w, n = y.shape
        self._check_dy(dy, (n, c, out_h, out_w))
        xp = array_module(dy)
        dy = xp.ascontiguousarray(dy.transpose(1, 2, 3, 0))  # (C, OH, OW, N); no copy from ReLU or Conv2D
        offsets = x_blocks.reshape(c, -1, out_h, out_w, n)  # (C, kh*kw, OH, OW, N)
        dx_blocks = xp.empty_like(x_blocks)  # (C, kh, kw, OH, OW, N)
        dx_offsets = dx_blocks.reshape(offsets.shape)

        def route(channels):  # every window's dy to its first maximum, in row-major order
            x_group, dx_group = offsets[channels], dx_offsets[channels]
            hit = xp.greater_equal(x_group, _tied_with_max(y[channels])[:, None])  # (c, kh*kw, OH, OW, N)
            _keep_first_hits([hit[:, k] for k in range(hit.shape[1])])  # (c, OH, OW, N) each
            xp.multiply(dy[channels][:, None], hit, out=dx_group)

        over_channel_chunks(x_blocks, route, axis=0)
        return dx_blocks


class _FusedCache(NamedTuple):
    """MaxPool2D's cache after a fused forward: what the backward kernel needs."""
    offset: object  # (C, OH, OW, N) uint8: each window's first-maximum offset i*kw + j
    input_shape: tuple  # (N, C, H, W)


def _running_max(windows, out):
    """out = the elementwise maximum of ``windows`` (equal-shaped arrays), in place."""
    xp = array_module(out)
    if len(windows) == 1:
        out[...] = windows[0]
        return
    xp.maximum(windows[0], windows[1], out=out)
    for window in windows[2:]:
        xp.maximum(out, window, out=out)


def _keep_first_hits(hits):
    """Boolean masks, one per window offset in row-major order, cleared in place where an
    earlier offset already hit: each window keeps only its first maximum."""
    xp = array_module(hits[0])
    found = hits[0].copy()
    for k, hit in enumerate(hits[1:], start=1):
        xp.greater(hit, found, out=hit)  # bools: a > b is a and not b
        if k < len(hits) - 1:
            found |= hit


def _tied_with_max(y):
    """y - 16 eps |y|, laid out like y: window values this close to the maximum count as it."""
    xp = array_module(y)
    tied = xp.abs(y, out=xp.empty_like(y))
    tied *= -TIE_EPS_MULTIPLE * np.finfo(y.dtype).eps
    tied += y
    return tied


def _batch_innermost(a) -> bool:
    """Whether an (N, C, H, W) array is an NCHW view of C-contiguous (C, H, W, N) memory."""
    n, c, h, w = a.shape
    item = a.dtype.itemsize
    expected = (item, h * w * n * item, w * n * item, n * item)
    return all(stride == want for stride, want, size in zip(a.strides, expected, a.shape) if size > 1)


class AvgPool2D(_Pool2D):
    """Average pooling: x (N, C, H, W) -> y (N, C, OH, OW).

    Zero padding counts in the average (PyTorch's count_include_pad=True).
    """

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, OH, OW)."""
        out_hw = self._prepare(x)
        xp = array_module(x)
        x_padded = pad_nchw(x, *(self.padding,) * 4)  # (N, C, Hp, Wp)
        windows = self._windows(x_padded, out_hw)
        scale = x.dtype.type(1.0 / len(windows))
        y = xp.empty_like(windows[0])  # x's layout (CuPy ufuncs would return C-contiguous)
        if len(windows) == 1:
            xp.multiply(windows[0], scale, out=y)
        else:
            xp.add(windows[0], windows[1], out=y)
        for window in windows[2:]:
            y += window
        if len(windows) > 1:
            y *= scale
        self._cache = (x_padded, y.shape, scale)
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (N, C, OH, OW) -> dx (N, C, H, W): each input gets dy / (kh*kw) per window."""
        x_padded, y_shape, scale = self._cached()
        self._check_dy(dy, y_shape)
        if not need_input_grad:
            return None
        dx_padded = self._gradient_buffer(x_padded, y_shape[2:])  # (N, C, Hp, Wp)
        self._scatter(dx_padded, dy, [scale] * (self.kernel_size[0] * self.kernel_size[1]))
        return self._unpad(dx_padded)


class GlobalAvgPool2D(Layer):
    """Global average pooling: x (N, C, H, W) -> y (N, C), the mean of each feature map
    (torch: AdaptiveAvgPool2d(1) followed by flatten)."""

    def describe(self) -> str:
        return "GlobalAvgPool2D"

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4:
            hint = "; add a channel axis with x[:, None]" if len(shape) == 3 else ""
            raise ValueError(f"{self!r} expected x of shape (N, C, H, W), got {shape}{hint}")
        return shape[:2]

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C)."""
        self._check_floating(x)
        self.output_shape(x.shape)
        self._cache = x
        return x.mean(axis=(2, 3))  # (N, C)

    def backward(self, dy, need_input_grad=True):
        """dy (N, C) -> dx (N, C, H, W) = dy / (H*W) at every position, in x's layout."""
        x = self._cached()
        self._check_dy(dy, x.shape[:2])
        if not need_input_grad:
            return None
        xp = array_module(dy)
        scale = x.dtype.type(1.0 / (x.shape[2] * x.shape[3]))
        return xp.multiply(dy[:, :, None, None], scale, out=xp.empty_like(x))  # (N, C, H, W)
