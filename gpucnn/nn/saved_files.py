"""Reading gpucnn's saved files, validated: the two kinds of host ``.npz`` file that hold a
model, and their format versions.

- a training checkpoint (gpucnn.training.checkpoint.save_checkpoint; ``scripts/train.py
  --checkpoint``): weights ("param/0.weight", ...), optimizer buffers ("opt/0.weight/m",
  ...) and one JSON "meta" entry (format, architecture, optimizer hyperparameters,
  completed epoch, the data generator's state, the run's config and its history; from
  train.run also the images' "input_shape", "num_classes", "class_names" and the
  learning-rate "schedule"): everything an exact resume needs;
- a model file (``Sequential.save``): weights and one JSON "architecture" entry.

Every reader here validates the file before trusting it. A missing, empty, truncated or
foreign file, a file of the other kind, or one written in an unknown format version
raises :class:`CheckpointError` (a ValueError) with one line naming the file and what is
wrong. Pickled data is never loaded. This module reads arrays and JSON only: turning them
into a model is gpucnn.nn.model.load's work (which imports this module, never the reverse).
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np

CHECKPOINT_FORMAT = 1  # the "format" of a checkpoint's "meta" entry
MODEL_FORMAT = 1  # the "format_version" of a model file's "architecture" entry
CHECKPOINT_META_KEYS = ("architecture", "optimizer", "epoch", "rng_state", "config", "history")
DATA_INFO_KEYS = ("input_shape", "class_names", "image_stats")
ZIP_MAGIC = b"PK\x03\x04"  # every .npz is a zip archive
NPY_MAGIC = b"\x93NUMPY"

__all__ = ["CheckpointError", "CHECKPOINT_FORMAT", "MODEL_FORMAT", "load_checkpoint", "read_model",
           "read_data_info", "read_saved_model"]


class CheckpointError(ValueError):
    """A checkpoint or model file is missing, truncated, of the wrong kind or of an unknown format."""


# defined here, where every reader raises it; its public home, as the docs and tracebacks
# name it, is gpucnn.training.checkpoint (which re-exports it), as numpy names its own by set_module
CheckpointError.__module__ = "gpucnn.training.checkpoint"


def _read_npz(path) -> dict:
    """Every entry of the .npz at ``path`` as host arrays, read eagerly, or CheckpointError."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise CheckpointError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{shown}: is a folder, not a file") from None
    except OSError as exc:
        raise CheckpointError(f"{shown}: cannot read it ({exc.strerror})") from None
    if not head:
        raise CheckpointError(f"{shown}: the file is empty")
    if head.startswith(NPY_MAGIC):
        raise CheckpointError(f"{shown}: a single .npy array, not a gpucnn .npz file")
    if not head.startswith(ZIP_MAGIC):
        raise CheckpointError(f"{shown}: not an .npz file (it starts with bytes {head[:4].hex()}, "
                              "an .npz starts with 504b0304)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise CheckpointError(f"{shown}: the file is truncated or damaged ({exc}); "
                              "use an earlier copy or train again") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{shown}: not a readable .npz file ({exc})") from None


def _json_entry(path, entries: dict, name: str) -> dict:
    try:
        value = json.loads(str(entries[name]))
    except ValueError as exc:
        raise CheckpointError(f"{os.fspath(path)}: its '{name}' entry is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{os.fspath(path)}: its '{name}' entry is not a JSON object")
    return value


def _check_format(path, version, supported: int, kind: str) -> None:
    if version != supported:
        newer = isinstance(version, int) and version > supported
        raise CheckpointError(
            f"{os.fspath(path)}: {kind} format {version!r}, this gpucnn reads format {supported}"
            + ("; upgrade gpucnn to read it" if newer else ""))


def _not_gpucnn(path, entries: dict) -> CheckpointError:
    names = sorted(entries)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return CheckpointError(f"{os.fspath(path)}: an .npz but not a gpucnn checkpoint or model file "
                           f"(its entries: {shown or 'none'})")


def _params(entries: dict) -> dict:
    return {k[len("param/"):]: v for k, v in entries.items() if k.startswith("param/")}


def load_checkpoint(path) -> dict:
    """A training checkpoint -> {"meta": dict, "params": {key: array}, "optimizer_state": dict}.

    Raises CheckpointError for anything but a readable checkpoint of this format (a model
    file from ``Sequential.save`` included: it has no optimizer state or epoch to resume)."""
    entries = _read_npz(path)
    if "meta" not in entries:
        if "architecture" in entries:
            raise CheckpointError(
                f"{os.fspath(path)}: a model file (Sequential.save), not a training checkpoint: "
                "it holds no optimizer state or epoch to resume; resume from a --checkpoint file")
        raise _not_gpucnn(path, entries)
    meta = _json_entry(path, entries, "meta")
    _check_format(path, meta.get("format"), CHECKPOINT_FORMAT, "checkpoint")
    missing = [k for k in CHECKPOINT_META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{os.fspath(path)}: the checkpoint lacks {', '.join(missing)}; it is damaged")
    buffers: dict = {}
    for name, value in entries.items():
        if name.startswith("opt/"):
            parts = name.split("/")
            if len(parts) != 3:
                raise CheckpointError(f"{os.fspath(path)}: unexpected optimizer entry {name!r}")
            buffers.setdefault(parts[1], {})[parts[2]] = value
    optimizer_state = dict(meta["optimizer"], state=buffers)
    return {"meta": meta, "params": _params(entries), "optimizer_state": optimizer_state}


def read_model(path) -> tuple[list, dict, dict | None]:
    """(architecture, weights, checkpoint meta or None for a model file) from either kind."""
    return read_saved_model(path)[:3]


def read_data_info(path) -> dict:
    """The model's ``data_info`` (input shape, class names, image statistics) as a
    checkpoint or a model file records it; {} for files written before it was kept."""
    return read_saved_model(path)[3]


def read_saved_model(path) -> tuple[list, dict, dict | None, dict]:
    """(architecture, weights, checkpoint meta or None for a model file, data_info) from
    either kind of file: :func:`read_model`'s three, plus the ``data_info`` (input shape,
    class names, image statistics; {} when not recorded) the file records."""
    entries = _read_npz(path)
    if "meta" in entries:
        checkpoint = load_checkpoint(path)
        meta = checkpoint["meta"]
        info = {k: meta[k] for k in DATA_INFO_KEYS if meta.get(k) is not None}
        return meta["architecture"], checkpoint["params"], meta, info
    if "architecture" not in entries:
        raise _not_gpucnn(path, entries)
    meta = _json_entry(path, entries, "architecture")
    _check_format(path, meta.get("format_version"), MODEL_FORMAT, "model file")
    if not isinstance(meta.get("layers"), list):
        raise CheckpointError(f"{os.fspath(path)}: the model file lacks its list of layers; it is damaged")
    info = meta.get("data_info") if isinstance(meta.get("data_info"), dict) else {}
    return meta["layers"], _params(entries), None, info
