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


# Passes over the convolution's output that the blocked layout saves striding through (max
# pooling's forward and backward), against the passes over K rows that it makes im2col and
# col2im stride through: ConvPool.pairs.
POOL_PASSES_SAVED = 4


def _direct(layer, method, *args, **kwargs):
    return method(*args, **kwargs)


class ConvPool:
    """A Conv2D and the MaxPool2D run right after it (``execution_order``), as one unit.

    ``forward(x)`` and ``backward(dy)`` give what ``pool.forward(conv.forward(x))`` and
    ``conv.backward(pool.backward(dy))`` give (the weight gradient to rounding: it adds the
    same products in another order); through the blocked layout when the pool's windows
    tile the convolution's output, else exactly those calls. ``call(layer, method, *args)``
    runs each layer's part (scripts/benchmarking/profile_step.py passes one that times it).
    """

    def __init__(self, conv: Conv2D, pool: MaxPool2D):
        self.conv, self.pool = conv, pool

    @staticmethod
    def pairs(conv, pool, first: bool) -> bool:
        """Whether ``pool`` runs on ``conv``'s blocked output: tiling windows, and the
        blocked layout pays off. It speeds up the pool's passes over the convolution's output
        (C_out rows), but im2col's copy of K = C_in*kh*kw rows, and col2im's additions unless
        ``conv`` is the first layer with parameters (training skips its input gradient),
        then move runs of N floats instead of OW*N (their reads and writes no longer line
        up into longer runs). Measured on the development VM, batch 64: simple's conv (K = 25,
        C_out = 32, first) -> step 5.7 -> 4.9 ms; lenet's second conv (K = 400, C_out = 32):
        im2col +0.19 ms, col2im +0.4 ms, its pool -0.1 ms, a loss."""
        if type(conv) is not Conv2D or type(pool) is not MaxPool2D:
            return False
        (kh, kw), stride = pool.kernel_size, pool.stride
        if pool.padding or not stride == kh == kw:
            return False
        k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        return k * (1 if first else 2) <= POOL_PASSES_SAVED * conv.out_channels

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
            # the pool's fused kernel (the 'maxpool' group) reads any layout in one launch:
            # the blocked layout, a CPU optimisation, would only cost the GPU its im2col's order
            blocked = blocked and not self.pool.fused(x)
        if not blocked:  # odd sizes (the pool drops the last row), bad input, fused pool: the plain calls
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
    tiling MaxPool2D run right after it become one :class:`ConvPool` where that pays off
    (:meth:`ConvPool.pairs`)."""
    order, units, position = execution_order(layers), [], 0
    while position < len(order):
        i = order[position]
        first = not any(unit.params for unit in units)  # Sequential.backward's first trained layer
        if position + 1 < len(order) and ConvPool.pairs(layers[i], layers[order[position + 1]], first):
            units.append(ConvPool(layers[i], layers[order[position + 1]]))
            position += 2
        else:
            units.append(layers[i])
            position += 1
    return units
