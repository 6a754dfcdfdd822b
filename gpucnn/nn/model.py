"""Sequential: a list of layers run in order, plus parameters, predict, summary, device
moves and save/load."""
from __future__ import annotations

import inspect
import json
import os

import numpy as np

from ..backends.backend import get_backend, to_host
from ..fileio import atomic_output
from .execution_units import execution_order, execution_units  # noqa: F401  (execution_order: scripts, tests)
from .layers import LAYER_TYPES, Dropout, Layer
from .inference import EVAL_BATCH_SIZE, predict_batches
from .saved_files import MODEL_FORMAT as FORMAT_VERSION  # the "format_version" save() writes
from .saved_files import CheckpointError, read_saved_model
from .summary import summary_table, trace_shapes


class Sequential:
    """Layers applied in order: ``forward(x)`` then ``backward(dy)`` in reverse.

    The model starts on the CPU (weights drawn on the host); ``to(backend)``
    moves every parameter to that backend's device. A ReLU followed by a
    MaxPool2D runs after the pooling (see :func:`execution_order`), and a Conv2D and
    the max pool after it run as one unit (gpucnn.nn.execution_units.ConvPool): same numbers, less work.
    """

    def __init__(self, layers):
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential expected a non-empty list of layers, got []")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"Sequential expected gpucnn layers, got {type(layer).__name__} at position {i}"
                )
        self.layers = layers
        self.backend = get_backend("cpu")
        # what the model was trained on, saved with it: "input_shape" [C, H, W], "class_names"
        # (a list, or None), "image_stats" (gpucnn.data.image_stats); {} when not known
        self.data_info: dict = {}
        self._units = execution_units(layers)  # layers and ConvPools, in the order they run
        self.train()  # a new model starts in training mode, as torch.nn.Module does

    def train(self, mode: bool = True) -> "Sequential":
        """Set training mode (``mode=True``) or evaluation mode on the model and every
        layer (their ``training`` attribute); returns self, as torch.nn.Module.train."""
        self.training = bool(mode)
        for layer in self.layers:
            layer.training = self.training
        return self

    def eval(self) -> "Sequential":
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def forward(self, x):
        """x (N, ...) -> output of the last layer."""
        for unit in self._units:
            x = unit.forward(x)
        return x

    __call__ = forward

    def backward(self, dy, need_input_grad=True):
        """dL/d(output) -> dL/dx; fills every layer's grads.

        ``need_input_grad=False`` skips the first layer's dL/dx (training needs
        no gradient w.r.t. the images) and returns None; layers without parameters
        before the first one with parameters (a Normalize in front) are then not
        run backward at all.
        """
        stop = 0
        if not need_input_grad:  # the first position that has something to train
            stop = next((p for p, unit in enumerate(self._units) if unit.params), len(self._units))
        for position in range(len(self._units) - 1, stop - 1, -1):
            dy = self._units[position].backward(dy, need_input_grad=need_input_grad or position > stop)
        return dy if need_input_grad else None

    # -- a list of layers, as torch.nn.Sequential ---------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        """``model[i]`` is a layer; ``model[a:b]`` a Sequential sharing those layers (and
        their weights), on the same device and in the same mode."""
        if isinstance(index, slice):
            part = Sequential(self.layers[index])
            part.backend = self.backend
            return part.train(self.training)
        return self.layers[index]

    def __repr__(self) -> str:
        rows = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({rows}\n)"

    # -- parameters and gradients -------------------------------------------------------
    def named_parameters(self):
        """[(key, layer, name)] with key like "0.weight": a stable name per parameter."""
        return [
            (f"{i}.{name}", layer, name)
            for i, layer in enumerate(self.layers)
            for name in layer.params
        ]

    def parameters(self) -> list:
        """The parameter arrays themselves (not copies), in the order of
        :meth:`named_parameters`. ``to()`` and ``load_state_dict()`` replace them:
        ask again after either."""
        return [layer.params[name] for _, layer, name in self.named_parameters()]

    def zero_grad(self) -> None:
        """Set every gradient to None (as torch's ``zero_grad(set_to_none=True)``).

        ``backward()`` overwrites gradients rather than adding to them, so this is not
        needed between steps; after it, an optimizer step without a backward raises
        instead of reusing stale gradients."""
        for layer in self.layers:
            for name in layer.params:
                layer.grads[name] = None

    @property
    def num_params(self) -> int:
        """Number of trained values (the parameters; saved state excluded)."""
        return sum(layer.num_params for layer in self.layers)

    def to(self, backend):
        """Move all parameters to ``backend`` (a Backend or a device name); returns self."""
        if isinstance(backend, str):
            backend = get_backend(backend)
        for layer in self.layers:
            layer.to(backend)
        self.backend = backend
        return self

    # -- shapes, summary, prediction ------------------------------------------------------
    def output_shape(self, input_shape) -> tuple:
        """Shape of ``forward(x)`` for a batch ``x.shape == input_shape``, without data;
        raises the first layer's ValueError that refuses its input."""
        shapes, failure = trace_shapes(self.layers, tuple(input_shape))
        if failure is not None:
            raise failure[1]
        return shapes[-1]

    def summary(self, input_shape) -> str:
        """A table of layers, output shapes and parameter counts, without running data.

        ``input_shape`` is one sample's shape, (C, H, W) (or (F,) for a model starting
        with Dense), as Keras takes it: the batch axis shows as None. A batch shape
        (N, C, H, W) works too and shows N. Rows are short (a layer is described by
        ``layer.describe()``), so the table of a usual CNN fits in 80 columns.
        """
        return summary_table(self, input_shape)

    def predict(self, x, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
        """x (N, C, H, W) host or device array -> host int64 class ids (N,).

        x holds float pixels in [0, 1] or uint8 pixels 0..255 (as gpucnn.data.datasets loads
        them; each batch becomes float32 / 255 on the device). Runs in eval mode in
        batches of ``batch_size`` (host batches are uploaded one by one), keeps the
        results on the device and downloads them once."""
        return predict_batches(self, x, batch_size, "predict")

    def predict_proba(self, x, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
        """x (N, C, H, W) host or device array -> host softmax probabilities (N, classes),
        in the model's dtype (float32 by default); batched as :meth:`predict`."""
        return predict_batches(self, x, batch_size, "predict_proba")

    def architecture(self) -> list[dict]:
        """JSON-able description that rebuilds the layers (without weights)."""
        return [{"type": type(layer).__name__, "config": layer.get_config()} for layer in self.layers]

    def named_state(self):
        """[(key, layer, name)] for every layer's saved-but-not-trained arrays
        (BatchNorm's running statistics), keyed like parameters: "1.running_mean"."""
        return [
            (f"{i}.{name}", layer, name)
            for i, layer in enumerate(self.layers)
            for name in layer.state
        ]

    def state_dict(self) -> dict:
        """{"0.weight": host numpy array, ..., "1.running_mean": ...}: parameters and
        saved state, as copies; the model does not move."""
        entries = [(key, layer.params[name]) for key, layer, name in self.named_parameters()]
        entries += [(key, layer.state[name]) for key, layer, name in self.named_state()]
        return {key: to_host(value).copy() for key, value in entries}

    def load_state_dict(self, state: dict) -> None:
        """Copy host arrays into the parameters and saved state, on the model's current
        device. Saved state (running statistics) may be missing, as in files written
        before layers had any: those layers keep their initial state."""
        params = {key for key, _, _ in self.named_parameters()}
        known = params | {key for key, _, _ in self.named_state()}
        if not params <= set(state) or not set(state) <= known:
            raise ValueError(
                f"state has parameters {sorted(state)}, the model expects {sorted(known)}; "
                "was it saved from a different architecture?"
            )
        for key, layer, name in self.named_parameters():
            layer.params[name] = self._device_copy(key, layer, layer.params[name], state[key])
        for key, layer, name in self.named_state():
            if key in state:
                layer.state[name] = self._device_copy(key, layer, layer.state[name], state[key])

    def _device_copy(self, key, layer, current, value):
        value = np.asarray(value)
        if value.shape != tuple(current.shape):
            raise ValueError(
                f"parameter {key} of {layer!r} expected shape {tuple(current.shape)}, "
                f"got {value.shape}; was it saved from a different architecture?"
            )
        return self.backend.asarray(value.astype(current.dtype, copy=False))

    @property
    def class_names(self) -> list | None:
        """The names of the output classes, in order, when the training data named them
        (an image folder's subfolders, a .npz's class_names), else None."""
        return self.data_info.get("class_names")

    def save(self, path) -> None:
        """Write weights + architecture to a host ``.npz`` (atomically: temp file, then
        rename), with :attr:`data_info` (input shape, class names, image statistics) when known.

        The model stays on its device; a GPU-trained model loads on a CPU-only laptop.
        """
        arrays = {f"param/{k}": v for k, v in self.state_dict().items()}
        entry = {"format_version": FORMAT_VERSION, "layers": self.architecture()}
        if self.data_info:
            entry["data_info"] = self.data_info
        arrays["architecture"] = np.array(json.dumps(entry))
        atomic_savez(path, arrays)


def build(architecture: list[dict], rng=None, dropout_rng=None) -> Sequential:
    """Rebuild layers from :meth:`Sequential.architecture` output (fresh weights).

    ``rng`` draws the initial weights (a private ``default_rng(0)`` when None, so
    rebuilding never consumes gpucnn's default generator); ``dropout_rng`` is the host
    generator Dropout layers draw their masks from while training (None: gpucnn's
    default generator, looked up at each forward).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    layers = []
    for i, spec in enumerate(architecture):
        cls = LAYER_TYPES.get(spec.get("type"))
        if cls is None:
            raise ValueError(f"layer {i}: unknown layer type {spec.get('type')!r}; known: {sorted(LAYER_TYPES)}")
        config = dict(spec.get("config", {}))
        if "rng" in inspect.signature(cls).parameters:
            config["rng"] = dropout_rng if cls is Dropout else rng
        for key in ("kernel_size", "padding"):
            if isinstance(config.get(key), list):
                config[key] = tuple(tuple(v) if isinstance(v, list) else v for v in config[key])
        try:
            layers.append(cls(**config))
        except TypeError as exc:  # a missing or misspelt constructor argument
            raise ValueError(f"layer {i} ({cls.__name__}): {exc}") from exc
    return Sequential(layers)


def load(path, backend="cpu") -> Sequential:
    """The model in a :meth:`Sequential.save` file or a training checkpoint, on ``backend``
    (default CPU), with the ``data_info`` (input shape, class names, image statistics) the
    file records. A missing, truncated or foreign file, or one of an unknown format
    version, raises :class:`gpucnn.training.checkpoint.CheckpointError` (a ValueError) naming the
    file and what is wrong (gpucnn.nn.saved_files reads and validates it)."""
    architecture, params, _, info = read_saved_model(path)
    model = rebuild(architecture, params, path)
    model.data_info = info
    return model.to(backend)


def rebuild(architecture: list, params: dict, path) -> Sequential:
    """A CPU model from gpucnn.nn.saved_files.read_model output (``path``: the file they were
    read from, named in the error); CheckpointError if it cannot be rebuilt."""
    try:
        model = build(architecture)
        model.load_state_dict(params)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{os.fspath(path)}: its model cannot be rebuilt ({exc})") from None
    return model


def atomic_savez(path, arrays: dict) -> None:
    """np.savez to a temporary file in the same folder, then rename over ``path``:
    a crash or Ctrl-C mid-write never leaves a half-written file at ``path``."""
    with atomic_output(path, suffix=".npz") as f:
        np.savez(f, **arrays)
