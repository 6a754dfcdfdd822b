"""Conv2D: cross-correlation (as every framework computes it), via im2col.

The math, forward and backward: docs/math.md, "Convolution".
"""
from __future__ import annotations

import math
import operator

import numpy as np

from ...backends import kernels
from ...backends.backend import array_module
from ...backends.kernels.gemm import matmul_for
from ...backends.kernels.im2col import col2im_nchw, im2col_into
from .base import Layer, check_dtype, check_pair, check_positive_int, check_rng
from .conv_chunks import Geometry, backward_in_groups, channel_groups, forward_in_groups
from .init import init_weight
from .im2col import col2im, im2col, output_size, to_chwn
from .scratch import SHARED_MIN_BYTES, shared_scratch


def resolve_padding(owner: str, padding, kernel: tuple[int, int], stride: int):
    """Padding spec -> (top, bottom, left, right).

    Accepted: an int (all four sides), ``(ph, pw)``, ``((top, bottom), (left, right))``,
    ``"valid"`` (none) and ``"same"`` (stride 1 only; output H, W = input H, W).
    For an even kernel ``"same"`` needs an odd total padding: the extra zero
    row/column goes top/left, exactly as the 2x2 example of docs/math.md ("Worked
    example: one hand-trained step") is padded: its output[0, 0] = 1.3 only comes out
    that way. PyTorch and TensorFlow put the extra one bottom/right instead.
    """
    kh, kw = kernel
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != 1:
                raise ValueError(
                    f"{owner}: padding='same' needs stride=1, got stride={stride}; "
                    "give the padding as an int or ((top, bottom), (left, right))"
                )
            th, tw = kh - 1, kw - 1
            return th - th // 2, th // 2, tw - tw // 2, tw // 2
        raise ValueError(
            f"{owner} got unknown padding mode {padding!r}; expected 'valid', 'same', "
            "an int, (ph, pw) or ((top, bottom), (left, right))"
        )

    def non_negative(v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{owner} expected non-negative int padding, got {padding!r}")
        return int(v)

    if isinstance(padding, (tuple, list)):
        if len(padding) == 2 and all(isinstance(p, (tuple, list)) for p in padding):
            (top, bottom), (left, right) = padding
            return non_negative(top), non_negative(bottom), non_negative(left), non_negative(right)
        if len(padding) == 2:
            ph, pw = non_negative(padding[0]), non_negative(padding[1])
            return ph, ph, pw, pw
        raise ValueError(
            f"{owner} expected padding as an int, (ph, pw) or ((top, bottom), (left, right)), "
            f"got {padding!r}"
        )
    p = non_negative(padding)
    return p, p, p, p


class Conv2D(Layer):
    """2-D convolution (cross-correlation), NCHW.

    x (N, in_channels, H, W) -> y (N, out_channels, OH, OW) with
    OH = (H + pad_top + pad_bottom - kh) // stride + 1, same for OW (docs/math.md, "Output size").

    params["weight"] (out_channels, in_channels, kh, kw), params["bias"] (out_channels,).
    Weights are drawn on the host from ``rng`` (He normal by default, or
    ``init="glorot"``, Xavier's; docs/math.md, "Initial weights") so every backend
    starts identical.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 *, dtype=np.float32, rng=None, init="he"):
        super().__init__()
        name = type(self).__name__
        self.in_channels = check_positive_int(name, "in_channels", in_channels)
        self.out_channels = check_positive_int(name, "out_channels", out_channels)
        self.kernel_size = check_pair(name, "kernel_size", kernel_size)
        self.stride = check_positive_int(name, "stride", stride)
        self.padding = padding
        self.pads = resolve_padding(name, padding, self.kernel_size, self.stride)
        self.dtype = check_dtype(dtype)
        self.init = init
        kh, kw = self.kernel_size
        fan_in, fan_out = self.in_channels * kh * kw, self.out_channels * kh * kw
        self.params = {
            "weight": init_weight(name, init, check_rng(name, rng),
                                  (self.out_channels, self.in_channels, kh, kw),
                                  fan_in, fan_out, self.dtype),
            "bias": np.zeros(self.out_channels, dtype=self.dtype),
        }
        self.grads = {"weight": None, "bias": None}

    def get_config(self):
        padding = self.padding if not isinstance(self.padding, tuple) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": self.stride,
                "padding": padding, "dtype": self.dtype.name, "init": self.init}

    def describe(self):
        """``Conv2D 16->32 5x5``, plus `` s2`` / `` p2`` / `` same`` when not the default."""
        (kh, kw), (top, bottom, left, right) = self.kernel_size, self.pads
        text = f"Conv2D {self.in_channels}->{self.out_channels} {kh}x{kw}"
        if self.stride != 1:
            text += f" s{self.stride}"
        if self.padding == "same":
            return text + " same"
        if top == bottom == left == right:
            return text + (f" p{top}" if top else "")
        if top == bottom and left == right:
            return text + f" p({top},{left})"
        return text + f" p({top},{bottom},{left},{right})"

    def output_shape(self, input_shape):
        n, c, h, w = self._check_input_shape(tuple(input_shape))
        return (n, self.out_channels, *self._spatial_out(h, w))

    def _check_input_shape(self, shape):
        if len(shape) != 4 or shape[1] != self.in_channels:
            hint = "; add a channel axis with x[:, None]" if len(shape) == 3 else ""
            raise ValueError(
                f"{self!r} expected x of shape (N, {self.in_channels}, H, W), got {shape}{hint}"
            )
        return shape

    def _spatial_out(self, h, w):
        (kh, kw), s, (top, bottom, left, right) = self.kernel_size, self.stride, self.pads
        out_h = output_size(h, kh, s, top, bottom)
        out_w = output_size(w, kw, s, left, right)
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"{self!r}: kernel {kh}x{kw} is larger than the padded input "
                f"{h + top + bottom}x{w + left + right} (input {h}x{w}); "
                "use a larger input, more padding or a smaller kernel"
            )
        return out_h, out_w

    @staticmethod
    def _fused(a, xp) -> bool:
        """Whether im2col / col2im run as one kernel each (gpucnn.backends.kernels, group "im2col";
        float32 only); else the offset-slice code of layers/im2col.py (NumPy: always)."""
        return a.dtype == np.float32 and kernels.active("im2col", xp)

    def forward(self, x):
        """x (N, C_in, H, W) -> y (N, C_out, OH, OW), an NCHW view of (C_out, OH, OW, N) memory."""
        y_blocks = self.forward_blocks(x, (1, 1))  # (C_out, 1, 1, OH, OW, N)
        c_out, _, _, out_h, out_w, n = y_blocks.shape
        return y_blocks.reshape(c_out, out_h, out_w, n).transpose(3, 0, 1, 2)  # (N, C_out, OH, OW)

    def forward_blocks(self, x, blocks):
        """x (N, C_in, H, W) -> y (C_out, bh, bw, OH/bh, OW/bw, N), C-contiguous:
        output (oh, ow) at [:, oh % bh, ow % bw, oh // bh, ow // bw]. ``blocks`` (bh, bw)
        must divide (OH, OW). (1, 1) is :meth:`forward`'s layout; the (kh, kw) of a tiling
        max pool puts each window offset's outputs together (gpucnn.nn.execution_units.ConvPool)."""
        self._check_floating(x, self.dtype)
        n, _, h, w = self._check_input_shape(tuple(x.shape))
        out_h, out_w = self._spatial_out(h, w)
        (kh, kw), top, bottom, left, right = self.kernel_size, *self.pads
        (bh, bw), weight, bias = blocks, self.params["weight"], self.params["bias"]
        if out_h % bh or out_w % bw:
            raise ValueError(f"{self!r}: blocks {tuple(blocks)} must divide the output size {out_h}x{out_w}")

        xp = array_module(x)
        k = self.in_channels * kh * kw
        padded_hw = (h + top + bottom, w + left + right)
        fused = self._fused(x, xp)
        columns = (k + 1, out_h * out_w * n)  # (C_in*kh*kw + 1, OH*OW*N)
        shared = fused and math.prod(columns) * x.dtype.itemsize > SHARED_MIN_BYTES
        # the last row of the columns holds ones, so the bias rides along in the GEMM (as the
        # last column of the weights): no separate pass over y adds it, and backward gets
        # the bias gradient from the weight-gradient GEMM (a sum over the same columns)
        weight_and_bias = xp.concatenate([weight.reshape(self.out_channels, k), bias[:, None]],
                                         axis=1)  # (C_out, C_in*kh*kw + 1)
        groups = self._groups(columns, x.dtype) if shared else []
        if len(groups) > 1:  # columns over CHUNK_BYTES: a group of input channels at a time
            y = forward_in_groups(x, weight_and_bias, groups,
                                  self._geometry(h, w, out_h, out_w, blocks))  # (C_out, OH*OW*N)
        else:  # shared: the device's one buffer (layers/scratch.py), rebuilt in backward from x
            cols = (self._shared_columns(x, columns, out_h, out_w, blocks) if shared
                    else self._private_columns(x, columns, out_h, out_w, blocks))  # (C_in*kh*kw + 1, OH*OW*N)
            y = matmul_for(x)(weight_and_bias, cols)  # (C_out, OH*OW*N), columns in im2col's order for blocks
        # the columns, or (for shared ones) the input they are rebuilt from
        kept = _Rebuild(x, columns) if shared else cols
        self._cache = (kept, padded_hw, (n, self.out_channels, out_h, out_w), tuple(blocks))
        return y.reshape(self.out_channels, bh, bw, out_h // bh, out_w // bw, n)  # (C_out, bh, bw, OH/bh, OW/bw, N)

    def _groups(self, columns, dtype) -> list:
        """Input-channel groups whose shared columns stay within CHUNK_BYTES (conv_chunks.py)."""
        kh, kw = self.kernel_size
        return channel_groups(self.in_channels, kh, kw, columns[1], np.dtype(dtype).itemsize)

    def _geometry(self, h, w, out_h, out_w, blocks) -> Geometry:
        (kh, kw), (top, _, left, _) = self.kernel_size, self.pads
        return Geometry(kh, kw, self.stride, top, left, out_h, out_w, blocks, h, w)

    def _private_columns(self, x, columns, out_h, out_w, blocks):
        """im2col of x into this layer's own columns workspace, whose ones row is filled once."""
        xp = array_module(x)
        (kh, kw), (top, bottom, left, right) = self.kernel_size, self.pads
        k = columns[0] - 1
        cols = self._workspace("cols", columns, x.dtype, xp,
                               initialize=lambda buffer: buffer[k].fill(1))  # (C_in*kh*kw + 1, OH*OW*N)
        if self._fused(x, xp):  # one launch: x's layout, padding and windows in the kernel
            im2col_into(x, cols[:k], kh, kw, self.stride, top, left, out_h, out_w, tuple(blocks))  # (C_in*kh*kw, OH*OW*N)
        else:
            x_chwn = to_chwn(x, top, bottom, left, right)  # (C_in, Hp, Wp, N)
            im2col(x_chwn, kh, kw, self.stride, out_h, out_w, out=cols[:k], blocks=blocks)  # (C_in*kh*kw, OH*OW*N)
        return cols

    def _shared_columns(self, x, columns, out_h, out_w, blocks):
        """im2col of x into the device's shared columns buffer, with its ones row: two launches."""
        xp = array_module(x)
        (kh, kw), (top, _, left, _) = self.kernel_size, self.pads
        k = columns[0] - 1
        cols = shared_scratch(xp, "conv columns", columns, x.dtype)  # (C_in*kh*kw + 1, OH*OW*N)
        cols[k].fill(1)
        im2col_into(x, cols[:k], kh, kw, self.stride, top, left, out_h, out_w, tuple(blocks))
        return cols

    def backward(self, dy, need_input_grad=True):
        """dy (N, C_out, OH, OW) -> dx (N, C_in, H, W); fills grads."""
        cols, padded_hw, y_shape, blocks = self._cached()
        self._check_dy(dy, y_shape)
        if blocks != (1, 1):
            raise RuntimeError(f"{self!r}.backward() after forward_blocks(); call backward_blocks()")
        xp = array_module(dy)
        n, c_out, out_h, out_w = y_shape
        dy_chwn = xp.ascontiguousarray(dy.transpose(1, 2, 3, 0))  # (C_out, OH, OW, N)
        return self.backward_blocks(dy_chwn.reshape(c_out, 1, 1, out_h, out_w, n), need_input_grad)

    def backward_blocks(self, dy_blocks, need_input_grad=True):
        """dy in forward_blocks' layout (C_out, bh, bw, OH/bh, OW/bw, N), C-contiguous ->
        dx (N, C_in, H, W); fills grads."""
        cols, padded_hw, y_shape, blocks = self._cached()
        n, c_out, out_h, out_w = y_shape
        expected = (c_out, *blocks, out_h // blocks[0], out_w // blocks[1], n)
        if tuple(dy_blocks.shape) != expected:
            raise ValueError(f"{self!r}.backward_blocks expected dy of shape {expected} "
                             f"(forward_blocks' layout), got {tuple(dy_blocks.shape)}")
        weight = self.params["weight"]
        xp = array_module(dy_blocks)

        shared = isinstance(cols, _Rebuild)
        groups = self._groups(cols.shape, weight.dtype) if shared else []
        if len(groups) > 1:  # as forward did: a group of input channels at a time (conv_chunks.py)
            top, bottom, left, right = self.pads
            geometry = self._geometry(padded_hw[0] - top - bottom, padded_hw[1] - left - right, out_h, out_w, blocks)
            grads, dx = backward_in_groups(cols.x, weight, dy_blocks.reshape(c_out, -1), groups, geometry,
                                           need_input_grad)  # (C_in*kh*kw + 1, C_out), dx or None
            k = grads.shape[0] - 1
            self.grads["weight"] = grads[:k].T.reshape(weight.shape)  # (C_out, C_in, kh, kw), a view of grads
            self.grads["bias"] = grads[k]  # (C_out,)
            return dx
        if shared:  # shared columns: rebuilt from the kept input
            cols = self._shared_columns(cols.x, cols.shape, out_h, out_w, blocks)  # (C_in*kh*kw + 1, OH*OW*N)
        dy_2d = dy_blocks.reshape(c_out, -1)  # (C_out, OH*OW*N), columns in cols' order
        # rows 0..k-1 of cols @ dy_2d.T are the weight gradient (transposed), row k (the ones
        # row) the bias gradient: sum(dy) per output channel
        matmul = matmul_for(dy_blocks)  # cuBLAS directly with the "gemm" group (CUDA graphs need it)
        grads = matmul(cols, dy_2d.T)  # (C_in*kh*kw + 1, C_out)
        k = cols.shape[0] - 1
        self.grads["weight"] = grads[:k].T.reshape(weight.shape)  # (C_out, C_in, kh, kw), a view of grads
        self.grads["bias"] = grads[k]  # (C_out,)
        if not need_input_grad:
            return None
        kh, kw = self.kernel_size
        if shared:  # into the columns' own memory: they are dead once the product above has read
            # them (kernels on one stream run in order), which halves a large layer's scratch
            dcols = shared_scratch(xp, "conv columns", (k, cols.shape[1]), cols.dtype)  # (C_in*kh*kw, OH*OW*N)
        else:
            dcols = self._workspace("dcols", (k, cols.shape[1]), cols.dtype, xp)  # (C_in*kh*kw, OH*OW*N)
        into = xp.matmul if matmul is operator.matmul else matmul  # (the @ operator takes no out=)
        into(weight.reshape(c_out, -1).T, dy_2d, out=dcols)  # (C_in*kh*kw, OH*OW*N)
        top, bottom, left, right = self.pads
        h, w = padded_hw[0] - top - bottom, padded_hw[1] - left - right
        if self._fused(dcols, xp):  # one launch, a gather: no fill, no padding to slice off
            return col2im_nchw(dcols, self.in_channels, h, w, kh, kw, self.stride, top, left,
                               out_h, out_w, blocks)  # (N, C_in, H, W) view of (C_in, H, W, N)
        dx_chwn = col2im(dcols, self.in_channels, kh, kw, padded_hw, self.stride, out_h, out_w,
                         blocks)  # (C_in, Hp, Wp, N)
        return dx_chwn[:, top:top + h, left:left + w, :].transpose(3, 0, 1, 2)  # (N, C_in, H, W)


class _Rebuild:
    """What Conv2D keeps of a forward whose columns went to the shared buffer: its input
    and the columns' shape, to rebuild them in backward."""

    __slots__ = ("x", "shape")

    def __init__(self, x, shape):
        self.x, self.shape = x, shape
