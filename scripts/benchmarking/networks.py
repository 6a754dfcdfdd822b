"""The benchmark's networks: gpucnn's zoo (gpucnn/nn/zoo.py) plus two CIFAR-sized networks
that only the benchmark times (issue 21's GPU targets), built here so the zoo stays the
set of networks the training scripts offer.

    conv-bn  (3, 32, 32): 3 x [Conv 3x3 same, BatchNorm2D, ReLU, MaxPool 2], 32-64-128
             channels, GlobalAvgPool2D, Dense 128 -> classes
    vgg      (3, 32, 32): 3 x [(Conv 3x3 same, BatchNorm2D, ReLU) x 2, MaxPool 2],
             64-128-256 channels, GlobalAvgPool2D, Dense 256 -> classes
"""
from __future__ import annotations

import numpy as np

from gpucnn.nn.layers import BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, MaxPool2D, ReLU
from gpucnn.nn.model import Sequential
from gpucnn.nn.zoo import ARCHS as ZOO_ARCHS
from gpucnn.nn.zoo import build_model as zoo_model
from gpucnn.nn.zoo import check_fits


def _conv_bn_relu(c_in, c_out, rng):
    return [Conv2D(c_in, c_out, 3, padding="same", rng=rng), BatchNorm2D(c_out), ReLU()]


def conv_bn(input_shape, classes, rng):
    """(N, C, 32, 32) -> (N, classes): three conv-BN-ReLU-pool stages of 32, 64, 128 channels."""
    c = input_shape[0]
    layers = []
    for c_in, c_out in ((c, 32), (32, 64), (64, 128)):
        layers += [*_conv_bn_relu(c_in, c_out, rng), MaxPool2D(2)]
    return layers + [GlobalAvgPool2D(), Dense(128, classes, rng=rng)]


def vgg(input_shape, classes, rng):
    """(N, C, 32, 32) -> (N, classes): three stages of two conv-BN-ReLU blocks and a pool,
    64, 128, 256 channels."""
    c = input_shape[0]
    layers = []
    for c_in, c_out in ((c, 64), (64, 128), (128, 256)):
        layers += [*_conv_bn_relu(c_in, c_out, rng), *_conv_bn_relu(c_out, c_out, rng), MaxPool2D(2)]
    return layers + [GlobalAvgPool2D(), Dense(256, classes, rng=rng)]


BENCH_NETS = {"conv-bn": conv_bn, "vgg": vgg}
ARCHS = ZOO_ARCHS + tuple(BENCH_NETS)
# the images each network is timed on: MNIST-sized for simple and lenet, CIFAR-sized for the rest
INPUT_SHAPES = {"simple": (1, 28, 28), "lenet": (1, 28, 28), "lenet-bn": (3, 32, 32),
                "cifar-small": (3, 32, 32), "conv-bn": (3, 32, 32), "vgg": (3, 32, 32)}


def build_model(arch: str, input_shape, classes: int, rng: np.random.Generator | None = None) -> Sequential:
    """A zoo network or one of :data:`BENCH_NETS`, float32, for (C, H, W) ``input_shape``."""
    if arch in BENCH_NETS:
        model = Sequential(BENCH_NETS[arch](tuple(input_shape), classes, rng))
        check_fits(model, tuple(input_shape), classes, arch)
        return model
    if arch not in ZOO_ARCHS:
        raise ValueError(f"unknown benchmark network {arch!r}; expected one of {', '.join(ARCHS)}")
    return zoo_model(arch, tuple(input_shape), classes, rng)
