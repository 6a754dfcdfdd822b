"""Execution units: the layers as Sequential runs them, a Conv2D and the max pool
after it as one.

Conv2D hands out its output batch-innermost, (C, H, W, N) in memory (layers/im2col.py).
A 2x2 max pool over it then reads each window offset as a stride through that memory, in
runs of N floats (64 at batch 64): every pass of its forward and backward pays NumPy's
per-run overhead thousands of times. When the pool's windows tile the convolution's output
(stride == kernel, no padding, sizes divisible), ConvPool asks the Conv2D for its output
in window-blocked order instead, (C, kh, kw, OH, OW, N) (Conv2D.forward_blocks: the same
matrix multiply, its columns in another order), and the pool's passes run over whole
contiguous blocks (MaxPool2D.forward_blocks). Backward hands the pool's gradient back in
that order (MaxPool2D.backward_blocks -> Conv2D.backward_blocks). Same values: the
maximum and the mask of each window's first maximum are exact; the weight gradient sums
the same products in another order.
"""
from __future__ import annotations

from .layers import Conv2D, Layer, MaxPool2D, ReLU


def execution_order(layers) -> list[int]:
    """The order in which Sequential runs ``layers``: as given, except that a ReLU
    directly followed by a MaxPool2D runs after it.

    Max pooling and ReLU commute exactly: relu(max(window)) == max(relu(window)),
    and the gradient reaches the same input either way (the window's first
    maximum when it is positive, nothing otherwise). Run second, ReLU touches
    only the pooled values, a quarter of them for 2x2 pooling.
    """
    order = list(range(len(layers)))
    i = 0
    while i < len(order) - 1:
        if type(layers[order[i]]) is ReLU and type(layers[order[i + 1]]) is MaxPool2D:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2
        else:
            i += 1
    return order


def _direct(layer, method, *args, **kwargs):
    return method(*args, **kwargs)


class ConvPool:
    """A Conv2D and the MaxPool2D run right after it (``execution_order``), as one unit.

    ``forward(x)`` and ``backward(dy)`` equal ``pool.forward(conv.forward(x))`` and
    ``conv.backward(pool.backward(dy))``; through the blocked layout when the pool's windows
    tile the convolution's output, else exactly those calls. ``call(layer, method, *args)``
    runs each layer's part (scripts/profile_step.py passes one that times it).
    """

    def __init__(self, conv: Conv2D, pool: MaxPool2D, conv_index: int, pool_index: int):
        self.conv, self.pool = conv, pool
        self.indices = (conv_index, pool_index)

    @staticmethod
    def pairs(conv, pool) -> bool:
        """Whether ``pool`` can ever run on ``conv``'s blocked output: tiling windows."""
        if type(conv) is not Conv2D or type(pool) is not MaxPool2D:
            return False
        (kh, kw), stride = pool.kernel_size, pool.stride
        return pool.padding == 0 and stride == kh == kw

    @property
    def params(self) -> dict:
        return self.conv.params

    def forward(self, x, call=_direct):
        """x (N, C_in, H, W) -> the pool's output (N, C_out, OH, OW)."""
        kernel, shape = self.pool.kernel_size, tuple(getattr(x, "shape", ()))
        blocked = False
        if len(shape) == 4 and shape[1] == self.conv.in_channels:
            out_h, out_w = self.conv.output_shape(shape)[2:]  # raises for a too small image, as forward
            blocked = out_h % kernel[0] == 0 and out_w % kernel[1] == 0
        if not blocked:  # odd sizes (the pool drops the last row) or bad input: the plain calls
            return call(self.pool, self.pool.forward, call(self.conv, self.conv.forward, x))
        y_blocks = call(self.conv, self.conv.forward_blocks, x, kernel)  # (C_out, kh, kw, OH/kh, OW/kw, N)
        return call(self.pool, self.pool.forward_blocks, y_blocks)

    def backward(self, dy, need_input_grad=True, call=_direct):
        """dy (N, C_out, OH, OW) of the pool's output -> dx (N, C_in, H, W) (None without
        need_input_grad); fills the Conv2D's grads."""
        if not self.pool.cached_blocks:  # the layers' caches say how forward ran
            return call(self.conv, self.conv.backward, call(self.pool, self.pool.backward, dy),
                        need_input_grad=need_input_grad)
        dy_blocks = call(self.pool, self.pool.backward_blocks, dy)  # (C_out, kh, kw, OH/kh, OW/kw, N)
        return call(self.conv, self.conv.backward_blocks, dy_blocks, need_input_grad=need_input_grad)


def execution_units(layers: list[Layer]) -> list:
    """Sequential's steps: each layer in ``execution_order``, except that a Conv2D and a
    tiling MaxPool2D run right after it become one :class:`ConvPool`."""
    order, units, position = execution_order(layers), [], 0
    while position < len(order):
        i = order[position]
        if position + 1 < len(order) and ConvPool.pairs(layers[i], layers[order[position + 1]]):
            units.append(ConvPool(layers[i], layers[order[position + 1]], i, order[position + 1]))
            position += 2
        else:
            units.append(layers[i])
            position += 1
    return units
