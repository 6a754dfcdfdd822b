"""A whole training run as a library function: run(config), which the thin CLI in
scripts/train.py calls, and its set-up (data, model, schedule, communicator) and
checkpointing. No argparse here. The loops it drives (fit, train_epoch, evaluate,
held_out_report) are in loops.py and importable from here too; what defines a run is in
config.py, checkpoints in checkpoint.py, the choice of train / validation / test images
in splits.py, the architectures in zoo.py, what the user sees in report.py."""
from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np

from ..data import datasets
from ..data.augment import parse_augment
from ..backends.backend import get_backend
from .callbacks import EarlyStopping, better_epoch
from .checkpoint import (CheckpointError, check_checkpoint_space, checkpoint_arrays, load_checkpoint,  # noqa: F401
                         load_trained_model, save_checkpoint, write_checkpoint)
from .config import FlagError, TrainConfig, make_optimizer
from .resume import check_resume, resume_changes
from ..data.batches import Dataset, batch_slices, check_labels
from ..data.datasets import channel_stats
from ..distributed import SingleProcess, get_communicator, main_process_log, parameters_of, state_of
from ..backends.cuda_graphs import unavailable as graphs_unavailable
from ..data.image_stats import training_image_stats
from ..nn.layers import Normalize
from ..nn.losses import SoftmaxCrossEntropy
# the loops, importable from gpucnn.training.run as before they had a module of their own; run()
# calls fit and held_out_report by these names (tests watch them here)
from .loops import (NonFiniteLossError, eval_mode, evaluate, fit, held_out_report,  # noqa: F401
                    train_epoch)
from ..nn.model import Sequential
from ..nn.inference import EVAL_BATCH_SIZE  # noqa: F401  (scripts/evaluate.py imports it from here)
from .report import format_confusion, write_metrics_json  # noqa: F401  (write_metrics_json: in __all__)
from ..optim.schedules import make_schedule
from ..data.splits import SplitError, data_generator, plan_splits
from ..nn.zoo import build_model

INTERRUPTED_CHECKPOINT = "gpucnn-interrupted.npz"  # where Ctrl-C saves when there is no --checkpoint
MIN_STD = 1e-6  # a channel whose std is below this is constant: Normalize divides it by 1


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. ``epoch``: the last completed epoch; ``checkpoint``: the file
    that holds it (None when no epoch completed)."""

    def __init__(self, epoch: int, checkpoint: str | None, during: int, note: str = ""):
        self.epoch, self.checkpoint, self.during = epoch, checkpoint, during
        where = (f"epoch {epoch} is saved in {checkpoint}" if checkpoint else
                 "no epoch had completed, nothing to resume")
        super().__init__(f"interrupted during epoch {during}; {where}{note}")


# -- the best epoch and early stopping (--save-best, --patience) ---------------------------
def best_checkpoint_path(checkpoint) -> str:
    """Where --save-best keeps the best epoch, beside --checkpoint: runs/x.npz ->
    runs/x.best.npz (runs/x -> runs/x.best)."""
    root, ext = os.path.splitext(os.fspath(checkpoint))
    return f"{root}.best{ext}"


def early_stopping(config: TrainConfig, meta: dict | None = None) -> EarlyStopping | None:
    """--patience N as an EarlyStopping on the validation loss (None without --patience).
    Resuming (``meta``: the checkpoint's), the count goes on from where it was: from the
    checkpoint's "early_stopping" record, else rebuilt from its history. Raises FlagError
    when the checkpoint's run has already gone N epochs without a better validation loss
    (it stopped early, or would have): a larger --patience trains on."""
    if config.patience is None:
        return None
    stopper = EarlyStopping("val_loss", patience=config.patience)
    if meta is None:
        return stopper
    if meta.get("early_stopping") is not None:
        stopper.load_state_dict(meta["early_stopping"])
    else:
        stopper.replay(meta["history"])
    if stopper.wait >= stopper.patience:
        raise FlagError(f"--patience {config.patience}: {config.resume} has gone {stopper.wait} epoch"
                        f"{'s' * (stopper.wait != 1)} without a better validation loss (the best: epoch "
                        f"{stopper.best_epoch}), as many as --patience allows; pass --patience {stopper.wait + 1} "
                        "or more to train on")
    return stopper


# -- the whole job ------------------------------------------------------------------------
def load_dataset(config: TrainConfig, log=print) -> Dataset:
    """The run's Dataset: a named set (from ``config.data_dir``, downloaded when allowed),
    the .npz file or the folder of images ``config.dataset`` names."""
    if not config.image_folder:
        return datasets.load(config.dataset, config.data_dir, download=config.download)
    from ..data.images import parse_image_size

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
    stopper = early_stopping(config, checkpoint["meta"] if checkpoint is not None else None)
    backend = get_backend(config.device)
    comm, log = _communicator(config, backend, comm, log)
    log(f"config: {json.dumps(config.applicable())}")
    if checkpoint is not None and (changed := resume_changes(config, checkpoint["meta"])):
        log(f"resume: changed from the checkpoint: {', '.join(changed)}")
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
        meta = {**about_data, "schedule": {"epochs": schedule_epochs, "state": schedule.state_dict()}}
        if stopper is not None:  # --patience: the count a resume continues
            meta["early_stopping"] = stopper.state_dict()
        return meta

    augment = parse_augment(config.augment)
    fit_options = dict(loss_fn=SoftmaxCrossEntropy(config.label_smoothing), schedule=schedule,
                       augment=augment if augment else None, callbacks=[stopper] if stopper is not None else None)
    if backend.graphs:  # asked for (GPUCNN_CUDA_GRAPHS=1): say whether this run's step allows them
        reason = graphs_unavailable(model, optimizer, fit_options["augment"], comm)
        log("CUDA graphs: " + ("on (full batches replay one recorded step)" if reason is None else f"off: {reason}"))
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
                                      history, log, run_meta, fit_options, comm, tensorboard, steps_per_epoch,
                                      best=checkpoint["meta"].get("best") if checkpoint is not None else None)
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
    if tensorboard is not None:  # at the last epoch's step (earlier than --epochs after an early stop)
        tensorboard.test(test_loss, test_acc, history[-1]["epoch"] * steps_per_epoch)
        tensorboard.filters(model, history[-1]["epoch"] * steps_per_epoch)
        tensorboard.close()
    model.data_info = {k: about_data[k] for k in ("input_shape", "class_names", "image_stats")
                       if about_data[k] is not None}  # saved by model.save, exported to ONNX
    return {"device": backend.name, "config": config.to_dict(), "history": history,
            "test_loss": test_loss, "test_acc": test_acc, "confusion_matrix": matrix.tolist(),
            "model": model, "test_labels": test_y, "predictions": predictions}


def _fit_keeping_epochs(config, model, optimizer, train, val, data_rng, start_epoch, history, log,
                        run_meta, fit_options, comm=None, tensorboard=None, steps_per_epoch=None, best=None):
    """fit(), saving every completed epoch to --checkpoint. Without --checkpoint the last
    completed epoch is kept in host memory and written to INTERRUPTED_CHECKPOINT on
    Ctrl-C. Either way a Ctrl-C raises TrainingInterrupted naming the file that holds the
    last completed epoch; a second Ctrl-C during a save leaves the previous file whole.
    Distributed: only rank 0 saves (every rank holds the same weights). ``tensorboard``:
    a TensorBoardLog that gets each epoch's record (at step epoch * ``steps_per_epoch``).

    With --save-best an epoch that beats ``best`` (the checkpoint's "best" record: epoch,
    val_acc, val_loss; None: none yet) by :func:`gpucnn.training.callbacks.better_epoch` is also
    written to :func:`best_checkpoint_path`; every checkpoint records the best so far
    (meta "best"), so a resume that does worse never replaces that file."""
    comm = SingleProcess() if comm is None else comm
    saved = {"epoch": start_epoch, "path": config.resume if start_epoch else None}
    pending = {"epoch": start_epoch, "arrays": None}  # without --checkpoint: the last epoch, in memory
    kept = {"best": best}  # the best epoch's record, carried from checkpoint to checkpoint

    def on_epoch_end(epoch, hist):
        if tensorboard is not None:
            tensorboard.epoch(hist[-1], epoch * steps_per_epoch)
        improved = config.save_best and better_epoch(hist[-1], kept["best"])  # the same on every rank
        if improved:
            kept["best"] = {key: hist[-1][key] for key in ("epoch", "val_acc", "val_loss")}
        if not comm.is_main:  # distributed: rank 0 writes the files (every rank holds the same weights)
            if config.checkpoint:
                saved.update(epoch=epoch, path=config.checkpoint)
            return
        meta = run_meta()
        if kept["best"] is not None:
            meta["best"] = kept["best"]
        arrays = checkpoint_arrays(model, optimizer, epoch, data_rng, config, hist, meta)
        if config.checkpoint:
            write_checkpoint(config.checkpoint, arrays)  # atomic
            saved.update(epoch=epoch, path=config.checkpoint)
            if improved:
                write_checkpoint(best_checkpoint_path(config.checkpoint), arrays)  # atomic too
        else:
            pending.update(epoch=epoch, arrays=arrays)

    if config.checkpoint and comm.is_main:  # a disk too full for one save fails now, not after an epoch
        check_checkpoint_space(config.checkpoint, model, optimizer, config.epochs)
    try:
        history = fit(model, optimizer, train, val, epochs=config.epochs, batch_size=config.batch_size,
                      rng=data_rng, verbose=config.verbose, start_epoch=start_epoch, history=history,
                      on_epoch_end=on_epoch_end, log=log, comm=comm, **fit_options)
        if config.save_best and kept["best"] is not None:
            b = kept["best"]
            log(f"best: epoch {b['epoch']} (val_acc {b['val_acc']:.2%}, val_loss {b['val_loss']:.4f}), "
                f"kept in {best_checkpoint_path(config.checkpoint)}")
        return history
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


__all__ = ["TrainConfig", "FlagError", "SplitError", "CheckpointError", "NonFiniteLossError",
           "TrainingInterrupted", "make_optimizer", "fit", "evaluate", "eval_mode", "train_epoch", "run",
           "save_checkpoint", "load_checkpoint", "load_trained_model", "held_out_report",
           "format_confusion", "write_metrics_json", "best_checkpoint_path", "early_stopping"]
