"""What a training run shows: the progress bar on stderr, one line per epoch, the
confusion matrix, and the metrics JSON file."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

__all__ = ["Progress", "stderr_is_terminal", "format_epoch", "format_confusion", "write_metrics_json"]


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Progress:
    """tqdm bar over the batches of one epoch, on stderr; the live loss/accuracy postfix is
    refreshed at most twice a second, so its device->host reads depend on wall time, not
    on the number of batches."""

    DELAY = 0.5  # seconds before the first draw: the epoch line before it may still be in `| tee`

    def __init__(self, total, desc, backend):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                        file=sys.stderr, delay=self.DELAY)
        self.backend = backend
        self.last = 0.0

    def __call__(self, b, batch_losses, correct, seen):
        self.bar.update(1)
        now = time.perf_counter()
        if now - self.last > 0.5:
            self.last = now
            recent = self.backend.to_numpy(batch_losses[max(0, b - 20):b + 1])
            self.bar.set_postfix(loss=f"{recent.mean():.4f}",
                                 acc=f"{int(self.backend.to_numpy(correct)) / seen:.2%}", refresh=False)

    def close(self):
        try:
            self.bar.close()
        except OSError:  # the terminal went away: the bar has nowhere to go
            pass


def format_epoch(r: dict, epochs: int) -> str:
    val = f"val_loss {r['val_loss']:.4f}  val_acc {r['val_acc']:.2%}  " if "val_loss" in r else ""
    lr = f"lr {r['lr']:.3g}  " if "lr" in r else ""
    return (f"epoch {r['epoch']}/{epochs}  train_loss {r['train_loss']:.4f}  train_acc {r['train_acc']:.2%}  "
            f"{val}{lr}{r['seconds']:.1f} s  {r['images_per_s']:.0f} img/s")


def format_confusion(matrix: np.ndarray, class_names=None) -> str:
    """The (K, K) confusion matrix as text, rows the true class, columns the predicted;
    labelled with ``class_names`` (K strings) when given, else the class numbers."""
    labels = [str(c) for c in (class_names if class_names else range(len(matrix)))]
    width = max(4, len(str(matrix.max())) + 1, *(len(label) + 1 for label in labels))
    margin = max(3, *(len(label) for label in labels))
    header = " " * (margin + 1) + "".join(f"{label:>{width}}" for label in labels)
    rows = [f"{label:>{margin}} " + "".join(f"{v:>{width}}" for v in row) for label, row in zip(labels, matrix)]
    return "\n".join([header, *rows])


def write_metrics_json(path, result: dict) -> None:
    """The metrics JSON: device, config, history, test_loss, test_acc, confusion_matrix
    (written to a temp file, then renamed)."""
    keys = ("device", "config", "history", "test_loss", "test_acc", "confusion_matrix")
    payload = json.dumps({k: result[k] for k in keys}, indent=2)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(payload + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
