"""Training as library functions: build_model, fit, evaluate, checkpoints, and run(config),
which the thin CLI in scripts/train.py calls. No argparse here."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from .backend import get_backend
from .data import (Dataset, DataError, batch_slices, check_labels, limit, load_digits, load_mnist,
                   stratified_split)
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .losses import SoftmaxCrossEntropy
from .model import Sequential, atomic_savez, build
from .optim import SGD, Adam

ARCHS = ("simple", "lenet")
OPTIMIZERS = ("sgd", "momentum", "adam")
DATASETS = ("mnist", "digits")
DEVICES = ("auto", "cpu", "gpu")
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything that defines a run; the CLI flags map one to one onto these fields."""

    device: str = "auto"
    dataset: str = "mnist"
    data_dir: str = "data/mnist"
    arch: str = "simple"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    val_fraction: float = 0.1
    checkpoint: str | None = None
    resume: str | None = None
    verbose: int = 1

    # flags that must match when resuming: they define the data and the model
    RUN_DEFINING = ("dataset", "arch", "optimizer", "seed", "limit_train", "val_fraction")

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field (before any data is loaded)."""
        def fail(name, expected):
            raise ValueError(f"--{name.replace('_', '-')} expected {expected}, got {getattr(self, name)!r}")
        for name, choices in (("device", DEVICES), ("dataset", DATASETS), ("arch", ARCHS),
                              ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in choices:
                fail(name, f"one of {', '.join(choices)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "a positive integer")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            fail("lr", "a positive finite number")
        if not 0 <= self.momentum < 1:
            fail("momentum", "a number in [0, 1)")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(name, "a positive integer (or leave it out for all samples)")
        if not 0 < self.val_fraction < 1:
            fail("val_fraction", "a fraction strictly between 0 and 1")
        if self.verbose not in (0, 1, 2):
            fail("verbose", "0 (quiet), 1 (progress bars) or 2 (one line per epoch)")
        if not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "a non-negative integer")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- models -------------------------------------------------------------------------------
def build_model(arch: str, input_shape: tuple, num_classes: int, rng: np.random.Generator,
                dtype=np.float32) -> Sequential:
    """``simple``: the course's conv-pool-softmax network; ``lenet``: a deeper LeNet-5-style
    network. ``input_shape`` is (C, H, W); weights are drawn from ``rng`` on the host."""
    channels, height, width = input_shape
    if arch == "simple":
        # Conv 5x5 (valid) -> ReLU -> 2x2 max pool -> Flatten -> Dense softmax classifier
        conv_h, conv_w = height - 4, width - 4
        return Sequential([
            Conv2D(channels, 32, 5, padding="valid", dtype=dtype, rng=rng), ReLU(), MaxPool2D(2),
            Flatten(), Dense(32 * (conv_h // 2) * (conv_w // 2), num_classes, dtype=dtype, rng=rng),
        ])
    if arch == "lenet":
        # LeNet-5 layout with wider layers; the second conv pads only for small (8x8) inputs
        h, w = height // 2, width // 2
        second_padding = "valid" if min(h, w) >= 8 else "same"
        if second_padding == "valid":
            h, w = h - 4, w - 4
        return Sequential([
            Conv2D(channels, 16, 5, padding=2, dtype=dtype, rng=rng), ReLU(), MaxPool2D(2),
            Conv2D(16, 32, 5, padding=second_padding, dtype=dtype, rng=rng), ReLU(), MaxPool2D(2),
            Flatten(), Dense(32 * (h // 2) * (w // 2), 128, dtype=dtype, rng=rng, init="he"), ReLU(),
            Dense(128, num_classes, dtype=dtype, rng=rng),
        ])
    raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")


def make_optimizer(name: str, model: Sequential, lr: float, momentum: float = 0.9):
    if name == "sgd":
        return SGD(model, lr)
    if name == "momentum":
        return SGD(model, lr, momentum=momentum)
    if name == "adam":
        return Adam(model, lr)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


# -- the loops ----------------------------------------------------------------------------
def evaluate(model: Sequential, x, y, batch_size: int = 1000):
    """Mean loss, accuracy and host predictions of ``model`` on device arrays x, y.

    Everything accumulates on the device; two downloads in total, whatever the size.
    """
    xp = model.backend.xp
    loss_fn = SoftmaxCrossEntropy()
    n = len(y)
    loss_sum = xp.zeros((), dtype=np.float64)
    predictions = xp.empty(n, dtype=np.int64)
    for batch in batch_slices(n, batch_size):
        logits = model.forward(x[batch])
        loss_sum += loss_fn.forward(logits, y[batch]) * (batch.stop - batch.start)
        predictions[batch] = logits.argmax(axis=1)
    predictions = model.backend.to_numpy(predictions)
    mean_loss = float(model.backend.to_numpy(loss_sum)) / n
    accuracy = float(np.mean(predictions == model.backend.to_numpy(y))) if n else float("nan")
    return mean_loss, accuracy, predictions


def train_epoch(model, optimizer, x, y, batch_size, rng, progress=None):
    """One pass over device arrays x (N, C, H, W), y (N,) in a fresh random order.

    Returns (per-batch losses, batch sizes, correct count) on the host. Inside the
    batch loop nothing is copied between host and device: the shuffled order is
    uploaded once, losses and correct counts stay on the device until the end.
    """
    backend = model.backend
    xp = backend.xp
    n = len(y)
    order = backend.asarray(rng.permutation(n))  # (N,) one upload per epoch
    slices = batch_slices(n, batch_size)
    batch_losses = xp.zeros(len(slices), dtype=np.float32)
    correct = xp.zeros((), dtype=np.int64)
    loss_fn = SoftmaxCrossEntropy()
    for b, batch in enumerate(slices):
        indices = order[batch]
        xb, yb = x[indices], y[indices]  # gathered on the device
        logits = model.forward(xb)
        batch_losses[b] = loss_fn.forward(logits, yb)
        model.backward(loss_fn.backward(), need_input_grad=False)
        optimizer.step()
        correct += (logits.argmax(axis=1) == yb).sum()
        if progress is not None:
            progress(b, batch_losses, correct, batch.stop)
    sizes = np.array([s.stop - s.start for s in slices])
    return backend.to_numpy(batch_losses), sizes, int(backend.to_numpy(correct))


class _Progress:
    """tqdm bar over the batches of one epoch; the live loss/accuracy postfix is
    refreshed at most twice a second, so its device->host reads depend on wall
    time, not on the number of batches."""

    def __init__(self, total, desc, backend):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                        file=sys.stdout)
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
        self.bar.close()


def fit(model, optimizer, train, val, *, epochs, batch_size, rng, verbose=2, start_epoch=0,
        history=None, on_epoch_end=None, log=print):
    """Train ``model`` from ``start_epoch`` up to ``epochs`` (the total, as Keras'
    initial_epoch) on device arrays ``train`` = (x, y), checking on ``val`` = (x, y).

    Returns the history: one dict per epoch (train_loss, train_acc, val_loss,
    val_acc, seconds, images_per_s). ``on_epoch_end(epoch, history)`` runs after
    each epoch (checkpointing). A NaN/inf loss raises NonFiniteLossError naming
    the epoch and batch, before ``on_epoch_end`` could save the bad weights.
    """
    history = list(history or [])
    x, y = train
    for epoch in range(start_epoch + 1, epochs + 1):
        progress = _Progress(len(batch_slices(len(y), batch_size)), f"epoch {epoch}/{epochs}",
                             model.backend) if verbose == 1 else None
        start = time.perf_counter()
        try:
            losses, sizes, correct = train_epoch(model, optimizer, x, y, batch_size, rng, progress)
        finally:
            if progress is not None:
                progress.close()
        bad = ~np.isfinite(losses)
        if bad.any():
            b = int(np.argmax(bad))
            raise NonFiniteLossError(
                f"the training loss became {losses[b]} at epoch {epoch}, batch {b + 1} of {len(losses)}; "
                "training stopped (try a lower --lr); the last good checkpoint was not touched")
        val_loss, val_acc, _ = evaluate(model, *val)
        model.backend.synchronize()
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "train_loss": float(np.sum(losses * sizes) / sizes.sum()),
                  "train_acc": correct / len(y), "val_loss": val_loss, "val_acc": val_acc,
                  "seconds": seconds, "images_per_s": len(y) / seconds}
        history.append(record)
        if verbose:
            log(format_epoch(record, epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history


def format_epoch(r: dict, epochs: int) -> str:
    return (f"epoch {r['epoch']}/{epochs}  train_loss {r['train_loss']:.4f}  train_acc {r['train_acc']:.2%}  "
            f"val_loss {r['val_loss']:.4f}  val_acc {r['val_acc']:.2%}  "
            f"{r['seconds']:.1f} s  {r['images_per_s']:.0f} img/s")


# -- checkpoints --------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer, epoch, rng, config: TrainConfig, history, interrupted=False):
    """Weights, optimizer state, completed epoch, RNG state, config and history in one
    host .npz, written atomically (temp file + rename): a crash never corrupts it."""
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for key, buffers in opt_state.pop("state").items():
        for name, value in buffers.items():
            arrays[f"opt/{key}/{name}"] = value
    meta = {"format": CHECKPOINT_FORMAT, "architecture": model.architecture(), "optimizer": opt_state,
            "epoch": epoch, "rng_state": rng.bit_generator.state, "config": config.to_dict(),
            "history": history, "interrupted": interrupted}
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_savez(path, arrays)


def load_checkpoint(path) -> dict:
    """-> {"meta": dict, "params": {key: array}, "optimizer_state": state_dict}."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise ValueError(f"{path} is not a gpucnn checkpoint (no 'meta' entry)")
            meta = json.loads(str(data["meta"]))
            params = {k[6:]: data[k] for k in data.files if k.startswith("param/")}
            buffers: dict = {}
            for k in data.files:
                if k.startswith("opt/"):
                    _, key, name = k.split("/")
                    buffers.setdefault(key, {})[name] = data[k]
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    optimizer_state = dict(meta["optimizer"], state=buffers)
    return {"meta": meta, "params": params, "optimizer_state": optimizer_state}


# -- the whole job ------------------------------------------------------------------------
def load_dataset(config: TrainConfig) -> Dataset:
    if config.dataset == "digits":
        return load_digits()
    return load_mnist(config.data_dir)


def run(config: TrainConfig, log=print) -> dict:
    """Load data, build or resume the model, train, test; returns the metrics dict
    {"device", "config", "history", "test_loss", "test_acc", "confusion_matrix"}
    (plus "model" and "predictions" for the caller, not for JSON)."""
    config.validate()
    checkpoint = load_checkpoint(config.resume) if config.resume else None
    if checkpoint is not None:
        saved = checkpoint["meta"]["config"]
        for name in TrainConfig.RUN_DEFINING:
            if saved.get(name) != getattr(config, name):
                raise ValueError(
                    f"--resume {config.resume}: the checkpoint was trained with --{name.replace('_', '-')} "
                    f"{saved.get(name)!r}, this run asks for {getattr(config, name)!r}; "
                    "resume with the same value or start a new run")
    log(f"config: {json.dumps(config.to_dict())}")
    backend = get_backend(config.device)
    log(f"device: {backend.name}" + (" (no usable GPU found, see the warning above)"
                                     if config.device == "gpu" and backend.name == "cpu" else ""))

    data = load_dataset(config)
    init_rng = np.random.default_rng(config.seed)
    data_rng = np.random.default_rng([config.seed, 1])
    train_x, train_y = limit(data.train_x, data.train_y, config.limit_train, data_rng)
    train_x, train_y, val_x, val_y = stratified_split(train_x, train_y, config.val_fraction, data_rng)
    test_x, test_y = limit(data.test_x, data.test_y, config.limit_test, data_rng)
    num_classes, input_shape = data.num_classes, data.input_shape
    del data  # the splits are copies: let the full arrays go (peak memory)
    for name, labels in (("train", train_y), ("validation", val_y), ("test", test_y)):
        check_labels(labels, num_classes, name)
    log(f"data: {config.dataset}: {len(train_y)} train, {len(val_y)} validation, {len(test_y)} test images "
        f"of shape {input_shape}")

    model = build_model(config.arch, input_shape, num_classes, init_rng)
    optimizer = make_optimizer(config.optimizer, model, config.lr, config.momentum)
    start_epoch, history = 0, []
    if checkpoint is not None:
        if checkpoint["meta"]["architecture"] != model.architecture():
            raise ValueError(f"--resume {config.resume}: the checkpoint holds a different architecture "
                             f"than --arch {config.arch}; it cannot be resumed with this model")
        model.load_state_dict(checkpoint["params"])
        start_epoch, history = checkpoint["meta"]["epoch"], checkpoint["meta"]["history"]
        data_rng.bit_generator.state = checkpoint["meta"]["rng_state"]
    model.to(backend)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        optimizer.lr = config.lr
        log(f"resumed from {config.resume} after epoch {start_epoch}")
    if config.verbose:
        log(model.summary((1, *input_shape)))

    # upload once: every batch is sliced on the device
    train_dev = (backend.asarray(train_x), backend.asarray(train_y))
    val_dev = (backend.asarray(val_x), backend.asarray(val_y))

    completed = {"epoch": start_epoch, "history": history}

    def on_epoch_end(epoch, hist):
        completed.update(epoch=epoch, history=hist)
        if config.checkpoint:
            save_checkpoint(config.checkpoint, model, optimizer, epoch, data_rng, config, hist)

    try:
        history = fit(model, optimizer, train_dev, val_dev, epochs=config.epochs,
                      batch_size=config.batch_size, rng=data_rng, verbose=config.verbose,
                      start_epoch=start_epoch, history=history, on_epoch_end=on_epoch_end, log=log)
    except KeyboardInterrupt:
        # --checkpoint already holds the last epoch completed in this run (exactly
        # resumable): keep it. Otherwise save what there is, so no work is lost.
        path = config.checkpoint or "gpucnn-interrupted.npz"
        if not (config.checkpoint and completed["epoch"] > start_epoch):
            save_checkpoint(path, model, optimizer, completed["epoch"], data_rng, config,
                            completed["history"], interrupted=True)
        log(f"interrupted: checkpoint after epoch {completed['epoch']} is in {path}; "
            f"continue with --resume {path}")
        raise

    test_loss, test_acc, predictions, matrix = held_out_report(model, test_x, test_y, num_classes)
    log(f"test: loss {test_loss:.4f}  accuracy {test_acc:.2%} on {len(test_y)} held-out images")
    log("confusion matrix (rows: true class, columns: predicted):\n" + format_confusion(matrix))
    return {"device": backend.name, "config": config.to_dict(), "history": history,
            "test_loss": test_loss, "test_acc": test_acc, "confusion_matrix": matrix.tolist(),
            "model": model, "test_labels": test_y, "predictions": predictions}


def held_out_report(model: Sequential, x, y, num_classes: int, batch_size: int = 1000):
    """Held-out evaluation of host arrays x, y: (loss, accuracy, predictions, confusion matrix)."""
    from sklearn.metrics import confusion_matrix

    backend = model.backend
    loss, accuracy, predictions = evaluate(model, backend.asarray(x), backend.asarray(y), batch_size)
    return loss, accuracy, predictions, confusion_matrix(y, predictions, labels=np.arange(num_classes))


def format_confusion(matrix: np.ndarray) -> str:
    width = max(4, len(str(matrix.max())) + 1)
    header = " " * 4 + "".join(f"{c:>{width}}" for c in range(len(matrix)))
    rows = [f"{r:>3} " + "".join(f"{v:>{width}}" for v in row) for r, row in enumerate(matrix)]
    return "\n".join([header, *rows])


def write_metrics_json(path, result: dict) -> None:
    """The metrics JSON: device, config, history, test_loss, test_acc, confusion_matrix."""
    keys = ("device", "config", "history", "test_loss", "test_acc", "confusion_matrix")
    payload = json.dumps({k: result[k] for k in keys}, indent=2)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(payload + "\n")
    os.replace(tmp, path)


def load_trained_model(path, backend="cpu") -> Sequential:
    """A model from a training checkpoint or from ``Sequential.save``, on ``backend``."""
    from .model import load

    with np.load(path, allow_pickle=False) as data:
        is_checkpoint = "meta" in data.files
    if not is_checkpoint:
        return load(path, backend)
    checkpoint = load_checkpoint(path)
    model = build(checkpoint["meta"]["architecture"])
    model.load_state_dict(checkpoint["params"])
    return model.to(backend)
