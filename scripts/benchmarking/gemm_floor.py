"""The matrix multiplies of a training step, timed alone: how fast this design can get.

gpucnn's Conv2D and Dense layers spend their arithmetic in BLAS matrix multiplies
(im2col + GEMM). Everything else in a step (im2col's copy, col2im, pooling, ReLU,
BatchNorm, the loss, the optimizer) is memory traffic that could in principle shrink
towards zero; these multiplies cannot, short of another algorithm (Winograd, FFT, a
direct convolution) or another BLAS. ``gemm_floor_seconds`` times exactly the multiplies
one step makes, with the shapes and memory layouts the layers use, on freshly made
arrays. Its result is a floor under gpucnn's step time on this machine and BLAS, and so
a ceiling on any speed-up over PyTorch that tuning the rest of the step could reach.

Per Conv2D with K = C_in*kh*kw and L = OH*OW*N (Conv2D.forward / backward):
forward (C_out, K+1) @ (K+1, L); weight gradient (K+1, L) @ (L, C_out) (a transposed
view of the C-contiguous (C_out, L) gradient); input gradient (K, C_out) @ (C_out, L)
into a reused buffer, skipped for the first layer. Per Dense (N, in) -> (N, out):
x @ W, x.T @ dy, and the input gradient through Dense's own ``input_gradient``.
"""
from __future__ import annotations

import time

import numpy as np

from gpucnn.nn.layers import Conv2D, Dense
from gpucnn.nn.layers.dense import input_gradient
from gpucnn.nn.model import execution_order
from .measure import measure


def step_multiplies(model, x) -> tuple[list, list]:
    """(training, evaluation): zero-argument functions, one per matrix multiply of a training
    step, resp. of an evaluation forward pass, on batch ``x`` (N, C, H, W), each on arrays
    shaped and laid out as the layer's own."""
    data = np.random.default_rng(3)

    def random(shape):
        return data.random(shape, dtype=np.float32)

    was_training = model.training
    model.eval()  # the forward pass below only finds each layer's input
    training, evaluation = [], []
    for position, i in enumerate(execution_order(model.layers)):
        layer = model.layers[i]
        y = layer.forward(x)
        if isinstance(layer, Conv2D):
            n, c_out, out_h, out_w = y.shape
            k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            cols, weight = random((k + 1, out_h * out_w * n)), random((c_out, k + 1))  # (K+1, L)
            dy_2d, dcols = random((c_out, out_h * out_w * n)), np.empty((k, out_h * out_w * n), np.float32)
            evaluation.append(lambda w=weight, c=cols: w @ c)
            training += [evaluation[-1], lambda c=cols, d=dy_2d: c @ d.T]
            if position > 0:
                training.append(lambda w=weight[:, :k], d=dy_2d, out=dcols: np.matmul(w.T, d, out=out))
        elif isinstance(layer, Dense):
            inputs, weight, dy = x, layer.params["weight"], random(y.shape)  # the real input's layout
            evaluation.append(lambda a=inputs, w=weight: a @ w)
            training += [evaluation[-1], lambda a=inputs, d=dy: a.T @ d]
            if position > 0:
                training.append(lambda a=inputs, w=weight, d=dy: input_gradient(a, w, d))
        x = y
    model.train(was_training)
    return training, evaluation


class GemmFloorCase:
    """A benchmark case (measure.measure) that runs only the matrix multiplies of
    a gpucnn training step or evaluation pass, so their timing interleaves with the rest."""

    def __init__(self, model, x):
        self.training, self.evaluation = step_multiplies(model, x)

    def train_steps(self, steps):
        for _ in range(steps):
            for call in self.training:
                call()

    def eval_steps(self, steps):
        for _ in range(steps):
            for call in self.evaluation:
                call()


def gemm_floor_seconds(model, x, repeats: int = 7, warmup: int = 2, clock=time.perf_counter) -> float:
    """Seconds per training step that the step's matrix multiplies alone take: the median
    over ``repeats`` rounds, after ``warmup`` rounds (measure.measure, no pause)."""
    per_second = measure({"floor": GemmFloorCase(model, x)}, "train", 1, 1, warmup, repeats, clock, settle=0.0)
    return 1.0 / per_second["floor"]
