"""Training checkpoints: atomic save for exact resume, and the check that an output path
can be written.

A checkpoint is a host ``.npz`` file (the format is described in gpucnn.saved_files):
weights, optimizer buffers and one JSON "meta" entry with everything an exact resume
needs. It is written atomically (temp file, then rename), so a crash or a Ctrl-C during a
save leaves the previous file whole. Reading it back, validated, is gpucnn.saved_files'
work (``load_checkpoint``, ``read_model``, ``read_data_info``: re-exported here, with
``CheckpointError``); turning a file into a model is gpucnn.model's (``load``, ``rebuild``;
``load_trained_model`` here is ``gpucnn.load``).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .model import Sequential, atomic_savez, build, rebuild  # noqa: F401  (rebuild: scripts import it here)
from .model import load as load_trained_model  # noqa: F401  (one function: gpucnn.load)
from .saved_files import (CHECKPOINT_FORMAT, CHECKPOINT_META_KEYS, DATA_INFO_KEYS,  # noqa: F401
                          MODEL_FORMAT, NPY_MAGIC, ZIP_MAGIC, CheckpointError, load_checkpoint,
                          read_data_info, read_model)

__all__ = ["CheckpointError", "save_checkpoint", "checkpoint_arrays", "write_checkpoint",
           "load_checkpoint", "read_model", "read_data_info", "rebuild", "load_trained_model", "check_output_path"]


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
