"""Training as library functions: build_model, fit, evaluate and run(config), which the
thin CLI in scripts/train.py calls. No argparse here; checkpoints live in checkpoint.py,
the choice of train / validation / test images in splits.py."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .backend import get_backend
from .checkpoint import (CheckpointError, check_output_path, checkpoint_arrays, load_checkpoint,  # noqa: F401
                         load_trained_model, save_checkpoint, write_checkpoint)
from .data import Dataset, batch_slices, check_labels, load_digits, load_mnist
from .distributed import (ShardedSampler, SingleProcess, StopSignal, allreduce_metrics, check_lockstep,
                          get_communicator, gradients_of, main_process_log, parameters_of, shard_range, state_of)
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .optim import SGD, Adam
from .random import default_generator
from .splits import SplitError, data_generator, plan_splits

ARCHS = ("simple", "lenet")
OPTIMIZERS = ("sgd", "momentum", "adam")
DATASETS = ("mnist", "digits")
DEVICES = ("auto", "cpu", "gpu")
INTERRUPTED_CHECKPOINT = "gpucnn-interrupted.npz"  # where Ctrl-C saves when there is no --checkpoint


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


class FlagError(ValueError):
    """A setting that cannot work with this data or this checkpoint (the CLI exits with 2)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. ``epoch``: the last completed epoch; ``checkpoint``: the file
    that holds it (None when no epoch completed)."""

    def __init__(self, epoch: int, checkpoint: str | None, during: int, note: str = ""):
        self.epoch, self.checkpoint, self.during = epoch, checkpoint, during
        where = (f"epoch {epoch} is saved in {checkpoint}" if checkpoint else
                 "no epoch had completed, nothing to resume")
        super().__init__(f"interrupted during epoch {during}; {where}{note}")


@dataclass
class TrainConfig:
    """Everything that defines a run; the CLI flags map one to one onto these fields."""

    device: str = "auto"
    dataset: str = "mnist"
    data_dir: str = "data/mnist"
    download: bool = False
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
    distributed: bool = False  # data-parallel over the ranks of an MPI launch (gpucnn.distributed)

    # flags that must match when resuming: they define the data and the model
    RUN_DEFINING = ("dataset", "arch", "optimizer", "seed", "limit_train", "val_fraction")

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field (before any data is loaded); checks
        that the --checkpoint path can be written by writing (and deleting) a probe file."""
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
        if not isinstance(self.distributed, bool):
            fail("distributed", "True or False")
        if self.checkpoint is not None:
            try:
                check_output_path(self.checkpoint)
            except ValueError as exc:
                raise ValueError(f"--checkpoint: {exc}") from None
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def applicable(self) -> dict:
        """The settings that matter for this run (what the run prints): no data folder
        for digits, no momentum unless the optimizer uses it, nothing left unset."""
        settings = self.to_dict()
        if self.dataset != "mnist":
            del settings["data_dir"], settings["download"]
        if self.optimizer != "momentum":
            del settings["momentum"]
        if not self.distributed:
            del settings["distributed"]
        return {k: v for k, v in settings.items() if v is not None}


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
def evaluate(model: Sequential, x, y, batch_size: int = 1000, comm=None):
    """Mean loss, accuracy and host predictions of ``model`` on device arrays x, y.

    Everything accumulates on the device; two downloads in total, whatever the size.
    With a communicator of N ranks (gpucnn.distributed), each rank evaluates its
    contiguous part of x and the loss sums and predictions are added over the ranks:
    every rank returns the numbers one process computes, and every prediction.
    """
    comm = SingleProcess() if comm is None else comm
    xp = model.backend.xp
    loss_fn = SoftmaxCrossEntropy()
    n = len(y)
    part = shard_range(n, comm.rank, comm.size)  # this rank's images: all of them for one process
    loss_sum = xp.zeros((), dtype=np.float64)
    predictions = xp.empty(part.stop - part.start, dtype=np.int64)
    for batch in batch_slices(part.stop - part.start, batch_size):
        images = slice(part.start + batch.start, part.start + batch.stop)
        logits = model.forward(x[images])
        loss_sum += loss_fn.forward(logits, y[images]) * (batch.stop - batch.start)
        predictions[batch] = logits.argmax(axis=1)
    predictions = model.backend.to_numpy(predictions)
    loss_sum = float(model.backend.to_numpy(loss_sum))
    if comm.size > 1:  # distributed: every rank gets the sums and all the predictions
        everyone = np.zeros(n, dtype=np.int64)
        everyone[part] = predictions
        sums = allreduce_metrics(comm, {"loss_sum": loss_sum, "predictions": everyone})
        loss_sum, predictions = sums["loss_sum"], sums["predictions"]
    mean_loss = loss_sum / n
    accuracy = float(np.mean(predictions == model.backend.to_numpy(y))) if n else float("nan")
    return mean_loss, accuracy, predictions


def train_epoch(model, optimizer, x, y, batch_size, rng, progress=None, comm=None, sampler=None, stop=None):
    """One pass over device arrays x (N, C, H, W), y (N,) in a fresh random order.

    Returns (per-batch losses, batch sizes, correct count) on the host. Inside the
    batch loop nothing is copied between host and device: the shuffled order is
    uploaded once, losses and correct counts stay on the device until the end.

    Distributed (``comm`` of N ranks, ``sampler`` its ShardedSampler, ``stop`` a
    StopSignal): ``batch_size`` is the global batch; each rank trains on its shard of
    every global batch, the gradients are averaged over the ranks before each step, and
    the returned numbers are those of the global batches, the same on every rank.
    """
    comm = SingleProcess() if comm is None else comm
    sampler = ShardedSampler(len(y), batch_size, comm.rank, comm.size, rng) if sampler is None else sampler
    backend = model.backend
    xp = backend.xp
    indices, shards = sampler.epoch()  # one permutation; for one process, the whole order
    order = backend.asarray(indices)  # (n,) one upload per epoch
    batch_losses = xp.zeros(len(shards), dtype=np.float32)
    correct = xp.zeros((), dtype=np.int64)
    loss_fn = SoftmaxCrossEntropy()
    for b, shard in enumerate(shards):
        count = shard.stop - shard.start  # this rank's part of the global batch (may be 0)
        if count:
            batch = order[shard]
            xb, yb = x[batch], y[batch]  # gathered on the device
            logits = model.forward(xb)
            batch_losses[b] = loss_fn.forward(logits, yb)
            model.backward(loss_fn.backward(), need_input_grad=False)
            correct += (logits.argmax(axis=1) == yb).sum()
        if comm.size > 1:  # distributed: every rank's gradients become the mean over the global batch
            comm.allreduce_mean_(gradients_of(model), weight=count)
        optimizer.step()
        if progress is not None:
            progress(b, batch_losses, correct, shard.stop)
        if stop is not None and stop.requested():  # Ctrl-C: every rank after the same step
            raise KeyboardInterrupt
    sizes = np.array([s.stop - s.start for s in shards])
    losses, correct = backend.to_numpy(batch_losses), int(backend.to_numpy(correct))
    if comm.size > 1:  # distributed: the global batches' mean losses and sizes, all ranks' correct
        sums = allreduce_metrics(comm, {"loss": losses * sizes, "size": sizes, "correct": correct})
        sizes, correct = sums["size"], sums["correct"]
        losses = sums["loss"] / sizes
    return losses, sizes, correct


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _Progress:
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


def _to_device(model, data, name):
    """(x, y) host or device arrays -> device arrays on the model's backend; host arrays are
    checked (shapes against the model, labels against its outputs) and uploaded once
    (images as float32, labels as int64)."""
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError(f"fit expected {name} = (x, y), got {type(data).__name__}") from None
    if len(x) != len(y):
        raise ValueError(f"fit expected as many {name} images as labels, got {len(x)} and {len(y)}")
    if isinstance(y, np.ndarray):
        shape = (1, *x.shape[1:])  # one image through the layers' shape rules: no data is run
        for layer in model.layers:
            shape = layer.output_shape(shape)
        check_labels(y, shape[-1], name)
        y = model.backend.asarray(y, dtype=np.int64)
    if isinstance(x, np.ndarray):
        x = model.backend.asarray(x, dtype=np.float32)
    return x, y


def fit(model, optimizer, train, val=None, *, epochs, batch_size=32, rng=None, verbose=2,
        start_epoch=0, history=None, on_epoch_end=None, log=print, comm=None):
    """Train ``model`` from ``start_epoch`` up to ``epochs`` (the total, as Keras'
    initial_epoch) on ``train`` = (x (N, C, H, W), y (N,)), checking on ``val`` = (x, y)
    after each epoch (None: no validation). Host numpy arrays are uploaded once to the
    model's device; device arrays are used as they are. ``rng`` (a numpy Generator; None:
    gpucnn's default generator) shuffles every epoch.

    Returns the history: one dict per epoch (train_loss, train_acc, val_loss, val_acc,
    seconds, images_per_s; no val_* without ``val``). ``verbose``: 0 silent, 1 a progress
    bar on stderr when it is a terminal plus one line per epoch, 2 one line per epoch.
    ``on_epoch_end(epoch, history)`` runs after each epoch (checkpointing). A NaN/inf loss
    raises NonFiniteLossError naming the epoch and batch, before ``on_epoch_end`` could
    save the bad weights.

    ``comm`` (gpucnn.distributed; None: one process): data-parallel training over its
    ranks, every rank calling fit with the same data and generator state. ``batch_size``
    is the global batch (divisible by the number of ranks); the history is the same on
    every rank; only rank 0 logs; ``on_epoch_end`` runs on every rank (save where
    ``comm.is_main``); BatchNorm statistics are rank 0's after each epoch.
    """
    comm = SingleProcess() if comm is None else comm
    log = main_process_log(comm, log)
    rng = default_generator() if rng is None else rng
    history = list(history or [])
    x, y = _to_device(model, train, "train")
    if val is not None:
        val = _to_device(model, val, "val")
    sampler = ShardedSampler(len(y), batch_size, comm.rank, comm.size, rng)
    show_bar = verbose == 1 and comm.is_main and _stderr_is_terminal()
    with StopSignal(comm) as stop:  # distributed: Ctrl-C stops every rank after the same step
        for epoch in range(start_epoch + 1, epochs + 1):
            progress = _Progress(len(sampler), f"epoch {epoch}/{epochs}", model.backend) if show_bar else None
            start = time.perf_counter()
            try:
                losses, sizes, correct = train_epoch(model, optimizer, x, y, batch_size, rng, progress,
                                                     comm=comm, sampler=sampler, stop=stop)
            finally:
                if progress is not None:
                    progress.close()
            check_lockstep(rng, comm, f" in epoch {epoch}")  # distributed: the same permutation next epoch
            bad = ~np.isfinite(losses)  # the global batches' losses: every rank stops together
            if bad.any():
                b = int(np.argmax(bad))
                raise NonFiniteLossError(
                    f"the training loss became {losses[b]} at epoch {epoch}, batch {b + 1} of {len(losses)}; "
                    "training stopped (try a lower --lr); the last good checkpoint was not touched")
            record = {"epoch": epoch, "train_loss": float(np.sum(losses * sizes) / sizes.sum()),
                      "train_acc": correct / len(y)}
            if comm.size > 1 and state_of(model):  # BatchNorm statistics: rank 0's, as saved and evaluated
                comm.bcast_(state_of(model))
            if val is not None:
                record["val_loss"], record["val_acc"], _ = evaluate(model, *val, comm=comm)
            model.backend.synchronize()
            seconds = time.perf_counter() - start
            record.update(seconds=seconds, images_per_s=len(y) / seconds)  # all ranks' images
            history.append(record)
            if on_epoch_end is not None:  # first: a printed epoch is a saved epoch
                on_epoch_end(epoch, history)
            if verbose:
                log(format_epoch(record, epochs))
            if stop.requested():
                raise KeyboardInterrupt
    return history


def format_epoch(r: dict, epochs: int) -> str:
    val = f"val_loss {r['val_loss']:.4f}  val_acc {r['val_acc']:.2%}  " if "val_loss" in r else ""
    return (f"epoch {r['epoch']}/{epochs}  train_loss {r['train_loss']:.4f}  train_acc {r['train_acc']:.2%}  "
            f"{val}{r['seconds']:.1f} s  {r['images_per_s']:.0f} img/s")


# -- the whole job ------------------------------------------------------------------------
def load_dataset(config: TrainConfig) -> Dataset:
    if config.dataset == "digits":
        return load_digits()
    return load_mnist(config.data_dir, download=config.download)


# -- distributed (gpucnn.distributed): the run's communicator, data on every machine ----------
def _communicator(config: TrainConfig, backend, comm, log):
    """-> (the run's communicator, a log that prints on rank 0 only). One process unless
    --distributed under mpiexec; the global batch must split evenly over the ranks."""
    if comm is None:
        comm = get_communicator(backend) if config.distributed else SingleProcess()
    if config.distributed and comm.size == 1:
        warnings.warn("--distributed in 1 process (plain python or mpiexec -n 1): training as usual; "
                      "for N processes launch: mpiexec -n N python -m mpi4py scripts/train.py --distributed ...",
                      RuntimeWarning, stacklevel=3)
    if config.batch_size % comm.size:  # the same on every rank: all refuse, rank 0 says it
        lower, higher = config.batch_size // comm.size * comm.size, (config.batch_size // comm.size + 1) * comm.size
        raise FlagError(f"--batch-size {config.batch_size} is the global batch, split evenly over the "
                        f"{comm.size} processes: it must be a multiple of {comm.size}; pass --batch-size "
                        + (f"{lower} or {higher}" if lower else f"{higher}"))
    return comm, main_process_log(comm, log)


def _load_dataset_once_per_machine(config: TrainConfig, comm):
    """load_dataset(); with --download and several ranks, the first rank of each machine
    loads (and downloads) first, the others read the files it wrote."""
    if not (config.download and comm.size > 1):
        return load_dataset(config)
    data = load_dataset(config) if comm.local_rank == 0 else None
    comm.barrier()
    return load_dataset(config) if data is None else data


def check_resume(config: TrainConfig, meta: dict) -> None:
    """FlagError unless the checkpoint ``meta`` can continue as ``config`` asks: the same
    data and model, and fewer epochs done than ``config.epochs``."""
    saved = meta["config"]
    for name in TrainConfig.RUN_DEFINING:
        if saved.get(name) != getattr(config, name):
            raise FlagError(
                f"--resume {config.resume}: the checkpoint was trained with --{name.replace('_', '-')} "
                f"{saved.get(name)!r}, this run asks for {getattr(config, name)!r}; "
                "resume with the same value or start a new run")
    done = meta["epoch"]
    if done >= config.epochs:
        raise FlagError(f"{config.resume} already holds {done} epoch{'s' * (done != 1)}; "
                        f"pass --epochs {done + 1} or more to continue")


def run(config: TrainConfig, log=print, comm=None) -> dict:
    """Load data, build or resume the model, train, test; returns the metrics dict
    {"device", "config", "history", "test_loss", "test_acc", "confusion_matrix"}
    (plus "model", "test_labels" and "predictions" for the caller, not for JSON).

    Raises ValueError (FlagError, SplitError, CheckpointError, DataError) before any model
    is built when the settings cannot work, and TrainingInterrupted on Ctrl-C, after
    keeping the last completed epoch on disk.

    ``config.distributed`` (or a ``comm`` from gpucnn.distributed): every rank of an MPI
    launch calls run with the same config and trains its shard of each global batch;
    only rank 0 logs and writes the checkpoint; every rank returns the same result.
    """
    config.validate()
    checkpoint = load_checkpoint(config.resume) if config.resume else None
    if checkpoint is not None:
        check_resume(config, checkpoint["meta"])
    backend = get_backend(config.device)
    comm, log = _communicator(config, backend, comm, log)
    log(f"config: {json.dumps(config.applicable())}")
    log(f"device: {backend.name}" + (" (no usable GPU found, see the warning above)"
                                     if config.device == "gpu" and backend.name == "cpu" else ""))
    if config.distributed:
        log(f"distributed: {comm.describe()}")

    data = _load_dataset_once_per_machine(config, comm)
    init_rng, data_rng = np.random.default_rng(config.seed), data_generator(config.seed)
    splits = plan_splits(data.train_y, data.test_y, config.limit_train, config.val_fraction,
                         config.limit_test, data_rng)
    train_x, train_y = data.train_x[splits.train], data.train_y[splits.train]  # copies
    val_x, val_y = data.train_x[splits.val], data.train_y[splits.val]
    test_x, test_y = ((data.test_x, data.test_y) if splits.test is None
                      else (data.test_x[splits.test], data.test_y[splits.test]))
    num_classes, input_shape = data.num_classes, data.input_shape
    del data  # the splits are copies: let the full training arrays go (peak memory)
    for name, labels in (("train", train_y), ("validation", val_y), ("test", test_y)):
        check_labels(labels, num_classes, name)
    log(f"data: {config.dataset}: {len(train_y)} train, {len(val_y)} validation, {len(test_y)} test images "
        f"of shape {input_shape}")

    model = build_model(config.arch, input_shape, num_classes, init_rng)
    optimizer = make_optimizer(config.optimizer, model, config.lr, config.momentum)
    start_epoch, history = 0, []
    if checkpoint is not None:
        if checkpoint["meta"]["architecture"] != model.architecture():
            raise FlagError(f"--resume {config.resume}: the checkpoint holds a different architecture "
                            f"than --arch {config.arch}; it cannot be resumed with this model")
        model.load_state_dict(checkpoint["params"])
        start_epoch, history = checkpoint["meta"]["epoch"], checkpoint["meta"]["history"]
        data_rng.bit_generator.state = checkpoint["meta"]["rng_state"]
    model.to(backend)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        optimizer.lr = config.lr
        log(f"resumed from {config.resume} after epoch {start_epoch}")
    comm.bcast_(parameters_of(model) + state_of(model))  # distributed: every rank starts from rank 0's
    if config.verbose:
        log(model.summary((1, *input_shape)))

    # upload once: every batch is sliced on the device
    train_dev = (backend.asarray(train_x), backend.asarray(train_y))
    val_dev = (backend.asarray(val_x), backend.asarray(val_y))
    history = _fit_keeping_epochs(config, model, optimizer, train_dev, val_dev, data_rng,
                                  start_epoch, history, log, comm)

    test_loss, test_acc, predictions, matrix = held_out_report(model, test_x, test_y, num_classes, comm=comm)
    log(f"test: loss {test_loss:.4f}  accuracy {test_acc:.2%} on {len(test_y)} held-out images")
    log("confusion matrix (rows: true class, columns: predicted):\n" + format_confusion(matrix))
    return {"device": backend.name, "config": config.to_dict(), "history": history,
            "test_loss": test_loss, "test_acc": test_acc, "confusion_matrix": matrix.tolist(),
            "model": model, "test_labels": test_y, "predictions": predictions}


def _fit_keeping_epochs(config, model, optimizer, train, val, data_rng, start_epoch, history, log,
                        comm=None):
    """fit(), saving every completed epoch to --checkpoint. Without --checkpoint the last
    completed epoch is kept in host memory and written to INTERRUPTED_CHECKPOINT on
    Ctrl-C. Either way a Ctrl-C raises TrainingInterrupted naming the file that holds the
    last completed epoch; a second Ctrl-C during a save leaves the previous file whole.
    Distributed: only rank 0 saves (every rank holds the same weights)."""
    comm = SingleProcess() if comm is None else comm
    saved = {"epoch": start_epoch, "path": config.resume if start_epoch else None}
    pending = {"epoch": start_epoch, "arrays": None}  # without --checkpoint: the last epoch, in memory

    def on_epoch_end(epoch, hist):
        if not comm.is_main:  # distributed: rank 0 writes the files (every rank holds the same weights)
            if config.checkpoint:
                saved.update(epoch=epoch, path=config.checkpoint)
            return
        arrays = checkpoint_arrays(model, optimizer, epoch, data_rng, config, hist)
        if config.checkpoint:
            write_checkpoint(config.checkpoint, arrays)  # atomic
            saved.update(epoch=epoch, path=config.checkpoint)
        else:
            pending.update(epoch=epoch, arrays=arrays)

    try:
        return fit(model, optimizer, train, val, epochs=config.epochs, batch_size=config.batch_size,
                   rng=data_rng, verbose=config.verbose, start_epoch=start_epoch, history=history,
                   on_epoch_end=on_epoch_end, log=log, comm=comm)
    except KeyboardInterrupt:
        during, note = max(saved["epoch"], pending["epoch"]) + 1, ""
        if pending["arrays"] is not None:
            lost = f"epoch {pending['epoch']} is lost"
            try:
                write_checkpoint(INTERRUPTED_CHECKPOINT, pending["arrays"])
                saved.update(epoch=pending["epoch"], path=INTERRUPTED_CHECKPOINT)
            except KeyboardInterrupt:
                note = f" (interrupted again while writing {INTERRUPTED_CHECKPOINT}: {lost})"
            except OSError as exc:
                note = f" (could not write {INTERRUPTED_CHECKPOINT}: {exc.strerror}; {lost})"
        raise TrainingInterrupted(saved["epoch"], saved["path"], during, note) from None


def held_out_report(model: Sequential, x, y, num_classes: int, batch_size: int = 1000, comm=None):
    """Held-out evaluation of host arrays x, y: (loss, accuracy, predictions, confusion matrix);
    split over the ranks of ``comm`` and added up (see :func:`evaluate`)."""
    from sklearn.metrics import confusion_matrix

    backend = model.backend
    loss, accuracy, predictions = evaluate(model, backend.asarray(x), backend.asarray(y), batch_size, comm)
    return loss, accuracy, predictions, confusion_matrix(y, predictions, labels=np.arange(num_classes))


def format_confusion(matrix: np.ndarray) -> str:
    width = max(4, len(str(matrix.max())) + 1)
    header = " " * 4 + "".join(f"{c:>{width}}" for c in range(len(matrix)))
    rows = [f"{r:>3} " + "".join(f"{v:>{width}}" for v in row) for r, row in enumerate(matrix)]
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


__all__ = ["TrainConfig", "FlagError", "SplitError", "CheckpointError", "NonFiniteLossError",
           "TrainingInterrupted", "build_model", "make_optimizer", "fit", "evaluate", "run",
           "save_checkpoint", "load_checkpoint", "load_trained_model", "held_out_report",
           "format_confusion", "write_metrics_json"]
