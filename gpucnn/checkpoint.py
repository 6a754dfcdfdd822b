"""Checkpoints and model files: atomic save, exact resume, clear errors on broken files.

Two kinds of host ``.npz`` file hold a model:

- a training checkpoint (``save_checkpoint``; ``scripts/train.py --checkpoint``): weights
  ("param/0.weight", ...), optimizer buffers ("opt/0.weight/m", ...) and one JSON "meta"
  entry (format, architecture, optimizer hyperparameters, completed epoch, the data
  generator's state, the run's config and its history; from train.run also the images'
  "input_shape", "num_classes", "class_names" and the learning-rate "schedule"):
  everything an exact resume needs;
- a model file (``Sequential.save``): weights and one JSON "architecture" entry.

Every reader here validates the file before trusting it. A missing, empty, truncated or
foreign file, a file of the other kind, or one written in an unknown format version
raises :class:`CheckpointError` (a ValueError) with one line naming the file and what is
wrong. Pickled data is never loaded.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .model import FORMAT_VERSION as MODEL_FORMAT, Sequential, atomic_savez, build

CHECKPOINT_FORMAT = 1
CHECKPOINT_META_KEYS = ("architecture", "optimizer", "epoch", "rng_state", "config", "history")
ZIP_MAGIC = b"PK\x03\x04"  # every .npz is a zip archive
NPY_MAGIC = b"\x93NUMPY"

__all__ = ["CheckpointError", "save_checkpoint", "checkpoint_arrays", "write_checkpoint",
           "load_checkpoint", "read_model", "read_data_info", "rebuild", "load_trained_model", "check_output_path"]


class CheckpointError(ValueError):
    """A checkpoint or model file is missing, truncated, of the wrong kind or of an unknown format."""


# -- writing ------------------------------------------------------------------------------
def checkpoint_arrays(model: Sequential, optimizer, epoch: int, rng: np.random.Generator,
                      config, history: list, extra: dict | None = None) -> dict:
    """Host copies of everything a checkpoint holds, as the arrays of one .npz
    (``config``: a dataclass with ``to_dict()`` or a plain dict; ``extra``: more JSON-able
    meta entries, e.g. "input_shape", "num_classes", "class_names", "schedule")."""
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for key, buffers in opt_state.pop("state").items():
        for name, value in buffers.items():
            arrays[f"opt/{key}/{name}"] = value
    meta = {**(extra or {}), "format": CHECKPOINT_FORMAT, "architecture": model.architecture(),
            "optimizer": opt_state, "epoch": epoch, "rng_state": rng.bit_generator.state,
            "config": config if isinstance(config, dict) else config.to_dict(), "history": history}
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def write_checkpoint(path, arrays: dict) -> None:
    """Write :func:`checkpoint_arrays` output atomically (temp file, then rename): a crash
    or a Ctrl-C during the write leaves the previous file at ``path`` untouched."""
    atomic_savez(path, arrays)


def save_checkpoint(path, model, optimizer, epoch, rng, config, history, extra=None) -> None:
    """Weights, optimizer state, completed epoch, RNG state, config and history (and the
    ``extra`` meta entries) in one host .npz, written atomically; the model stays on its
    device."""
    write_checkpoint(path, checkpoint_arrays(model, optimizer, epoch, rng, config, history, extra))


# -- reading ------------------------------------------------------------------------------
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
    return _read_model(path)[:3]


DATA_INFO_KEYS = ("input_shape", "class_names", "image_stats")


def read_data_info(path) -> dict:
    """The model's ``data_info`` (input shape, class names, image statistics) as a
    checkpoint or a model file records it; {} for files written before it was kept."""
    return _read_model(path)[3]


def _read_model(path) -> tuple[list, dict, dict | None, dict]:
    """read_model's three, plus the data_info either kind of file records."""
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


def rebuild(architecture: list, params: dict, path) -> Sequential:
    """A CPU model from :func:`read_model` output; CheckpointError if it cannot be rebuilt."""
    try:
        model = build(architecture)
        model.load_state_dict(params)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{os.fspath(path)}: its model cannot be rebuilt ({exc})") from None
    return model


def load_trained_model(path, backend="cpu") -> Sequential:
    """The model in a training checkpoint or a ``Sequential.save`` file, on ``backend``,
    with the ``data_info`` (input shape, class names, image statistics) the file records."""
    architecture, params, _, info = _read_model(path)
    model = rebuild(architecture, params, path)
    model.data_info = info
    return model.to(backend)


# -- output paths -------------------------------------------------------------------------
def check_output_path(path) -> None:
    """Raise ValueError unless a file can be written at ``path``: not a folder, not a
    device or other special file, and its folder exists or can be created and takes new
    files. Probes by creating and deleting a temporary file in the nearest existing folder
    (permission bits say nothing for root, nor for read-only mounts and /proc)."""
    shown = os.fspath(path)
    full = os.path.abspath(shown)
    if os.path.isdir(full):
        raise ValueError(f"{shown} is a folder; give a file name inside it")
    if os.path.exists(full) and not os.path.isfile(full):
        raise ValueError(f"{shown} exists and is not a regular file")
    folder = existing = os.path.dirname(full)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot create the folder {folder}: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gpucnn-probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"cannot create files in {existing} ({exc.strerror})") from None
