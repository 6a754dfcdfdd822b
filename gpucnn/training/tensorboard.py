"""Live training curves: TensorBoard event files (``scripts/train.py --log-dir DIR``,
then ``tensorboard --logdir DIR``).

    log = TensorBoardLog("runs/tb")
    log.steps(first_step=1, losses=losses, lrs=lrs)  # per step: training loss, learning rate
    log.epoch(record, step)                          # per epoch: losses, accuracies
    log.filters(model, step)                         # the first layer's filters as an image
    log.close()

The writer is tensorboardX (pip install 'gpucnn[tensorboard]'): a well-kept, small
package that writes TensorBoard's event format with only numpy and protobuf as
dependencies, so no deep-learning framework is installed for it (torch.utils.tensorboard
needs torch, tf.summary TensorFlow). tensorboardX imports torch when torch happens to be
installed, only to accept torch tensors, which gpucnn never passes: gpucnn hides torch
from that one import (2 s and hundreds of MB saved when torch is there).

Every scalar uses the global step (batches since the run began) as its x axis, the
per-epoch ones at their epoch's last step; the per-step values of an epoch are written
when the epoch ends (reading the loss batch by batch would stop the GPU every step),
and the file is flushed after each epoch, so TensorBoard shows each epoch as it ends.
A resumed run appends to the same folder; steps after the checkpoint are purged, so an
interrupted epoch's values are not shown twice.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..backends.backend import to_host

__all__ = ["TENSORBOARD_MISSING", "TensorBoardLog", "check_log_dir", "filter_image", "run_log"]

TENSORBOARD_MISSING = "--log-dir needs tensorboardX: pip install 'gpucnn[tensorboard]'"


def _summary_writer():
    """tensorboardX.SummaryWriter, imported without torch (see the module docstring)."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError inside tensorboardX
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(TENSORBOARD_MISSING) from None
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


def check_log_dir(log_dir) -> None:
    """ValueError naming --log-dir unless tensorboardX imports and ``log_dir`` takes files."""
    from .checkpoint import check_output_path

    try:
        _summary_writer()
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise ValueError(f"--log-dir {log_dir} is a file; give a folder (it is created when missing)")
    try:
        check_output_path(os.path.join(log_dir, "events.probe"))
    except ValueError as exc:
        raise ValueError(f"--log-dir: {exc}") from None


def filter_image(weight) -> np.ndarray:
    """First-layer weights (K, C, kh, kw) on any device -> one float32 image in [0, 1]:
    (rows*(kh+1)-1, cols*(kw+1)-1) for one input channel, (3, ...) colour for three;
    0.5 is a zero weight, each filter a tile (gpucnn.training.plot.kernel_mosaic), white gaps."""
    from .plot import kernel_mosaic

    kernels = to_host(weight).astype(np.float32)  # (K, C, kh, kw)
    limit = float(np.abs(kernels).max()) or 1.0
    channels = [0, 1, 2] if kernels.shape[1] == 3 else [0]
    image = np.stack([kernel_mosaic(kernels[:, c]) for c in channels])  # (C', H, W) with NaN gaps
    image = 0.5 + image / (2 * limit)  # [-limit, limit] -> [0, 1]
    image[np.isnan(image)] = 1.0  # gaps between tiles: white
    return image if len(channels) == 3 else image[0]


class TensorBoardLog:
    """One run's event file in ``log_dir``. ``purge_step``: when resuming, the first step
    of the resumed epochs (values from that step on, left by an interrupted run, are dropped)."""

    def __init__(self, log_dir, purge_step: int | None = None):
        self.writer = _summary_writer()(logdir=str(log_dir), purge_step=purge_step, flush_secs=30)

    def steps(self, first_step: int, losses, lrs) -> None:
        """Per-step training loss and learning rate: losses (B,), lrs (B,) for the steps
        first_step, first_step + 1, ... (one scalar per step: a loop over batches)."""
        for i, (loss, lr) in enumerate(zip(np.asarray(losses).tolist(), np.asarray(lrs).tolist())):
            self.writer.add_scalar("step/train_loss", loss, first_step + i)
            self.writer.add_scalar("step/lr", lr, first_step + i)

    def epoch(self, record: dict, step: int) -> None:
        """A history record (train_loss, train_acc, val_loss, val_acc, ...) at ``step``."""
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            if key in record:
                self.writer.add_scalar(f"epoch/{key}", record[key], step)
        self.writer.flush()

    def test(self, loss: float, accuracy: float, step: int) -> None:
        self.writer.add_scalar("test/loss", loss, step)
        self.writer.add_scalar("test/accuracy", accuracy, step)

    def filters(self, model, step: int) -> bool:
        """The first convolution's filters as an image ("filters/first_layer"); False when
        the model has no convolution."""
        convs = [layer for layer in model.layers if getattr(layer.params.get("weight"), "ndim", 0) == 4]
        if not convs:
            return False
        image = filter_image(convs[0].params["weight"])
        self.writer.add_image("filters/first_layer", image, step, dataformats="CHW" if image.ndim == 3 else "HW")
        return True

    def close(self) -> None:
        self.writer.close()


def run_log(log_dir, schedule, first_step: int, fit_options: dict, log=print) -> TensorBoardLog:
    """gpucnn.training.run.run's log: a TensorBoardLog in ``log_dir`` (purging the steps after
    ``first_step`` when resuming) and ``fit_options["on_batches"]`` writing each epoch's
    per-step losses and the rates ``schedule`` gave those steps."""
    tensorboard = TensorBoardLog(log_dir, purge_step=first_step + 1 if first_step else None)
    log(f"tensorboard: event files in {log_dir} (view them with: tensorboard --logdir {log_dir})")

    def on_batches(epoch, losses, sizes):
        first = schedule.step_count - len(losses)  # the epoch's first step, counted from 0
        tensorboard.steps(first + 1, losses, [schedule.lr_at(first + i) for i in range(len(losses))])
    fit_options["on_batches"] = on_batches
    return tensorboard
