"""What a training run shows: the progress bar (on stderr when it is a terminal, in a
Jupyter notebook too), one line per epoch, the confusion matrix, and the metrics JSON file."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

__all__ = ["Progress", "stderr_is_terminal", "in_notebook", "progress_bar_kind", "progress_bar_shown",
           "format_epoch", "format_seconds", "format_confusion", "run_class_names", "write_metrics_json"]


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def in_notebook() -> bool:
    """True inside a Jupyter kernel: ipykernel is loaded and IPython's shell has a kernel
    (a terminal IPython has none). Imports nothing."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        shell = sys.modules["IPython"].get_ipython()
    except Exception:  # IPython not loaded, or no shell
        return False
    return getattr(shell, "kernel", None) is not None


def _widgets_usable() -> bool:
    """True when tqdm's notebook widget can be drawn (ipywidgets importable: the
    'notebook' extra)."""
    from importlib.util import find_spec

    if find_spec("ipywidgets") is None:
        return False
    try:
        from tqdm import notebook
    except ImportError:
        return False
    return notebook.IProgress is not None


def progress_bar_kind() -> str | None:
    """Which progress bar fit shows: "widget" in a notebook where ipywidgets imports
    (tqdm's widget), "text" in a notebook without it (tqdm's text bar, which the
    notebook draws; never tqdm's "IProgress not found" warning), "terminal" when stderr
    is a terminal, None otherwise (stderr is a file or a pipe: no bar)."""
    if in_notebook():
        return "widget" if _widgets_usable() else "text"
    return "terminal" if stderr_is_terminal() else None


def progress_bar_shown() -> bool:
    return progress_bar_kind() is not None


class Progress:
    """tqdm bar over the batches of one epoch: on stderr, or a widget in a notebook
    (``kind``: as :func:`progress_bar_kind` says; None: ask it). The live loss/accuracy
    postfix is refreshed at most twice a second, so its device->host reads depend on
    wall time, not on the number of batches."""

    DELAY = 0.5  # seconds before the first draw: the epoch line before it may still be in `| tee`

    def __init__(self, total, desc, backend, kind=None):
        kind = progress_bar_kind() if kind is None else kind
        if kind == "widget":
            from tqdm.notebook import tqdm
        else:
            from tqdm.std import tqdm

        self.kind = kind
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
    """One line per epoch: losses, accuracies, the learning rate when recorded, the time
    (see :func:`format_seconds`) and the throughput."""
    val = f"val_loss {r['val_loss']:.4f}  val_acc {r['val_acc']:.2%}  " if "val_loss" in r else ""
    lr = f"lr {r['lr']:.3g}  " if "lr" in r else ""
    return (f"epoch {r['epoch']}/{epochs}  train_loss {r['train_loss']:.4f}  train_acc {r['train_acc']:.2%}  "
            f"{val}{lr}{format_seconds(r['seconds'])} s  {r['images_per_s']:.0f} img/s")


def format_seconds(seconds: float) -> str:
    """Seconds for a log line: 3 significant digits below 1 s (0.0432, 0.5), else one
    decimal (12.3): a fast epoch never reads "0.0"."""
    return f"{seconds:.3g}" if seconds < 1 else f"{seconds:.1f}"


def format_confusion(matrix: np.ndarray, class_names=None) -> str:
    """The (K, K) confusion matrix as text, rows the true class, columns the predicted;
    labelled with ``class_names`` (K strings) when given, else the class numbers."""
    labels = [str(c) for c in (class_names if class_names else range(len(matrix)))]
    width = max(4, len(str(matrix.max())) + 1, *(len(label) + 1 for label in labels))
    margin = max(3, *(len(label) for label in labels))
    header = " " * (margin + 1) + "".join(f"{label:>{width}}" for label in labels)
    rows = [f"{label:>{margin}} " + "".join(f"{v:>{width}}" for v in row) for label, row in zip(labels, matrix)]
    return "\n".join([header, *rows])


def run_class_names(result: dict) -> list | None:
    """The class names of a :func:`gpucnn.training.run.run` result (K strings: an image folder's
    subfolders, a .npz's class_names, the digits "0".."9"), or None when the data names
    none. Read from ``result["class_names"]`` when present, else from the trained model."""
    if "class_names" in result:
        names = result["class_names"]
    else:
        names = getattr(result.get("model"), "class_names", None)
    return [str(name) for name in names] if names else None


def write_metrics_json(path, result: dict) -> None:
    """The metrics JSON: device, config, history, test_loss, test_acc, confusion_matrix,
    class_names (K strings or null; see :func:`run_class_names`), written to a temp file,
    then renamed."""
    keys = ("device", "config", "history", "test_loss", "test_acc", "confusion_matrix")
    payload = json.dumps({**{k: result[k] for k in keys}, "class_names": run_class_names(result)}, indent=2)
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
