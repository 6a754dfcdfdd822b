"""Sequential.predict / predict_proba: batched inference in eval mode, one download."""
from __future__ import annotations

import numpy as np

from ..backends.backend import array_module
from ..data.batches import batch_slices
from ..data.pixels import check_image_dtype, float_batch
from .summary import trace_shapes

EVAL_BATCH_SIZE = 256  # images per inference batch when none is given: predict, evaluate, the test report


def predict_batches(model, x, batch_size, kind: str) -> np.ndarray:
    """x (N, ...) host or device array -> host class ids (N,) int64 for ``kind="predict"``,
    softmax probabilities (N, classes) for ``kind="predict_proba"``.

    x holds float pixels in [0, 1] or uint8 pixels 0..255; a uint8 batch becomes float32
    in [0, 1] on the model's device after it is sliced (gpucnn.data.pixels.float_batch), then
    the model's dtype. Runs in eval mode (the previous mode of the model and each layer
    comes back after, also on an exception), in batches: a host ``x`` is uploaded one
    batch at a time, a device ``x`` is sliced where it lies. Results stay on the device
    until one download.
    """
    owner = f"Sequential.{kind}"
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{owner} expected batch_size to be a positive int, got {batch_size!r}")
    dtype, classes = _check_input(model, x, owner)
    pixels = x.dtype == np.uint8  # uploaded as uint8 (a quarter of the bytes), made float on the device
    cast = None if x.dtype == dtype or pixels else dtype  # casting a host float batch costs nothing extra
    backend, n = model.backend, x.shape[0]
    if kind == "predict":
        out = backend.xp.empty(n, dtype=np.int64)  # (N,)
    else:
        out = backend.xp.empty((n, classes), dtype=dtype)  # (N, classes)
    modes = [(model, model.training)] + [(layer, layer.training) for layer in model.layers]
    model.eval()
    try:
        for batch in batch_slices(n, batch_size):
            xb = backend.asarray(x[batch], dtype=cast)  # (B, ...) on the model's device
            if pixels:
                xb = float_batch(xb)  # float32 in [0, 1]
                xb = xb if xb.dtype == dtype else xb.astype(dtype)
            logits = model.forward(xb)  # (B, classes)
            out[batch] = logits.argmax(axis=1) if kind == "predict" else _softmax(logits)
    finally:
        for owner_of_flag, mode in modes:
            owner_of_flag.training = mode
    return backend.to_numpy(out)


def _softmax(logits):
    """logits (B, classes) -> probabilities (B, classes), each row summing to 1."""
    xp = array_module(logits)
    exp = xp.exp(logits - logits.max(axis=1, keepdims=True))  # (B, classes), max 1 per row
    return exp / exp.sum(axis=1, keepdims=True)  # (B, classes)


def _check_input(model, x, owner: str):
    """-> (the dtype the model computes in, the number of classes); raises on anything
    the model cannot take: not an array, another device, not float, a wrong shape."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(
            f"{owner} expected x as an array (N, C, H, W), got {type(x).__name__}; "
            "convert with numpy.asarray(x, dtype=numpy.float32), or numpy.uint8 for pixels 0..255"
        )
    xp = array_module(x)
    if xp is not np and xp is not model.backend.xp:
        raise TypeError(
            f"{owner} got x on another device than the model (on {model.backend.name!r}); "
            "pass x as a numpy array or move the model there with model.to(...)"
        )
    check_image_dtype(x, owner, "cast pixels 0..255 with x.astype(numpy.uint8), other values with "
                                "x.astype(numpy.float32) scaled into [0, 1]")
    shapes, failure = trace_shapes(model.layers, tuple(x.shape))
    if failure is not None:
        raise ValueError(f"{owner}: layer {failure[0]}: {failure[1]}")
    if len(shapes[-1]) != 2:
        raise ValueError(
            f"{owner} expected the model to output logits of shape (N, classes), got "
            f"{shapes[-1]}; end the model with Flatten() and Dense(features, classes)"
        )
    params = model.parameters()
    dtype = np.dtype(params[0].dtype) if params else np.dtype(np.float32 if x.dtype == np.uint8 else x.dtype)
    return dtype, shapes[-1][1]
