"""Callbacks: code that :func:`gpucnn.training.loops.fit` runs at fixed points of training, with
Keras's interface (``on_epoch_end(epoch, logs)``, ``self.model``, ``self.params``, and
``self.model.stop_training = True`` to end training after the current epoch), and the
one gpucnn ships: EarlyStopping. ``fit(..., callbacks=[...])`` takes them.

    class PrintLoss(Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(epoch, logs["train_loss"])

Numbering: ``epoch`` is the epoch's number as the log prints it (1 to ``epochs``, the
"epoch" of the history); ``batch`` counts the batches of an epoch from 0, as Keras.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["Callback", "CallbackList", "EarlyStopping", "FunctionCallback", "better_epoch"]


class Callback:
    """The base class: every hook does nothing; override the ones you need.

    Before ``on_train_begin`` fit sets ``self.model`` (the model it trains) and
    ``self.params`` ({"epochs", "start_epoch" (the epochs done before: fit's start_epoch),
    "steps" per epoch, "verbose", "metrics": the names each epoch's logs will hold}).
    Setting ``self.model.stop_training = True`` in any hook ends training after the
    current epoch (fit sets it to False when it starts); fit then returns as after its
    last epoch.

    Hooks and their logs:
      on_train_begin(logs): logs is {}
      on_epoch_begin(epoch, logs): {}
      on_train_batch_begin(batch, logs): {"size": images of this process in the step}
      on_train_batch_end(batch, logs): the same, and "loss" only when the callback sets
          ``batch_loss = True``: the batch's mean loss as a float, which makes every step
          wait for the device (distributed: this process's share of the batch)
      on_epoch_batches(epoch, losses, sizes): gpucnn's addition, after the epoch's
          training steps: the per-batch losses (B,) and batch sizes (B,) as host arrays,
          downloaded once (per-step logging with no wait per step)
      on_epoch_end(epoch, logs): the epoch's record, the dict appended to the history
          (train_loss, train_acc, val_loss, val_acc, lr, seconds, images_per_s); an
          entry a callback adds to it is kept in the history
      on_train_end(logs): the last epoch's record ({} when no epoch ran)

    Batch hooks cost nothing when left alone: fit calls them only on callbacks that
    override them. A NaN/inf training loss raises before that epoch's on_epoch_end.
    """

    model = None
    params: dict = {}
    batch_loss = False  # True: on_train_batch_end's logs hold "loss" (a device sync per batch)

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = dict(params)

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass
    def on_epoch_batches(self, epoch, losses, sizes): pass


class FunctionCallback(Callback):
    """fit's older single-function arguments as a callback: ``on_epoch_end(epoch, history)``
    (the history list so far, this epoch's record last) and ``on_batches(epoch, losses,
    sizes)`` (as on_epoch_batches)."""

    def __init__(self, history: list, on_epoch_end=None, on_batches=None):
        self.history, self.epoch_end, self.batches = history, on_epoch_end, on_batches

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch_end is not None:
            self.epoch_end(epoch, self.history)

    def on_epoch_batches(self, epoch, losses, sizes):
        if self.batches is not None:
            self.batches(epoch, losses, sizes)


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)


class CallbackList:
    """fit's callbacks, called in their order; ``batch_hooks`` is False when none of
    them overrides a batch hook (the batch loop then calls nothing)."""

    def __init__(self, callbacks, model, params: dict):
        self.model, self.callbacks = model, list(callbacks or [])
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"fit expected callbacks that subclass gpucnn.training.callbacks.Callback, got "
                                f"{type(callback).__name__}; wrap a function in a Callback subclass's hook")
            callback.set_model(model)
            callback.set_params(params)
        self.batch_begin = [c for c in self.callbacks if _overrides(c, "on_train_batch_begin")]
        self.batch_end = [c for c in self.callbacks if _overrides(c, "on_train_batch_end")]
        self.batch_loss = any(c.batch_loss for c in self.batch_end)
        self.batch_hooks = bool(self.batch_begin or self.batch_end)

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def train_batch_begin(self, batch: int, size: int) -> None:
        for callback in self.batch_begin:
            callback.on_train_batch_begin(batch, {"size": size})

    def train_batch_end(self, batch: int, size: int, loss=None) -> None:
        """``loss``: a 0-d/1-element device array, made a float only when a callback asks."""
        logs = {"size": size}
        if self.batch_loss and loss is not None:
            logs["loss"] = float(self.model.backend.to_numpy(loss).reshape(-1)[0])  # waits for the device
        for callback in self.batch_end:
            callback.on_train_batch_end(batch, dict(logs))


def better_epoch(record: dict, best: dict | None) -> bool:
    """--save-best's order of epochs: ``record`` beats ``best`` (None: nothing yet) with a
    higher val_acc, or the same val_acc and a lower val_loss."""
    if best is None:
        return True
    return (record["val_acc"], -record["val_loss"]) > (best["val_acc"], -best["val_loss"])


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs, as Keras'
    EarlyStopping: after each epoch the monitored value either improves on the best so
    far (by more than ``min_delta``) or adds one to a count of epochs without
    improvement; when that count reaches ``patience``, training stops after this epoch.

    monitor: a name in the epoch records, e.g. "val_loss" (default), "val_acc",
    "train_loss". mode: "min", "max" or "auto" (max when the name holds "acc", else min).
    patience: epochs without improvement that stop training (0: the first one).
    restore_best_weights: keep a host copy of the weights at each improvement and put
    the best back when training ends (as Keras 3; default False: the last epoch's
    weights stay).

    After training: ``best`` (the best value), ``best_epoch``, ``wait`` (epochs since
    it), ``stopped_epoch`` (0: no early stop) and ``reason`` ("no better validation loss
    for 3 epochs"). A fit from epoch 0 starts a new count; a fit that continues
    (start_epoch > 0) goes on with the count it has: ``state_dict()`` /
    ``load_state_dict()`` carry it across a resume (gpucnn.training.run.run records it in the
    checkpoint), ``replay(history)`` rebuilds it from the history of a checkpoint that
    did not record it.
    """

    WORDS = {"val_loss": "validation loss", "val_acc": "validation accuracy",
             "train_loss": "training loss", "train_acc": "training accuracy"}

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping expected monitor to name an epoch metric such as 'val_loss', "
                             f"got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping expected patience to be a non-negative integer (epochs), "
                             f"got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"EarlyStopping expected min_delta >= 0 (the smallest change that counts), "
                             f"got {min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping expected mode 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.restore_best_weights = restore_best_weights
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.wait, self.stopped_epoch = 0, 0, 0
        self.best_weights = None

    @property
    def reason(self) -> str:
        """Why training stopped (or would): "no better validation loss for 3 epochs"."""
        what = self.WORDS.get(self.monitor, self.monitor)
        return f"no better {what} for {self.wait} epoch{'s' * (self.wait != 1)}"

    def improves(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, value: float) -> bool:
        """Count epoch ``epoch``'s value; True when it improved on the best."""
        if self.improves(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        return False

    def on_train_begin(self, logs=None):
        metrics = self.params.get("metrics")
        if metrics is not None and self.monitor not in metrics:
            raise ValueError(f"EarlyStopping(monitor={self.monitor!r}) expected a metric fit records, one of "
                             f"{', '.join(metrics)}; got {self.monitor!r}"
                             + ("; pass val=(x, y) to fit to validate" if self.monitor.startswith("val_") else ""))
        if not self.params.get("start_epoch"):
            self.reset()  # a new run, as Keras; a continued one (start_epoch > 0) keeps its count
        self.stopped_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.update(epoch, logs[self.monitor]):
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()  # host copies
        elif self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)

    def replay(self, history: list) -> None:
        """Count the epochs of ``history`` (records with the monitored value) as if they
        had just been trained: the state a resume continues from."""
        for record in history:
            if self.monitor in record:
                self.update(record["epoch"], record[self.monitor])

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        if state.get("monitor") != self.monitor:
            raise ValueError(f"EarlyStopping(monitor={self.monitor!r}) expected a state of the same monitor, "
                             f"got {state.get('monitor')!r}; start a new count with reset()")
        self.best, self.best_epoch, self.wait = float(state["best"]), int(state["best_epoch"]), int(state["wait"])
