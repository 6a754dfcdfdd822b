"""Training checkpoints: atomic save for exact resume, and the check that an output path
can be written.

A checkpoint is a host ``.npz`` file (the format is described in gpucnn.nn.saved_files):
weights, optimizer buffers and one JSON "meta" entry with everything an exact resume
needs. It is written atomically (temp file, then rename), so a crash, a Ctrl-C or a full
disk during a save leaves the previous file whole; a full disk raises DiskFullError saying
what a save needs, what is free and which epoch the old file still holds (checked before
training too: :func:`check_checkpoint_space`). Reading it back, validated, is gpucnn.nn.saved_files'
work (``load_checkpoint``, ``read_model``, ``read_data_info``: re-exported here, with
``CheckpointError``); turning a file into a model is gpucnn.nn.model's (``load``, ``rebuild``;
``load_trained_model`` here is ``gpucnn.load``).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from ..fileio import DiskFullError, check_free_space, free_bytes, is_disk_full
from ..nn.model import Sequential, atomic_savez, build, rebuild  # noqa: F401  (rebuild: scripts import it here)
from ..nn.model import load as load_trained_model  # noqa: F401  (one function: gpucnn.load)
from ..nn.saved_files import (CHECKPOINT_FORMAT, CHECKPOINT_META_KEYS, DATA_INFO_KEYS,  # noqa: F401
                              MODEL_FORMAT, NPY_MAGIC, ZIP_MAGIC, CheckpointError, load_checkpoint,
                              read_data_info, read_model)

__all__ = ["CheckpointError", "DiskFullError", "save_checkpoint", "checkpoint_arrays", "write_checkpoint",
           "check_checkpoint_space", "load_checkpoint", "read_model", "read_data_info", "rebuild",
           "load_trained_model", "check_output_path"]

NPZ_ENTRY_BYTES = 320  # per array in an .npz: its ZIP and .npy headers (about 260 bytes measured)
META_CHARS, META_CHARS_PER_EPOCH = 2048, 320  # the meta entry besides the architecture; history grows


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
    """Write :func:`checkpoint_arrays` output atomically (temp file, then rename): a crash,
    a Ctrl-C or a full disk during the write leaves the previous file at ``path``
    untouched. A full disk raises DiskFullError (an OSError) saying what the save needs,
    what is free and which epoch ``path`` still holds."""
    try:
        atomic_savez(path, arrays)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(path, checkpoint_bytes(arrays), free_bytes(path),
                            still_holds(path) or "no epoch is saved there") from exc


def checkpoint_bytes(arrays: dict) -> int:
    """About the size of the .npz file that holds ``arrays`` (np.savez does not compress)."""
    return sum(int(np.asarray(a).nbytes) + NPZ_ENTRY_BYTES for a in arrays.values())


def estimate_checkpoint_bytes(model: Sequential, optimizer, epochs: int) -> int:
    """About the size of a checkpoint of ``model`` after ``epochs`` epochs of ``optimizer``,
    before any is trained: the parameters and saved state, the optimizer's buffers (those it
    creates at its first step counted now: one per parameter with momentum, two for Adam
    and AdamW), and the meta entry (4 bytes a character; the history grows each epoch)."""
    from ..optim.optimizers import Adam

    params = [layer.params[name] for _, layer, name in model.named_parameters()]
    state = [layer.state[name] for _, layer, name in model.named_state()]
    buffers = [b for per_param in optimizer.state.values() for b in per_param.values()]
    per_param = 2 if isinstance(optimizer, Adam) else 1 if getattr(optimizer, "momentum", 0) else 0
    arrays = len(params) * (1 + per_param) + len(state) + 1
    buffer_bytes = sum(int(b.nbytes) for b in buffers) if buffers else per_param * sum(int(p.nbytes) for p in params)
    meta_chars = len(json.dumps(model.architecture())) + META_CHARS + META_CHARS_PER_EPOCH * epochs
    return (sum(int(a.nbytes) for a in params + state) + buffer_bytes + 4 * meta_chars
            + NPZ_ENTRY_BYTES * arrays)


def check_checkpoint_space(path, model: Sequential, optimizer, epochs: int) -> None:
    """Raise DiskFullError before training when the device of ``path`` has less room than
    one save of this model needs (:func:`estimate_checkpoint_bytes`; an atomic save writes
    a whole new copy beside the old file)."""
    check_free_space(path, estimate_checkpoint_bytes(model, optimizer, epochs),
                     still_holds(path) or "nothing was trained")


def still_holds(path) -> str:
    """What the checkpoint at ``path`` holds, for a message after a failed save:
    "runs/x.npz still holds epoch 2"; "" when there is no checkpoint there."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            epoch = json.loads(str(archive["meta"]))["epoch"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return ""
    return f"{os.fspath(path)} still holds epoch {epoch}"


def save_checkpoint(path, model, optimizer, epoch, rng, config, history, extra=None) -> None:
    """Weights, optimizer state, completed epoch, RNG state, config and history (and the
    ``extra`` meta entries) in one host .npz, written atomically; the model stays on its
    device."""
    write_checkpoint(path, checkpoint_arrays(model, optimizer, epoch, rng, config, history, extra))


# -- output paths -------------------------------------------------------------------------
def check_output_path(path) -> None:
    """Raise ValueError unless a file can be written at ``path``: not a folder, not a
    device or other special file, and its folder exists or can be created and takes new
    files (DiskFullError, an OSError, when its device is full: not the path's fault). Probes by creating and deleting a temporary file in the nearest existing folder
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
        if is_disk_full(exc):  # not the path's fault: a failure (DiskFullError is an OSError)
            raise DiskFullError(shown, None, free_bytes(full), still_holds(full)) from None
        raise ValueError(f"cannot create files in {existing} ({exc.strerror})") from None
