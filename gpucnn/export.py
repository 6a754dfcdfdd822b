"""ONNX export: a trained Sequential -> an .onnx file that ONNX Runtime (or any ONNX
runtime) runs with the same predictions.

    from gpucnn.export import to_onnx
    to_onnx(model, "model.onnx", input_shape=(1, 28, 28))

The graph has one input ``images`` (N, C, H, W) float32, N a dynamic batch axis
("N"), and one output ``logits``. Each layer becomes one or two ONNX nodes, made by
the converter function that :data:`CONVERTERS` names for its class; its weights
become float32 initializers named as in ``model.state_dict()`` ("0.weight").

The graph is the model in inference mode, as after ``model.eval()``: BatchNorm
uses its running statistics, Dropout passes its input through. Exporting never
runs the model, never moves it and never changes it: its parameters and saved
state are copied to the host (one copy each), nothing else leaves the device.
"""
from __future__ import annotations

import json

import numpy as np

from . import __version__
from .backends.backend import to_host
from .fileio import atomic_output

__all__ = ["CONVERTERS", "DEFAULT_OPSET", "MIN_OPSET", "infer_input_shape", "to_onnx"]

MIN_OPSET = 17  # every operator below has its current definition at opset 17 or before
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class _Graph:
    """The nodes and float32 initializers collected while the layers are converted."""

    def __init__(self, helper, numpy_helper):
        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []

    def constant(self, name: str, array) -> str:
        """A float32 initializer ``name`` holding ``array`` (a host array); returns its name."""
        self.initializers.append(self._numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def node(self, op_type: str, inputs: list, output: str, **attributes) -> str:
        """One node ``op_type(inputs) -> output``; returns the output's name."""
        self.nodes.append(self._helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output


# -- one converter per layer type: (graph, layer, host arrays, input name, output name) ----
# ``key`` is the layer's position, the prefix of its initializers ("3" -> "3.weight").

def convert_conv2d(g, layer, arrays, key, x, y):
    """Conv2D -> Conv with explicit per-side pads (ONNX order: top, left, bottom, right),
    so the even-kernel 'same' padding keeps its extra row and column top/left."""
    top, bottom, left, right = layer.pads
    return g.node("Conv", [x, g.constant(f"{key}.weight", arrays["weight"]),  # (C_out, C_in, kh, kw)
                           g.constant(f"{key}.bias", arrays["bias"])], y,
                  kernel_shape=list(layer.kernel_size), strides=[layer.stride] * 2,
                  pads=[top, left, bottom, right], dilations=[1, 1], group=1)


def _pool_attributes(layer) -> dict:
    p = layer.padding
    return {"kernel_shape": list(layer.kernel_size), "strides": [layer.stride] * 2,
            "pads": [p, p, p, p], "ceil_mode": 0}


def convert_maxpool2d(g, layer, arrays, key, x, y):
    """MaxPool2D -> MaxPool (ONNX ignores padded positions, as our -inf padding does)."""
    return g.node("MaxPool", [x], y, **_pool_attributes(layer))


def convert_avgpool2d(g, layer, arrays, key, x, y):
    """AvgPool2D -> AveragePool with count_include_pad=1: zero padding counts in the mean."""
    return g.node("AveragePool", [x], y, count_include_pad=1, **_pool_attributes(layer))


def convert_relu(g, layer, arrays, key, x, y):
    return g.node("Relu", [x], y)


def convert_flatten(g, layer, arrays, key, x, y):
    """Flatten -> Flatten(axis=1): (N, C, H, W) -> (N, C*H*W), row-major as ours."""
    return g.node("Flatten", [x], y, axis=1)


def convert_dense(g, layer, arrays, key, x, y):
    """Dense -> Gemm: y = x @ weight + bias with our (in_features, out_features) weight."""
    return g.node("Gemm", [x, g.constant(f"{key}.weight", arrays["weight"]),  # (in, out)
                           g.constant(f"{key}.bias", arrays["bias"])], y, transA=0, transB=0)


def convert_batchnorm(g, layer, arrays, key, x, y):
    """BatchNorm2D (N, C, H, W) / BatchNorm1D (N, F) -> BatchNormalization with the running
    statistics: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    return g.node("BatchNormalization", [
        x, g.constant(f"{key}.weight", arrays["weight"]), g.constant(f"{key}.bias", arrays["bias"]),
        g.constant(f"{key}.running_mean", arrays["running_mean"]),
        g.constant(f"{key}.running_var", arrays["running_var"])], y, epsilon=float(layer.eps))


def convert_dropout(g, layer, arrays, key, x, y):
    """Dropout -> Identity: at inference dropout passes its input through."""
    return g.node("Identity", [x], y)


def convert_global_avgpool2d(g, layer, arrays, key, x, y):
    """GlobalAvgPool2D (N, C, H, W) -> (N, C): GlobalAveragePool (N, C, 1, 1), then Flatten."""
    pooled = g.node("GlobalAveragePool", [x], f"{y}/pooled")  # (N, C, 1, 1)
    return g.node("Flatten", [pooled], y, axis=1)  # (N, C)


def convert_normalize(g, layer, arrays, key, x, y):
    """Normalize(mean, std) -> (x - mean) / std, per channel, with (1, C, 1, 1) constants."""
    config = layer.get_config()  # mean and std are lists there (or arrays in params/state)
    mean = np.asarray(arrays.get("mean", config["mean"]), dtype=np.float32).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
    std = np.asarray(arrays.get("std", config["std"]), dtype=np.float32).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
    centred = g.node("Sub", [x, g.constant(f"{key}.mean", mean)], f"{y}/centred")
    return g.node("Div", [centred, g.constant(f"{key}.std", std)], y)


# layer class name -> converter; a layer whose class is not here is refused
CONVERTERS = {
    "Conv2D": convert_conv2d,
    "MaxPool2D": convert_maxpool2d,
    "AvgPool2D": convert_avgpool2d,
    "ReLU": convert_relu,
    "Flatten": convert_flatten,
    "Dense": convert_dense,
    "BatchNorm2D": convert_batchnorm,
    "BatchNorm1D": convert_batchnorm,
    "Dropout": convert_dropout,
    "GlobalAvgPool2D": convert_global_avgpool2d,
    "Normalize": convert_normalize,
}


# -- checks made before anything is written -------------------------------------------------
def check_exportable(model) -> None:
    """Refuse, naming the layer and its position, a layer that has no converter."""
    for i, layer in enumerate(model.layers):
        name = type(layer).__name__
        if name not in CONVERTERS:
            raise ValueError(
                f"cannot export layer {i} of {len(model.layers)}, {layer!r}: no ONNX converter "
                f"for {name}; exportable layers: {', '.join(CONVERTERS)}"
            )


def infer_input_shape(model) -> tuple:
    """The per-sample input shape when the first layer fixes it: Dense(in_features=F) and
    BatchNorm1D take (F,). Anything else (a Conv2D knows C, not H and W) raises ValueError."""
    first = model.layers[0]
    if type(first).__name__ == "Dense":
        return (first.in_features,)
    if type(first).__name__ == "BatchNorm1D":
        return (int(first.params["weight"].shape[0]),)
    channels = getattr(first, "in_channels", None)
    example = f"({channels}, H, W)" if channels else "(C, H, W)"
    raise ValueError(
        f"cannot infer the input shape from the first layer, {first!r}: it does not fix the "
        f"image height and width; pass input_shape={example} (on the command line: "
        f"--input-shape {channels or 'C'} H W), e.g. (1, 28, 28) for MNIST"
    )


def output_shapes(model, input_shape) -> list[tuple]:
    """Shape after each layer for an input (1, *input_shape); raises ValueError naming the
    layer that cannot take it."""
    if (not isinstance(input_shape, (tuple, list)) or not input_shape
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1
                       for d in input_shape)):
        raise ValueError(
            f"to_onnx expected input_shape as a tuple of positive ints, (C, H, W) for images, "
            f"got {input_shape!r}"
        )
    shape, shapes = (1, *(int(d) for d in input_shape)), []
    for i, layer in enumerate(model.layers):
        try:
            shape = tuple(layer.output_shape(shape))
        except ValueError as exc:
            raise ValueError(
                f"input_shape={tuple(input_shape)} does not fit the model: layer {i} says: {exc}"
            ) from exc
        shapes.append(shape)
    return shapes


# -- the export ------------------------------------------------------------------------------
def _import_onnx():
    try:
        import onnx  # noqa: PLC0415  (an optional dependency: pip install 'gpucnn[onnx]')
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs the onnx package ({exc}); install it with: pip install 'gpucnn[onnx]'"
        ) from exc
    return onnx


def host_arrays(layer) -> dict:
    """A host float32 copy of each parameter and state array of ``layer``: one device->host
    transfer per array, and the layer keeps its own."""
    arrays = {**layer.params, **layer.state}
    return {name: np.array(to_host(value), dtype=np.float32) for name, value in arrays.items()}


def build_onnx(model, input_shape, opset: int = DEFAULT_OPSET):
    """The ``onnx.ModelProto`` for ``model`` taking images of shape (N, *input_shape),
    checked with ``onnx.checker.check_model(full_check=True)``. Writes nothing."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"to_onnx expected opset an int from {MIN_OPSET} to {newest} (the installed onnx's "
            f"newest), got {opset!r}"
        )
    check_exportable(model)
    if input_shape is None and getattr(model, "data_info", {}).get("input_shape"):
        input_shape = tuple(model.data_info["input_shape"])  # recorded when it was trained
    if input_shape is None:
        input_shape = infer_input_shape(model)
    shapes = output_shapes(model, input_shape)
    input_shape = tuple(int(d) for d in input_shape)

    graph = _Graph(helper, numpy_helper)
    x = INPUT_NAME
    for i, layer in enumerate(model.layers):
        name = type(layer).__name__
        y = OUTPUT_NAME if i == len(model.layers) - 1 else f"{i}.{name}"
        x = CONVERTERS[name](graph, layer, host_arrays(layer), str(i), x, y)

    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *input_shape])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", *shapes[-1][1:]])]
    onnx_graph = helper.make_graph(graph.nodes, "gpucnn.Sequential", inputs, outputs,
                                   initializer=graph.initializers)
    opset_ids = [helper.make_opsetid("", opset)]
    proto = helper.make_model(onnx_graph, opset_imports=opset_ids, producer_name="gpucnn",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opset_ids))
    proto.doc_string = f"gpucnn Sequential of {len(model.layers)} layers, inference mode"
    props = {"gpucnn.architecture": json.dumps(model.architecture()),
             "gpucnn.input_shape": json.dumps(list(input_shape))}
    for key in ("class_names", "image_stats"):  # what scripts/predict.py reads back (gpucnn.classify)
        if getattr(model, "data_info", {}).get(key) is not None:
            props[f"gpucnn.{key}"] = json.dumps(model.data_info[key])
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_onnx(model, path, input_shape=None, opset: int = DEFAULT_OPSET):
    """Write ``model`` (a Sequential, on any device) to the ONNX file ``path``.

    ``input_shape`` is the shape of one sample, (C, H, W) for images; None takes the
    shape ``model.data_info`` records (a trained model loaded from its file), else infers
    it where the first layer fixes it (see :func:`infer_input_shape`). The class names
    and training-image statistics the model keeps go into the file's metadata
    ("gpucnn.class_names", "gpucnn.data.image_stats", JSON). The graph maps
    images (N, *input_shape) float32 -> logits (N, classes), N dynamic; weights are
    stored as float32 (a float64 model is exported in float32).

    Unexportable layers, a bad ``input_shape`` or ``opset`` raise ValueError before
    anything is written; the file is written atomically (temp file, then rename).
    Returns the ``onnx.ModelProto``.
    """
    proto = build_onnx(model, input_shape, opset)
    with atomic_output(path, suffix=".onnx") as f:
        f.write(proto.SerializeToString())
    return proto
