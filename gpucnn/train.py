"""Training as library functions: evaluate, train_epoch, fit and run(config), which the
thin CLI in scripts/train.py calls. No argparse here. What defines a run is in
config.py, checkpoints in checkpoint.py, the choice of train / validation / test images
in splits.py, the architectures in zoo.py, what the user sees in report.py."""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from contextlib import contextmanager

import numpy as np

from . import datasets
from .augment import parse_augment
from .backend import get_backend
from .checkpoint import (CheckpointError, checkpoint_arrays, load_checkpoint,  # noqa: F401
                         load_trained_model, save_checkpoint, write_checkpoint)
from .config import FlagError, TrainConfig, check_resume, make_optimizer
from .data import Dataset, batch_slices, check_labels
from .datasets import channel_stats
from .distributed import (ShardedSampler, SingleProcess, StopSignal, allreduce_metrics, check_lockstep,
                          get_communicator, gradients_of, main_process_log, parameters_of, shard_range,
                          state_of, step_generator)
from .image_stats import training_image_stats
from .layers import Dropout, Normalize
from .losses import SoftmaxCrossEntropy
from .model import Sequential
from .pixels import check_image_dtype, float_batch, gather_batch
from .predict import EVAL_BATCH_SIZE  # evaluate() and held_out_report() without a batch size: as predict
from .random import default_generator
from .report import Progress, format_confusion, format_epoch, stderr_is_terminal, write_metrics_json
from .schedules import make_schedule
from .splits import SplitError, data_generator, plan_splits
from .zoo import build_model

INTERRUPTED_CHECKPOINT = "gpucnn-interrupted.npz"  # where Ctrl-C saves when there is no --checkpoint
MIN_STD = 1e-6  # a channel whose std is below this is constant: Normalize divides it by 1


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. ``epoch``: the last completed epoch; ``checkpoint``: the file
    that holds it (None when no epoch completed)."""

    def __init__(self, epoch: int, checkpoint: str | None, during: int, note: str = ""):
        self.epoch, self.checkpoint, self.during = epoch, checkpoint, during
        where = (f"epoch {epoch} is saved in {checkpoint}" if checkpoint else
                 "no epoch had completed, nothing to resume")
        super().__init__(f"interrupted during epoch {during}; {where}{note}")


# -- the loops ----------------------------------------------------------------------------
@contextmanager
def eval_mode(model: Sequential):
    """Evaluation mode inside the block (BatchNorm's running statistics, no Dropout); the
    model's and every layer's previous mode come back after it, also on an exception."""
    modes = [(model, model.training)] + [(layer, layer.training) for layer in model.layers]
    model.eval()
    try:
        yield model
    finally:
        for owner, mode in modes:
            owner.training = mode


def evaluate(model: Sequential, x, y, batch_size: int = EVAL_BATCH_SIZE, comm=None):
    """Mean cross-entropy, accuracy and host predictions of ``model`` on device arrays
    x (N, C, H, W), y (N,), in evaluation mode (the previous mode is restored after).

    x holds uint8 pixels 0..255 or float pixels in [0, 1]; each batch of ``batch_size``
    images is sliced where x lies and, when uint8, made float32 in [0, 1] there
    (gpucnn.pixels.float_batch). :func:`fit` validates in batches of its training batch
    size (as Keras' validation_batch_size defaults to batch_size): an evaluation batch
    then holds no more memory than a training step.

    The loss is the plain cross-entropy, also when training smooths the labels (as timm
    validates). Everything accumulates on the device; two downloads in total.
    With a communicator of N ranks (gpucnn.distributed), each rank evaluates its
    contiguous part of x and the loss sums and predictions are added over the ranks:
    every rank returns the numbers one process computes, and every prediction.
    """
    comm = SingleProcess() if comm is None else comm
    check_image_dtype(x, "evaluate")
    xp = model.backend.xp
    loss_fn = SoftmaxCrossEntropy()
    n = len(y)
    part = shard_range(n, comm.rank, comm.size)  # this rank's images: all of them for one process
    loss_sum = xp.zeros((), dtype=np.float64)
    predictions = xp.empty(part.stop - part.start, dtype=np.int64)
    with eval_mode(model):
        for batch in batch_slices(part.stop - part.start, batch_size):
            images = slice(part.start + batch.start, part.start + batch.stop)
            logits = model.forward(float_batch(x[images]))  # (B, classes)
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


def train_epoch(model, optimizer, x, y, batch_size, rng, progress=None, *, loss_fn=None, augment=None,
                schedule=None, comm=None, sampler=None, stop=None):
    """One pass over device arrays x (N, C, H, W), y (N,) in a fresh random order; x holds
    uint8 pixels 0..255 or float pixels in [0, 1], each gathered uint8 batch becomes float32
    in [0, 1] on the device (gpucnn.pixels.float_batch) before ``augment`` and the model.

    ``loss_fn``: a SoftmaxCrossEntropy (label smoothing; plain by default); ``augment``:
    called as augment(xb, rng) on each gathered batch; ``schedule``: stepped after every
    optimizer step. ``rng`` alone draws the order, the augmentations and (through the
    model's Dropout layers) the masks, so restoring its state replays them.

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
    loss_fn = SoftmaxCrossEntropy() if loss_fn is None else loss_fn
    dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
    per_step_randomness = augment is not None or (dropouts and comm.size > 1)
    for b, shard in enumerate(shards):
        count = shard.stop - shard.start  # this rank's part of the global batch (may be 0)
        # one process: rng itself. N ranks: a generator of this rank's own for this step, from
        # one draw on every rank, so the shuffling generator stays in lockstep (and is not
        # touched at all when nothing draws per step: N ranks then train as one process)
        step_rng = step_generator(rng, comm) if per_step_randomness else rng
        if comm.size > 1:
            for layer in dropouts:  # distributed: per-rank masks
                layer.rng = step_rng
        if count:
            xb, yb = gather_batch(x, y, order[shard])  # (B, C, H, W) float32, (B,): gathered on the device
            if augment is not None:
                xb = augment(xb, step_rng)  # (B, C, H, W), drawn on the device from one host draw
            logits = model.forward(xb)
            # the loss lands in batch_losses[b], the hits are added to correct (fused: one launch)
            loss_fn.forward(logits, yb, loss_out=batch_losses[b:b + 1], correct_out=correct)
            model.backward(loss_fn.backward(), need_input_grad=False)
        if comm.size > 1:  # distributed: every rank's gradients become the mean over the global batch
            comm.allreduce_mean_(gradients_of(model), weight=count)
        optimizer.step()
        if schedule is not None:
            schedule.step()  # the rate of the next batch
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


def _to_device(model, data, name):
    """(x, y) host or device arrays -> device arrays on the model's backend; host arrays are
    checked (shapes against the model, labels against its outputs) and uploaded once
    (uint8 images as uint8, float images as float32, labels as int64). Images of any
    other dtype raise TypeError: only uint8 says "pixels 0..255"."""
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
    check_image_dtype(x, f"fit: {name} images")
    if isinstance(x, np.ndarray):  # on the CPU a uint8 or float32 array is used as it is, no copy
        x = model.backend.asarray(x, dtype=None if x.dtype == np.uint8 else np.float32)
    return x, y


def fit(model, optimizer, train, val=None, *, epochs, batch_size=32, rng=None, verbose=2,
        start_epoch=0, history=None, on_epoch_end=None, log=print, loss_fn=None, augment=None,
        schedule=None, comm=None, on_batches=None):
    """Train ``model`` from ``start_epoch`` up to ``epochs`` (the total, as Keras'
    initial_epoch) on ``train`` = (x (N, C, H, W), y (N,)), checking on ``val`` = (x, y)
    after each epoch (None: no validation). Images are uint8 pixels 0..255 (as the
    datasets load them) or float pixels in [0, 1]: uint8 images stay uint8 on the device
    and each batch becomes float32 in [0, 1] after it is gathered (``/ 255``, exactly the
    values of a float32 copy divided by 255), so the whole set is never copied as floats.
    Host numpy arrays are uploaded once to the model's device (floats as float32); device
    arrays are used as they are. ``rng`` (a numpy Generator; None: gpucnn's default
    generator) shuffles every epoch and draws the augmentations. Validation runs in
    batches of ``batch_size`` (of a rank's shard of it, distributed): a validation batch
    holds no more memory than a training step.

    Each epoch trains in training mode and validates in evaluation mode (BatchNorm's
    running statistics, no Dropout). ``loss_fn``, ``augment``, ``schedule``: as
    :func:`train_epoch` takes them (a schedule adds "lr", the rate of the epoch's last
    batch, to the history).

    Returns the history: one dict per epoch (train_loss, train_acc, val_loss, val_acc,
    seconds, images_per_s; no val_* without ``val``). ``verbose``: 0 silent, 1 a progress
    bar on stderr when it is a terminal plus one line per epoch, 2 one line per epoch.
    ``on_epoch_end(epoch, history)`` runs after each epoch (checkpointing);
    ``on_batches(epoch, losses, sizes)`` after each epoch's training steps, with the host
    per-batch losses (B,) and batch sizes (B,) (per-step logging). A NaN/inf loss
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
    eval_batch = max(1, batch_size // comm.size)  # a rank validates in batches of its training shard
    show_bar = verbose == 1 and comm.is_main and stderr_is_terminal()
    with StopSignal(comm) as stop:  # distributed: Ctrl-C stops every rank after the same step
        for epoch in range(start_epoch + 1, epochs + 1):
            progress = Progress(len(sampler), f"epoch {epoch}/{epochs}", model.backend) if show_bar else None
            start = time.perf_counter()
            model.train()
            try:
                losses, sizes, correct = train_epoch(model, optimizer, x, y, batch_size, rng, progress,
                                                     loss_fn=loss_fn, augment=augment, schedule=schedule,
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
            if on_batches is not None:
                on_batches(epoch, losses, sizes)
            record = {"epoch": epoch, "train_loss": float(np.sum(losses * sizes) / sizes.sum()),
                      "train_acc": correct / len(y)}
            if comm.size > 1 and state_of(model):  # BatchNorm statistics: rank 0's, as saved and evaluated
                comm.bcast_(state_of(model))
            if val is not None:
                record["val_loss"], record["val_acc"], _ = evaluate(model, *val, eval_batch, comm=comm)
            if schedule is not None:
                record["lr"] = schedule.lr_at(schedule.step_count - 1)  # the rate of the epoch's last batch
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


# -- the whole job ------------------------------------------------------------------------
def load_dataset(config: TrainConfig, log=print) -> Dataset:
    """The run's Dataset: a named set (from ``config.data_dir``, downloaded when allowed),
    the .npz file or the folder of images ``config.dataset`` names."""
    if not config.image_folder:
        return datasets.load(config.dataset, config.data_dir, download=config.download)
    from .images import parse_image_size

    return datasets.load(config.dataset, channels=config.channels, cache_dir=config.cache_dir,
                         image_size=parse_image_size(config.image_size) if config.image_size else None,
                         skip_bad_images=config.skip_bad_images, log=log)


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


def _load_dataset_once_per_machine(config: TrainConfig, comm, log=print):
    """load_dataset(); with --download (or an image folder) and several ranks, the first
    rank of each machine loads (and downloads, or decodes) first, the others read the
    files (the cache) it wrote."""
    def load():  # an image folder's loader logs what it decodes or reads from its cache
        return load_dataset(config, log) if config.image_folder else load_dataset(config)

    if not ((config.download or config.image_folder) and comm.size > 1):
        return load()
    data = load() if comm.local_rank == 0 else None
    comm.barrier()
    return load() if data is None else data


def build_run_model(config: TrainConfig, data: Dataset, train_x: np.ndarray, init_rng, data_rng) -> Sequential:
    """``config.arch`` for the data's images and classes, weights from ``init_rng``, Dropout
    masks from ``data_rng``; with ``config.normalize`` a Normalize layer first, holding the
    per-channel mean and std of ``train_x`` (the training split only), so that the model
    takes raw images. A JSON architecture that starts with a Normalize layer gets these
    statistics instead of its own (with --no-normalize it keeps its own).

    Raises FlagError naming the first layer that does not fit the data."""
    try:
        model = build_model(config.arch, data.input_shape, data.num_classes, init_rng, dropout_rng=data_rng)
    except ValueError as exc:
        raise FlagError(str(exc)) from None
    if not config.normalize:
        return model
    layers = model.layers[1:] if isinstance(model.layers[0], Normalize) else model.layers
    mean, std = channel_stats(train_x)
    std = [s if s > MIN_STD else 1.0 for s in std]  # a constant channel is only centred
    return Sequential([Normalize(mean, std), *layers])


def make_run_schedule(config: TrainConfig, optimizer, steps_per_epoch: int, saved: dict | None):
    """(the learning-rate schedule, the epochs it spans). Its length is fixed when the run
    starts (``config.epochs``); a resumed run continues the saved one (``saved``: the
    checkpoint's "schedule" entry), at the rate the --lr of this run sets."""
    epochs = saved["epochs"] if saved is not None and config.schedule != "constant" else config.epochs
    try:
        schedule = make_schedule(config.schedule, optimizer, total_steps=epochs * steps_per_epoch,
                                 warmup_steps=config.warmup_epochs * steps_per_epoch)
    except ValueError as exc:
        raise FlagError(f"--schedule {config.schedule}: {exc}") from None
    if saved is not None:
        schedule.load_state_dict(saved["state"])
        schedule.base_lr = config.lr
        optimizer.lr = schedule.lr
    return schedule, epochs


def run(config: TrainConfig, log=print, comm=None) -> dict:
    """Load data, build or resume the model, train, test; returns the metrics dict
    {"device", "config", "history", "test_loss", "test_acc", "confusion_matrix"}
    (plus "model", "test_labels" and "predictions" for the caller, not for JSON).

    Raises ValueError (FlagError, SplitError, CheckpointError, DataError) before any model
    is trained when the settings cannot work, and TrainingInterrupted on Ctrl-C, after
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

    data = _load_dataset_once_per_machine(config, comm, log)
    init_rng, data_rng = np.random.default_rng(config.seed), data_generator(config.seed)
    val_given = data.val_x is not None  # an image folder's val/: used as given, no --val-fraction split
    splits = plan_splits(data.train_y, data.test_y, config.limit_train, config.val_fraction,
                         config.limit_test, data_rng, val_given=val_given)
    train_x, train_y = data.train_x[splits.train], data.train_y[splits.train]  # copies
    val_x, val_y = ((data.val_x, data.val_y) if val_given
                    else (data.train_x[splits.val], data.train_y[splits.val]))
    test_x, test_y = ((data.test_x, data.test_y) if splits.test is None
                      else (data.test_x[splits.test], data.test_y[splits.test]))
    # from here on ``data`` holds the run's splits: the full training images go now, before
    # any model runs, so that they are never held beside the splits while training (peak memory)
    data = dataclasses.replace(data, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    for name, labels in (("train", train_y), ("validation", val_y), ("test", test_y)):
        check_labels(labels, data.num_classes, name)
    log(f"data: {data.name or config.dataset}: {len(train_y)} train, {len(val_y)} validation, "
        f"{len(test_y)} test images of shape {data.input_shape}")
    about_data = {"input_shape": list(data.input_shape), "num_classes": data.num_classes,
                  "class_names": list(data.class_names) if data.class_names else None,
                  "image_stats": training_image_stats(train_x)}  # for predict's "unlike training" note
    model = build_run_model(config, data, train_x, init_rng, data_rng)
    del data  # the splits are held as train_x, val_x, test_x

    optimizer = make_optimizer(config.optimizer, model, config.lr, config.momentum, config.weight_decay)
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
        # buffers and step count from the checkpoint; lr, momentum, weight decay: this run's flags
        optimizer.load_state_dict(dict(checkpoint["optimizer_state"], hyper={}))
    steps_per_epoch = len(batch_slices(len(train_y), config.batch_size))
    schedule, schedule_epochs = make_run_schedule(config, optimizer, steps_per_epoch,
                                                  checkpoint["meta"].get("schedule") if checkpoint else None)
    if checkpoint is not None:
        log(f"resumed from {config.resume} after epoch {start_epoch}")
    comm.bcast_(parameters_of(model) + state_of(model))  # distributed: every rank starts from rank 0's
    if config.verbose:
        log(model.summary((1, *about_data["input_shape"])))

    def run_meta():  # what a checkpoint records besides the weights and the optimizer
        return {**about_data, "schedule": {"epochs": schedule_epochs, "state": schedule.state_dict()}}

    augment = parse_augment(config.augment)
    fit_options = dict(loss_fn=SoftmaxCrossEntropy(config.label_smoothing), schedule=schedule,
                       augment=augment if augment else None)
    # upload once, in the stored dtype (uint8 pixels stay uint8): every batch is sliced on the
    # device and made float32 there; on the CPU these are the host arrays themselves
    train_dev = (backend.asarray(train_x), backend.asarray(train_y))
    val_dev = (backend.asarray(val_x), backend.asarray(val_y))
    del train_x, val_x  # the device arrays (the same arrays on the CPU) are all that is kept
    tensorboard = None  # with --log-dir, on rank 0: event files, per-step values through fit's on_batches
    if config.log_dir is not None and comm.is_main:
        from .tensorboard import run_log
        tensorboard = run_log(config.log_dir, schedule, start_epoch * steps_per_epoch, fit_options, log)
    try:
        history = _fit_keeping_epochs(config, model, optimizer, train_dev, val_dev, data_rng, start_epoch,
                                      history, log, run_meta, fit_options, comm, tensorboard, steps_per_epoch)
    except BaseException:
        if tensorboard is not None:
            tensorboard.close()
        raise
    del train_dev, val_dev  # the held-out test runs without the training images (on the GPU too)

    test_loss, test_acc, predictions, matrix = held_out_report(model, test_x, test_y, about_data["num_classes"],
                                                               config.batch_size // comm.size, comm=comm)
    log(f"test: loss {test_loss:.4f}  accuracy {test_acc:.2%} on {len(test_y)} held-out images")
    log("confusion matrix (rows: true class, columns: predicted):\n"
        + format_confusion(matrix, about_data["class_names"]))
    if tensorboard is not None:
        tensorboard.test(test_loss, test_acc, config.epochs * steps_per_epoch)
        tensorboard.filters(model, config.epochs * steps_per_epoch)
        tensorboard.close()
    model.data_info = {k: about_data[k] for k in ("input_shape", "class_names", "image_stats")
                       if about_data[k] is not None}  # saved by model.save, exported to ONNX
    return {"device": backend.name, "config": config.to_dict(), "history": history,
            "test_loss": test_loss, "test_acc": test_acc, "confusion_matrix": matrix.tolist(),
            "model": model, "test_labels": test_y, "predictions": predictions}


def _fit_keeping_epochs(config, model, optimizer, train, val, data_rng, start_epoch, history, log,
                        run_meta, fit_options, comm=None, tensorboard=None, steps_per_epoch=None):
    """fit(), saving every completed epoch to --checkpoint. Without --checkpoint the last
    completed epoch is kept in host memory and written to INTERRUPTED_CHECKPOINT on
    Ctrl-C. Either way a Ctrl-C raises TrainingInterrupted naming the file that holds the
    last completed epoch; a second Ctrl-C during a save leaves the previous file whole.
    Distributed: only rank 0 saves (every rank holds the same weights). ``tensorboard``:
    a TensorBoardLog that gets each epoch's record (at step epoch * ``steps_per_epoch``)."""
    comm = SingleProcess() if comm is None else comm
    saved = {"epoch": start_epoch, "path": config.resume if start_epoch else None}
    pending = {"epoch": start_epoch, "arrays": None}  # without --checkpoint: the last epoch, in memory

    def on_epoch_end(epoch, hist):
        if tensorboard is not None:
            tensorboard.epoch(hist[-1], epoch * steps_per_epoch)
        if not comm.is_main:  # distributed: rank 0 writes the files (every rank holds the same weights)
            if config.checkpoint:
                saved.update(epoch=epoch, path=config.checkpoint)
            return
        arrays = checkpoint_arrays(model, optimizer, epoch, data_rng, config, hist, run_meta())
        if config.checkpoint:
            write_checkpoint(config.checkpoint, arrays)  # atomic
            saved.update(epoch=epoch, path=config.checkpoint)
        else:
            pending.update(epoch=epoch, arrays=arrays)

    try:
        return fit(model, optimizer, train, val, epochs=config.epochs, batch_size=config.batch_size,
                   rng=data_rng, verbose=config.verbose, start_epoch=start_epoch, history=history,
                   on_epoch_end=on_epoch_end, log=log, comm=comm, **fit_options)
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


def held_out_report(model: Sequential, x, y, num_classes: int, batch_size: int = EVAL_BATCH_SIZE, comm=None):
    """Held-out evaluation of host arrays x (N, C, H, W) (uint8 pixels or floats in
    [0, 1]), y (N,) in evaluation mode, ``batch_size`` images at a time: (loss, accuracy,
    predictions, confusion matrix); split over the ranks of ``comm`` and added up (see
    :func:`evaluate`). x is uploaded in its stored dtype (a no-op on the CPU)."""
    from sklearn.metrics import confusion_matrix

    backend = model.backend
    loss, accuracy, predictions = evaluate(model, backend.asarray(x), backend.asarray(y), batch_size, comm)
    return loss, accuracy, predictions, confusion_matrix(y, predictions, labels=np.arange(num_classes))


__all__ = ["TrainConfig", "FlagError", "SplitError", "CheckpointError", "NonFiniteLossError",
           "TrainingInterrupted", "make_optimizer", "fit", "evaluate", "eval_mode", "train_epoch", "run",
           "save_checkpoint", "load_checkpoint", "load_trained_model", "held_out_report",
           "format_confusion", "write_metrics_json"]
