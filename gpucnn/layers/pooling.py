"""MaxPool2D and AvgPool2D over NCHW, windows gathered by kernel offsets."""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .base import Layer, check_pair, check_positive_int
from .im2col import offset_slices, output_size, pad_nchw

# Values within this many float epsilons (relative to the window maximum) count
# as tied with it. Seed 000's pools hold exact decimal ties (1.9 = 0.6+0.8+0.5 =
# 0.2+0.4+0.8+0.5) that rounding breaks depending on the matrix multiply's
# summation order; with this tolerance the FIRST of them (row-major) still takes
# the gradient on every backend: 16 eps is ~1.9e-6 relative in float32.
TIE_EPS_MULTIPLE = 16


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

    def _windows(self, x):
        """Yield ((i, j), slices) for every kernel offset of the padded input."""
        (kh, kw), s = self.kernel_size, self.stride
        out_h, out_w = self._out_hw
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, offset_slices(i, j, s, out_h, out_w)

    def _prepare(self, x):
        self._check_floating(x)
        self._check_ndim(x, 4, "(N, C, H, W)")
        n, c, out_h, out_w = self.output_shape(x.shape)
        self._out_hw = (out_h, out_w)
        return n, c, out_h, out_w

    def _unpad(self, dx_padded):
        p = self.padding
        if p == 0:
            return dx_padded
        return dx_padded[:, :, p:dx_padded.shape[2] - p, p:dx_padded.shape[3] - p]  # (N, C, H, W)


class MaxPool2D(_Pool2D):
    """Max pooling: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H + 2p - kh) // stride + 1.

    ``stride`` defaults to ``kernel_size``. Windows are padded with -inf.
    Backward routes each window's gradient to ONE input: the first maximum in
    row-major order (seed 000, and PyTorch), where values within
    ``TIE_EPS_MULTIPLE`` float epsilons of the maximum count as tied.
    """

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, OH, OW)."""
        n, c, out_h, out_w = self._prepare(x)
        xp = array_module(x)
        x_padded = pad_nchw(x, *(self.padding,) * 4, value=-np.inf)  # (N, C, Hp, Wp)
        kh, kw = self.kernel_size
        windows = xp.empty((kh * kw, n, c, out_h, out_w), dtype=x.dtype)  # (K, N, C, OH, OW)
        for k, (rows, cols) in self._windows(x_padded):
            windows[k] = x_padded[:, :, rows, cols]
        y = windows.max(axis=0)  # (N, C, OH, OW)
        tolerance = TIE_EPS_MULTIPLE * np.finfo(x.dtype).eps * xp.abs(y)
        # argmax over a boolean axis returns the first True: the first (tied) maximum.
        first_max = (windows >= y - tolerance).argmax(axis=0).astype(xp.uint8)  # (N, C, OH, OW)
        self._cache = (first_max, x_padded.shape, x.dtype)
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (N, C, OH, OW) -> dx (N, C, H, W): dy goes to each window's first maximum."""
        first_max, padded_shape, dtype = self._cached()
        self._check_dy(dy, first_max.shape)
        if not need_input_grad:
            return None
        xp = array_module(dy)
        dx_padded = xp.zeros(padded_shape, dtype=dtype)  # (N, C, Hp, Wp)
        for k, (rows, cols) in self._windows(dx_padded):
            dx_padded[:, :, rows, cols] += xp.where(first_max == k, dy, 0)
        return self._unpad(dx_padded)


class AvgPool2D(_Pool2D):
    """Average pooling: x (N, C, H, W) -> y (N, C, OH, OW).

    Zero padding counts in the average (PyTorch's count_include_pad=True).
    """

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, OH, OW)."""
        n, c, out_h, out_w = self._prepare(x)
        xp = array_module(x)
        x_padded = pad_nchw(x, *(self.padding,) * 4)  # (N, C, Hp, Wp)
        y = xp.zeros((n, c, out_h, out_w), dtype=x.dtype)
        for _, (rows, cols) in self._windows(x_padded):
            y += x_padded[:, :, rows, cols]
        y *= x.dtype.type(1.0 / (self.kernel_size[0] * self.kernel_size[1]))
        self._cache = (x_padded.shape, x.dtype, y.shape)
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (N, C, OH, OW) -> dx (N, C, H, W): each input gets dy / (kh*kw) per window."""
        padded_shape, dtype, y_shape = self._cached()
        self._check_dy(dy, y_shape)
        if not need_input_grad:
            return None
        xp = array_module(dy)
        share = dy * dtype.type(1.0 / (self.kernel_size[0] * self.kernel_size[1]))  # (N, C, OH, OW)
        dx_padded = xp.zeros(padded_shape, dtype=dtype)  # (N, C, Hp, Wp)
        for _, (rows, cols) in self._windows(dx_padded):
            dx_padded[:, :, rows, cols] += share
        return self._unpad(dx_padded)
