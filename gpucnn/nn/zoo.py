"""Named architectures, and architectures read from JSON files.

    model = build_model("lenet-bn", input_shape=(1, 28, 28), num_classes=10)
    model = build_model("my_net.json", input_shape=(3, 32, 32), num_classes=10)

Zoo networks take their input channels, image size and class count from the data.
A JSON file holds what :meth:`Sequential.architecture` returns (a list of
``{"type": ..., "config": {...}}``), or a saved model's ``{"layers": [...]}``, so a
network can be written by hand and trained from the command line. Either way the
shapes are checked against the data before any training, naming the first layer
that does not fit.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                     MaxPool2D, ReLU)
from .model import Sequential, build
from .summary import trace_shapes

__all__ = ["ARCHS", "build_model", "check_fits", "read_architecture"]


def simple(input_shape, num_classes, rng, dropout_rng, dtype):
    """The course's network: Conv 5x5 (valid) -> ReLU -> 2x2 max pool -> Dense softmax classifier."""
    c, h, w = input_shape
    return [Conv2D(c, 32, 5, padding="valid", dtype=dtype, rng=rng), ReLU(), MaxPool2D(2),
            Flatten(), Dense(32 * ((h - 4) // 2) * ((w - 4) // 2), num_classes, dtype=dtype, rng=rng)]


def lenet(input_shape, num_classes, rng, dropout_rng, dtype):
    """LeNet-5 layout with wider layers; the second conv pads only for small (8x8) inputs."""
    c, h, w = input_shape
    h, w = h // 2, w // 2
    second_padding = "valid" if min(h, w) >= 8 else "same"
    if second_padding == "valid":
        h, w = h - 4, w - 4
    return [Conv2D(c, 16, 5, padding=2, dtype=dtype, rng=rng), ReLU(), MaxPool2D(2),
            Conv2D(16, 32, 5, padding=second_padding, dtype=dtype, rng=rng), ReLU(), MaxPool2D(2),
            Flatten(), Dense(32 * (h // 2) * (w // 2), 128, dtype=dtype, rng=rng, init="he"), ReLU(),
            Dense(128, num_classes, dtype=dtype, rng=rng)]


def conv_bn_relu(in_channels, out_channels, kernel_size, rng, dtype):
    """Conv ('same' padding) -> BatchNorm2D -> ReLU: the block of modern small CNNs."""
    return [Conv2D(in_channels, out_channels, kernel_size, padding="same", dtype=dtype, rng=rng),
            BatchNorm2D(out_channels, dtype=dtype), ReLU()]


def conv_pool_bn_relu(in_channels, out_channels, kernel_size, rng, dtype):
    """Conv ('same' padding) -> 2x2 MaxPool -> BatchNorm2D -> ReLU. With a positive BN
    scale this is conv-BN-ReLU-pool with the statistics taken after the pooling: BN and
    ReLU then touch a quarter of the values (on MNIST, lenet-bn trains ~17% faster)."""
    return [Conv2D(in_channels, out_channels, kernel_size, padding="same", dtype=dtype, rng=rng), MaxPool2D(2),
            BatchNorm2D(out_channels, dtype=dtype), ReLU()]


def lenet_bn(input_shape, num_classes, rng, dropout_rng, dtype):
    """For MNIST-like data: two conv-pool-BN-ReLU stages (5x5 32, 3x3 64 channels), then a
    dense head with BatchNorm1D and dropout. (N, C, H, W) -> (N, classes)."""
    c, h, w = input_shape
    return [*conv_pool_bn_relu(c, 32, 5, rng, dtype), *conv_pool_bn_relu(32, 64, 3, rng, dtype),
            Flatten(), Dropout(0.25, rng=dropout_rng),
            Dense(64 * (h // 4) * (w // 4), 128, dtype=dtype, rng=rng, init="he"),
            BatchNorm1D(128, dtype=dtype), ReLU(), Dropout(0.25, rng=dropout_rng),
            Dense(128, num_classes, dtype=dtype, rng=rng)]


def cifar_small(input_shape, num_classes, rng, dropout_rng, dtype):
    """For 32x32 colour images: three conv-BN-ReLU-pool stages (64, 128, 256 channels),
    global average pooling, dropout, a dense classifier. (N, C, H, W) -> (N, classes)."""
    c, _, _ = input_shape
    return [*conv_bn_relu(c, 64, 3, rng, dtype), MaxPool2D(2),
            *conv_bn_relu(64, 128, 3, rng, dtype), MaxPool2D(2),
            *conv_bn_relu(128, 256, 3, rng, dtype), MaxPool2D(2),
            GlobalAvgPool2D(), Dropout(0.2, rng=dropout_rng), Dense(256, num_classes, dtype=dtype, rng=rng)]


ZOO = {"simple": simple, "lenet": lenet, "lenet-bn": lenet_bn, "cifar-small": cifar_small}
ARCHS = tuple(ZOO)


def build_model(arch: str, input_shape: tuple, num_classes: int, rng: np.random.Generator | None = None,
                *, dropout_rng: np.random.Generator | None = None, dtype=np.float32) -> Sequential:
    """A zoo network (``arch`` in :data:`ARCHS`) or the network of a JSON file (a path
    ending in .json), for images of ``input_shape`` (C, H, W) and ``num_classes`` classes.

    ``rng`` draws the initial weights on the host (gpucnn's default generator when None);
    ``dropout_rng`` is the host generator Dropout layers draw their masks from (the
    training run's generator, so a resumed run continues its stream). Raises ValueError
    naming the first layer that does not fit the data.
    """
    if arch in ZOO:
        model = Sequential(ZOO[arch](tuple(input_shape), num_classes, rng, dropout_rng, dtype))
    elif str(arch).endswith(".json"):
        model = build(read_architecture(arch), rng=rng, dropout_rng=dropout_rng)
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)} "
                         "or the path of a JSON architecture file (*.json)")
    check_fits(model, input_shape, num_classes, arch)
    return model


def read_architecture(path) -> list[dict]:
    """The layer list of a JSON architecture file: ``[{"type": "Conv2D", "config": {...}}, ...]``
    or a saved model's ``{"layers": [...]}``."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"--arch {path}: cannot read the architecture file ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"--arch {path}: not valid JSON ({exc}); write the list that "
                         "Sequential.architecture() returns") from exc
    layers = spec.get("layers") if isinstance(spec, dict) else spec
    if not isinstance(layers, list) or not layers or not all(
            isinstance(entry, dict) and isinstance(entry.get("type"), str) for entry in layers):
        raise ValueError(
            f"--arch {path}: expected a non-empty list of layers like "
            '[{"type": "Conv2D", "config": {"in_channels": 1, "out_channels": 8, "kernel_size": 3}}, ...], '
            f"got {type(layers).__name__ if not isinstance(layers, list) else 'a list with a malformed entry'}"
        )
    return layers


def check_fits(model: Sequential, input_shape: tuple, num_classes: int, source: str = "the model") -> None:
    """Raise ValueError unless ``model`` maps images (N, *input_shape) to logits (N, num_classes),
    naming the first layer that does not fit."""
    shapes, failure = trace_shapes(model.layers, (None, *input_shape))
    if failure is not None:
        index, exc = failure
        raise ValueError(f"--arch {source}: layer {index} ({model.layers[index].describe()}) does not fit "
                         f"the data's images {tuple(input_shape)}: {exc}")
    if shapes[-1] != (None, num_classes):
        raise ValueError(f"--arch {source}: the network outputs shape {shapes[-1]}, the data has "
                         f"{num_classes} classes; end it with Flatten() and Dense(features, {num_classes})")
