"""The loops: fit (epochs, validation, history), train_epoch (one shuffled pass of
optimizer steps), evaluate and held_out_report (loss, accuracy, predictions in evaluation
mode). Library functions on arrays and a model; gpucnn.training.run.run builds a whole run
(data, model, checkpoints) around them. fit's callbacks are in callbacks.py."""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from .callbacks import CallbackList, FunctionCallback
from ..data.batches import batch_slices, check_labels
from ..distributed import (ShardedSampler, SingleProcess, StopSignal, allreduce_metrics, check_lockstep,
                           gradients_of, main_process_log, shard_range, state_of, step_generator)
from ..nn.layers import Dropout
from ..backends.cuda_graphs import train_step_graph
from ..nn.losses import SoftmaxCrossEntropy
from ..nn.model import Sequential
from ..data.pixels import check_image_dtype, float_batch, gather_batch
from ..nn.inference import EVAL_BATCH_SIZE  # evaluate() and held_out_report() without a batch size: as predict
from ..random import default_generator
from .report import Progress, format_epoch, progress_bar_shown

__all__ = ["NonFiniteLossError", "eval_mode", "evaluate", "held_out_report", "train_epoch", "fit"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


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
    (gpucnn.data.pixels.float_batch). :func:`fit` validates in batches of its training batch
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
                schedule=None, comm=None, sampler=None, stop=None, callbacks=None):
    """One pass over device arrays x (N, C, H, W), y (N,) in a fresh random order; x holds
    uint8 pixels 0..255 or float pixels in [0, 1], each gathered uint8 batch becomes float32
    in [0, 1] on the device (gpucnn.data.pixels.float_batch) before ``augment`` and the model.

    ``loss_fn``: a SoftmaxCrossEntropy (label smoothing; plain by default); ``augment``:
    called as augment(xb, rng) on each gathered batch; ``schedule``: stepped after every
    optimizer step. ``rng`` alone draws the order, the augmentations and (through the
    model's Dropout layers) the masks, so restoring its state replays them. ``callbacks``:
    a gpucnn.training.callbacks.CallbackList whose batch hooks run around every step (none: no
    call at all; the batch's loss is read from the device only when a callback asks).

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
    loss_fn = SoftmaxCrossEntropy() if loss_fn is None else loss_fn
    # full batches replayed from a CUDA graph where the backend allows it (gpucnn.backends.cuda_graphs)
    graphed = train_step_graph(model, optimizer, loss_fn, x, y, batch_size, augment, comm)
    if graphed is None:
        correct = xp.zeros((), dtype=np.int64)
    else:  # the graph adds its hits to this array: the eager steps add theirs there too
        correct = graphed.correct
        correct.fill(0)
    dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
    per_step_randomness = augment is not None or (dropouts and comm.size > 1)
    hooks = callbacks if callbacks is not None and callbacks.batch_hooks else None
    for b, shard in enumerate(shards):
        count = shard.stop - shard.start  # this rank's part of the global batch (may be 0)
        if hooks is not None:
            hooks.train_batch_begin(b, count)
        # one process: rng itself. N ranks: a generator of this rank's own for this step, from
        # one draw on every rank, so the shuffling generator stays in lockstep (and is not
        # touched at all when nothing draws per step: N ranks then train as one process)
        step_rng = step_generator(rng, comm) if per_step_randomness else rng
        if comm.size > 1:
            for layer in dropouts:  # distributed: per-rank masks
                layer.rng = step_rng
        if graphed is not None and count == graphed.batch:  # gather, forward, loss, backward, update
            graphed.run(order[shard], batch_losses[b:b + 1])
        elif count:
            xb, yb = gather_batch(x, y, order[shard])  # (B, C, H, W) float32, (B,): gathered on the device
            if augment is not None:
                xb = augment(xb, step_rng)  # (B, C, H, W), drawn on the device from one host draw
            logits = model.forward(xb)
            # the loss lands in batch_losses[b], the hits are added to correct (fused: one launch)
            loss_fn.forward(logits, yb, loss_out=batch_losses[b:b + 1], correct_out=correct)
            model.backward(loss_fn.backward(), need_input_grad=False)
        if comm.size > 1:  # distributed: every rank's gradients become the mean over the global batch
            comm.allreduce_mean_(gradients_of(model), weight=count)
        if graphed is None or count != graphed.batch:
            optimizer.step()
        if schedule is not None:
            schedule.step()  # the rate of the next batch
        if hooks is not None:
            hooks.train_batch_end(b, count, batch_losses[b:b + 1])  # read only if a callback asks
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
        schedule=None, comm=None, on_batches=None, callbacks=None):
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
    bar (on stderr when it is a terminal; in a Jupyter notebook, a widget) plus one line
    per epoch, 2 one line per epoch.

    ``callbacks``: gpucnn.training.callbacks.Callback objects (Keras's hooks: train, epoch and
    batch begin/end), called in their order; each epoch's on_epoch_end runs before its
    line is printed (a printed epoch is a saved epoch). A callback that sets
    ``model.stop_training = True`` (EarlyStopping) ends training after that epoch: fit
    logs "early stop after epoch K: ..." and returns the history as after its last
    epoch. The older single functions still work, run after the callbacks:
    ``on_epoch_end(epoch, history)`` after each epoch (checkpointing);
    ``on_batches(epoch, losses, sizes)`` after each epoch's training steps, with the host
    per-batch losses (B,) and batch sizes (B,) (per-step logging). A NaN/inf loss
    raises NonFiniteLossError naming the epoch and batch, before any on_epoch_end could
    save the bad weights.

    ``comm`` (gpucnn.distributed; None: one process): data-parallel training over its
    ranks, every rank calling fit with the same data and generator state. ``batch_size``
    is the global batch (divisible by the number of ranks); the history is the same on
    every rank; only rank 0 logs; ``on_epoch_end`` runs on every rank (save where
    ``comm.is_main``); BatchNorm statistics are rank 0's after each epoch; callbacks run on
    every rank, and training stops on every rank when one rank's callbacks ask.
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
    show_bar = verbose == 1 and comm.is_main and progress_bar_shown()
    metrics = ["train_loss", "train_acc", *(["val_loss", "val_acc"] if val is not None else []),
               *(["lr"] if schedule is not None else []), "seconds", "images_per_s"]
    older = [FunctionCallback(history, on_epoch_end, on_batches)] if on_epoch_end or on_batches else []
    callbacks = CallbackList([*(callbacks or []), *older], model,
                             {"epochs": epochs, "start_epoch": start_epoch, "steps": len(sampler),
                              "verbose": verbose, "metrics": metrics})
    model.stop_training = False  # a callback sets it to end training after the epoch (as Keras)
    callbacks.call("on_train_begin", {})
    with StopSignal(comm) as stop:  # distributed: Ctrl-C stops every rank after the same step
        for epoch in range(start_epoch + 1, epochs + 1):
            callbacks.call("on_epoch_begin", epoch, {})
            progress = Progress(len(sampler), f"epoch {epoch}/{epochs}", model.backend) if show_bar else None
            start = time.perf_counter()
            model.train()
            try:
                losses, sizes, correct = train_epoch(model, optimizer, x, y, batch_size, rng, progress,
                                                     loss_fn=loss_fn, augment=augment, schedule=schedule,
                                                     comm=comm, sampler=sampler, stop=stop, callbacks=callbacks)
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
            callbacks.call("on_epoch_batches", epoch, losses, sizes)
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
            callbacks.call("on_epoch_end", epoch, record)  # first: a printed epoch is a saved epoch
            if verbose:
                log(format_epoch(record, epochs))
            if stop.requested():
                raise KeyboardInterrupt
            if _stop_training(model, comm):
                if verbose:
                    reasons = [c.reason for c in callbacks.callbacks if getattr(c, "stopped_epoch", None) == epoch]
                    log(f"early stop after epoch {epoch}: "
                        + ("; ".join(reasons) or "a callback set model.stop_training"))
                break
    callbacks.call("on_train_end", history[-1] if history else {})
    return history


def _stop_training(model, comm) -> bool:
    """model.stop_training, as a callback left it; distributed: True on every rank when
    any rank's callbacks set it (one collective per epoch, so that all ranks stop together)."""
    stopping = bool(getattr(model, "stop_training", False))
    if comm.size > 1:
        stopping = allreduce_metrics(comm, {"stop": int(stopping)})["stop"] > 0
    return stopping


def held_out_report(model: Sequential, x, y, num_classes: int, batch_size: int = EVAL_BATCH_SIZE, comm=None):
    """Held-out evaluation of host arrays x (N, C, H, W) (uint8 pixels or floats in
    [0, 1]), y (N,) in evaluation mode, ``batch_size`` images at a time: (loss, accuracy,
    predictions, confusion matrix); split over the ranks of ``comm`` and added up (see
    :func:`evaluate`). x is uploaded in its stored dtype (a no-op on the CPU)."""
    from sklearn.metrics import confusion_matrix

    backend = model.backend
    loss, accuracy, predictions = evaluate(model, backend.asarray(x), backend.asarray(y), batch_size, comm)
    return loss, accuracy, predictions, confusion_matrix(y, predictions, labels=np.arange(num_classes))
