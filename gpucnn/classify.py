"""Classify image files with a trained model: the library side of scripts/predict.py.

    from gpucnn.classify import classify_images
    for r in classify_images("runs/shapes.npz", ["photo.png", "more_photos/"], top_k=3):
        print(r.path, r.names[0], r.probabilities[0], r.note or "")

The model is a training checkpoint, a ``Sequential.save`` file, an exported ``.onnx``
file (run with ONNX Runtime) or a Sequential in memory. Each image is prepared exactly
as the training images were (gpucnn.data.images: the model's channels, resized to its image
size, uint8 -> float32 / 255); the model's own first layer normalises it. The model keeps
its class names and its training images' statistics (gpucnn.data.image_stats): results name
the classes, and an image unlike the training images gets a one-line ``note`` with the fix.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data.image_stats import image_note
from .data.images import is_image_file, list_images, read_images

__all__ = ["Classifier", "ImageResult", "load_classifier", "classify_images", "expand_paths"]

FILES_PER_CHUNK = 256  # files decoded and classified at a time: memory bounded for any folder
ONNXRUNTIME_MISSING = "running an .onnx model needs onnxruntime: pip install 'gpucnn[onnx]'"


@dataclass
class ImageResult:
    """One file's result: the ``top_k`` classes (ids, names: the class names, or the ids
    as text when the model has none) with their probabilities, best first; ``note``: what
    makes the image unlike the training images; ``error``: why the file could not be
    classified (then the lists are empty)."""

    path: str
    classes: list
    names: list
    probabilities: list
    note: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier:
    """A trained model behind one call: ``probabilities(x)`` for uint8 images
    (N, C, H, W) at ``input_shape`` -> (N, classes) float32. ``class_names`` (or None) and
    ``image_stats`` (or None) are what the model file records."""

    def __init__(self, probabilities, input_shape, class_names=None, image_stats=None, kind="gpucnn"):
        self.probabilities = probabilities
        self.input_shape = tuple(int(d) for d in input_shape)
        self.class_names = list(class_names) if class_names else None
        self.image_stats = image_stats or None
        self.kind = kind

    @classmethod
    def from_model(cls, model, input_shape=None) -> "Classifier":
        """A Sequential (on any device) -> Classifier; ``input_shape`` (C, H, W): None takes
        ``model.data_info["input_shape"]``, else ValueError saying to pass it."""
        info = getattr(model, "data_info", {}) or {}
        shape = input_shape or info.get("input_shape")
        if shape is None:
            raise ValueError("classify expected the model's input shape (C, H, W): this model does not "
                             "record it (saved before gpucnn kept it); pass input_shape=(C, H, W)")
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"classify expected a model of images with 1 or 3 channels, (C, H, W), "
                             f"got input shape {tuple(shape)}")
        return cls(model.predict_proba, shape, info.get("class_names"), info.get("image_stats"))

    @classmethod
    def from_onnx(cls, path) -> "Classifier":
        """An .onnx file from gpucnn.export -> Classifier run by ONNX Runtime on the CPU."""
        try:
            import onnxruntime
        except ImportError:
            raise ImportError(ONNXRUNTIME_MISSING) from None
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types: a file it cannot load
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        graph_input = session.get_inputs()[0]
        shape = graph_input.shape[1:]  # (C, H, W) after the dynamic batch axis
        if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
            raise ValueError(f"{path}: expected an image model with input (N, C, H, W), got {graph_input.shape}")
        props = session.get_modelmeta().custom_metadata_map
        names = json.loads(props["gpucnn.class_names"]) if "gpucnn.class_names" in props else None
        stats = json.loads(props["gpucnn.data.image_stats"]) if "gpucnn.data.image_stats" in props else None

        def probabilities(x):  # uint8 (N, C, H, W) -> (N, classes)
            logits = session.run(None, {graph_input.name: x.astype(np.float32) / np.float32(255)})[0]
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))  # (N, classes)
            return exp / exp.sum(axis=1, keepdims=True)
        return cls(probabilities, shape, names, stats, kind="onnx")


def load_classifier(path, device="cpu") -> Classifier:
    """A checkpoint, a ``Sequential.save`` file (on ``device``: "cpu", "gpu", "auto" or a
    Backend) or an .onnx file (ONNX Runtime, CPU) -> Classifier."""
    if str(path).lower().endswith(".onnx"):
        return Classifier.from_onnx(path)
    from .training.checkpoint import load_trained_model

    return Classifier.from_model(load_trained_model(path, device))


def expand_paths(paths) -> list[str]:
    """Files as given, folders replaced by every image file in them (sorted); a path that
    is neither stays, to be reported as missing."""
    out = []
    for path in paths:
        out += [str(p) for p in list_images(path)] if os.path.isdir(path) else [str(path)]
    return out


def classify_images(model, paths, top_k: int = 5, invert: bool = False, device="cpu",
                    batch_size: int = 64) -> list[ImageResult]:
    """One ImageResult per image file in ``paths`` (files, or folders: every image in
    them), in order; a file that cannot be read gets ``error`` and the others are still
    classified. ``model``: a path (see :func:`load_classifier`), a Sequential or a
    Classifier. ``invert``: use 255 - pixels (a dark-on-light image for a model trained
    on light-on-dark ones). ``top_k``: classes per image (at most the model's)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
    if isinstance(model, (str, Path)):
        classifier = load_classifier(model, device)
    elif isinstance(model, Classifier):
        classifier = model
    else:
        classifier = Classifier.from_model(model)
    files = expand_paths(paths)
    results = []
    for start in range(0, len(files), FILES_PER_CHUNK):
        results += _classify_chunk(classifier, files[start:start + FILES_PER_CHUNK], top_k, invert, batch_size)
    return results


def _classify_chunk(classifier: Classifier, files: list, top_k: int, invert: bool, batch_size: int):
    channels, height, width = classifier.input_shape
    missing = {f: "no such file" if not os.path.exists(f) else "not an image file" for f in files
               if not is_image_file(f)}
    readable = [f for f in files if f not in missing]
    x, own_sizes, bad = read_images(readable, channels, (height, width))  # (n, C, H, W) uint8
    errors = dict(missing, **dict(bad))
    ok = np.asarray([f not in errors for f in readable], dtype=bool)
    x, own_sizes = x[ok], own_sizes[ok]
    if invert:
        x = np.subtract(np.uint8(255), x)  # (n, C, H, W): dark on light <-> light on dark
    probabilities = np.asarray(classifier.probabilities(x), dtype=np.float32) if len(x) else np.zeros((0, 1))
    k = min(top_k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]  # (n, k) best first
    names = classifier.class_names
    results, row = [], 0
    for f in files:  # one result per file: the files' own loop, not the pixels'
        if f in errors:
            results.append(ImageResult(f, [], [], [], error=errors[f]))
            continue
        ids = order[row].tolist()
        results.append(ImageResult(
            f, ids, [names[i] if names and i < len(names) else str(i) for i in ids],
            [round(float(probabilities[row, i]), 6) for i in ids],
            note=image_note(classifier.image_stats, x[row], own_sizes[row].tolist(), inverted=invert)))
        row += 1
    return results
