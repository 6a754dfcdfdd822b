"""Shapes traced through a model's layers without data, and Sequential.summary's table."""
from __future__ import annotations

import numpy as np


def trace_shapes(layers, input_shape: tuple):
    """Shapes through ``layers`` from each layer's ``output_shape``, without data.

    Returns ``([input_shape, after layer 0, after layer 1, ...], None)``, or, at the
    first layer that refuses its input, ``(the shapes so far, (its index, its ValueError))``.
    """
    shapes = [tuple(input_shape)]
    for i, layer in enumerate(layers):
        try:
            shapes.append(tuple(layer.output_shape(shapes[-1])))
        except ValueError as exc:
            return shapes, (i, exc)
    return shapes, None


def summary_table(model, input_shape) -> str:
    """The text of ``model.summary(input_shape)``: one row per layer (index, short
    description, output shape, parameter count), then total / trainable /
    non-trainable counts (non-trainable: saved state such as BatchNorm's running
    statistics, counted as Keras counts them)."""
    shape = _check_shape(input_shape)
    shapes, as_sample = trace_shapes(model.layers, (None, *shape))  # one sample, batch axis None
    if as_sample is not None:
        shapes, as_batch = trace_shapes(model.layers, shape)
        if as_batch is not None:
            raise ValueError(_mismatch_message(model.layers, shape, as_sample, as_batch))

    index_width = len(str(len(model.layers) - 1))
    rows = [("Layer", "Output shape", "Param #"), ("Input", str(shapes[0]), "")]
    trainable = non_trainable = 0
    for i, (layer, out_shape) in enumerate(zip(model.layers, shapes[1:])):
        saved = sum(int(np.prod(v.shape)) for v in layer.state.values())
        trainable, non_trainable = trainable + layer.num_params, non_trainable + saved
        rows.append((f"{i:>{index_width}} {layer.describe()}", str(out_shape),
                     f"{layer.num_params + saved:,}"))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]

    def fmt(row):
        return f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}".rstrip()

    line = "-" * (sum(widths) + 4)
    return "\n".join([
        fmt(rows[0]), line, *map(fmt, rows[1:]), line,
        f"Total params: {trainable + non_trainable:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {non_trainable:,}",
    ])


def _check_shape(input_shape) -> tuple:
    if (not isinstance(input_shape, (tuple, list)) or not input_shape
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                   for v in input_shape)):
        raise ValueError(
            f"Sequential.summary expected a shape of positive ints such as (1, 28, 28), "
            f"got {input_shape!r}; pass one sample's shape (C, H, W) as a tuple"
        )
    return tuple(int(v) for v in input_shape)


def _mismatch_message(layers, shape, as_sample, as_batch) -> str:
    """Why ``shape`` fits neither as one sample's shape nor as a batch's.

    ``as_sample`` / ``as_batch``: (index, ValueError) of the layer that refused it.
    """
    (sample_at, sample_exc), (batch_at, batch_exc) = as_sample, as_batch
    if sample_at != batch_at:  # one reading got further: its error is the informative one
        how, at, exc = ("per-sample", sample_at, sample_exc) if sample_at > batch_at else (
            "batch", batch_at, batch_exc)
        return f"Sequential.summary({shape}) as a {how} shape: layer {at}: {exc}"
    first = layers[0]
    if sample_at == 0 and hasattr(first, "in_channels"):
        rank, size, sample, batch = 4, first.in_channels, "({}, H, W)", "(N, {}, H, W)"
    elif sample_at == 0 and hasattr(first, "in_features"):
        rank, size, sample, batch = 2, first.in_features, "({},)", "(N, {})"
    else:
        return (f"Sequential.summary could not use {shape} as a per-sample shape "
                f"(layer {sample_at}: {sample_exc}) nor as a batch shape ({batch_exc})")
    if len(shape) == rank - 1 and shape[0] == size:  # the right kind of shape, refused otherwise
        return f"Sequential.summary({shape}) as a per-sample shape: layer 0: {sample_exc}"
    if len(shape) == rank and shape[1] == size:
        return f"Sequential.summary({shape}) as a batch shape: layer 0: {batch_exc}"
    return (f"Sequential.summary: the first layer, {first.describe()}, expected a per-sample "
            f"shape {sample.format(size)} or a batch shape {batch.format(size)}, got {shape}")
