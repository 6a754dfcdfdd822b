"""CUDA graphs: a training step recorded once and then replayed with one launch (opt-in).

Why. At small batches a GPU step is bound by host time, not by the GPU: on an H200
(2026-12-04, docs/runs/2026-12-04-h200/hostprof.txt) lenet's step at batch 64 took 1.44 ms
of host time for 33 kernel launches and 6 cuBLAS calls of 18-25 us each, while the GPU's own
work is a fraction of that. A CUDA graph replays the whole step (gather, forward, loss,
backward, optimizer) from one host call, as ``torch.cuda.CUDAGraph`` does for PyTorch.

How. :class:`StepGraph` runs a step function in three ways:

* the first call (and each call after the step's baked-in values changed) runs the step
  eagerly on a private stream, with every allocation from a private memory pool (the
  warm-up: it is this call's real step), then records the same step into a graph
  (``stream.begin_capture`` / ``end_capture``: recording executes nothing);
* later calls launch the graph on the current stream and redo the host bookkeeping the
  skipped Python would have done (``optimizer.steps += 1``);
* a step that cannot be graphed runs eagerly, always (:func:`unavailable` says why).

What a graph bakes in, and how each stays valid:

* scalars (learning rate, momentum): the graph's key holds the optimizer's
  hyperparameters (Adam's per-step bias corrections are read from a device table instead,
  gpucnn.backends.kernels.optim.BiasCorrections, renewed every ROWS steps: a recording that does not
  count below); a schedule that changes the rate makes the next call record again; after
  ``MAX_CAPTURES`` such recordings the step stays eager (a per-step schedule such as cosine
  or a warm-up changes the rate every step: eager is then faster);
* addresses: the key holds every parameter, state and optimizer buffer itself, compared by
  identity (a step must update them in place; one that replaces an array while being
  recorded is put back and graphs are turned off for it); the step's other memory
  (activations, gradients, workspaces, the optimizer's address table) comes from the step's
  private pool, one for all its recordings, emptied of the layers' and optimizer's old
  buffers before each, so memory that eager code frees later goes back to that pool, never
  to memory the graph still writes. When graphs end for the step (or the step goes), the
  pool's blocks are freed (CuPy never frees a dropped pool's);
* arrays made while recording: on a GPU they hold garbage until the first replay (the
  recording executes nothing); see :class:`StepGraph`.
* cuBLAS: CuPy's binding refuses calls during capture; gpucnn.backends.kernels.gemm calls cuBLAS
  through ctypes instead while recording (:func:`gpucnn.backends.kernels.gemm.capture_safe`, which
  gives CuPy's handle its stream back afterwards), which is why the ``gemm`` kernel group is
  required (Dense and Conv2D multiply through it); the graph holds the cuBLAS workspace.

Not graphed (eager, as without graphs): Dropout and augmentation (a graph would replay one
random mask), distributed training, BatchNorm without its fused kernels (it replaces its
running statistics), parameters that are not float32 and C-contiguous, the CPU. A failure
while setting up or recording (libcublas, memory, an operation CUDA cannot capture) warns
with :class:`GraphFallbackWarning` and trains on eagerly. Turned on by
``get_backend("gpu", graphs=True)`` or ``GPUCNN_CUDA_GRAPHS=1``; off by default
(gpucnn.backends.backend.GRAPHS_DEFAULT) until a `.ci/gpu` run has checked it on a GPU.
"""
from __future__ import annotations

import contextlib
import numbers
import warnings
import weakref

import numpy as np

from .kernels.gemm import capturable_cublas, capture_safe
from ..nn.layers import BatchNorm1D, BatchNorm2D, Dropout
from ..nn.layers.scratch import release_shared_scratch
from ..data.pixels import gather_batch

__all__ = ["GraphFallbackWarning", "MAX_CAPTURES", "StepGraph", "TrainStepGraph", "same_key",
           "train_step_graph", "unavailable"]

MAX_CAPTURES = 4  # recordings of one step before it stays eager (its scalars keep changing);
# recordings for a renewed optimizer table (Adam's bias corrections, every ROWS steps) do not count
REQUIRED_GROUPS = ("gemm", "optimizer")  # cuBLAS through ctypes; one in-place update launch


class GraphFallbackWarning(RuntimeWarning):
    """Recording a step into a CUDA graph failed; the step runs eagerly from then on."""


def unavailable(model, optimizer, augment=None, comm=None) -> str | None:
    """Why ``model``'s training step with ``optimizer`` cannot be replayed from a CUDA graph
    (None: it can). Checked before any device work."""
    backend = model.backend
    if not getattr(backend, "graphs", False):
        return "CUDA graphs are off (get_backend('gpu', graphs=True) or GPUCNN_CUDA_GRAPHS=1 turn them on)"
    if backend.name != "gpu":
        return "CUDA graphs need the GPU backend"
    needed = set(REQUIRED_GROUPS)
    if any(isinstance(layer, (BatchNorm1D, BatchNorm2D)) for layer in model.layers):
        needed.add("batchnorm")  # the generic path replaces the running statistics every step
    missing = sorted(needed - set(backend.kernels))
    if missing:
        return f"CUDA graphs need the kernel groups {missing} (GPUCNN_KERNELS)"
    if any(isinstance(layer, Dropout) for layer in model.layers):
        return "Dropout draws new masks every step; a graph would replay one mask"
    if augment is not None:
        return "augmentation draws new transforms every step; a graph would replay one"
    if comm is not None and comm.size > 1:
        return "distributed training averages the gradients between backward and the update"
    if not getattr(optimizer, "capturable", False):
        return f"{type(optimizer).__name__} computes per-step scalars on the host"
    for key, layer, name in model.named_parameters():
        weight = layer.params[name]
        if weight.dtype != np.float32 or not weight.flags.c_contiguous:
            got = f"{weight.dtype}" + ("" if weight.flags.c_contiguous else ", not C-contiguous")
            return (f"parameter {key} is {got}: the one-launch optimizer update a graph replays takes "
                    "float32, C-contiguous parameters (the per-parameter update computes Adam's bias "
                    "corrections on the host, which a replay would repeat); keep the model float32")
    return None


def _owners(model, optimizer) -> list:
    """The dicts of every array a step keeps and updates in place: parameters, layer state
    (BatchNorm's running statistics) and optimizer buffers."""
    return [owner for layer in model.layers for owner in (layer.params, layer.state)] + list(optimizer.state.values())


def _persistent(model, optimizer) -> list:
    """(owner dict, name, array) of every array :func:`_owners` holds."""
    return [(owner, name, array) for owner in _owners(model, optimizer) for name, array in owner.items()]


def same_key(a, b) -> bool:
    """Whether two graph keys match: tuples item by item, numbers, strings, None and booleans
    by value, anything else (arrays) by identity: never an array's elements (a device read),
    never an id (a freed array's id may be a new array's)."""
    if a is b:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_key(x, y) for x, y in zip(a, b))
    if isinstance(a, (numbers.Number, str, type(None))) and isinstance(b, (numbers.Number, str, type(None))):
        return a == b
    return a is b


_KEY_PARTS = ("arrays", "hyperparameters", "optimizer's device tables", "training mode", "inputs")
_ROUTINE = 2  # the optimizer's own tables (Adam's bias corrections): renewed as training goes


class StepGraph:
    """Calls ``step()`` (device work only: no host reads, no uploads) through a CUDA graph.

    ``extra_key()``: what else the step bakes in (shapes, its input arrays). ``captures``,
    ``refreshes`` (recordings for a renewed optimizer table, which never count toward
    MAX_CAPTURES), ``replays``: counts; ``reason``: why the step now runs eagerly (None while
    graphs are in use).

    On a GPU, the arrays a recording makes hold garbage until the graph's first launch: after
    the call that recorded, ``layer.grads``, the loss's gradient and the layers' caches are
    the recording's, not the warm-up's (the parameters, layer state and optimizer buffers are
    the warm-up's, updated). gpucnn reads none of them before the next step writes them; code
    that inspects gradients between steps must not rely on them after a recording."""

    def __init__(self, model, optimizer, step, extra_key=tuple):
        self.model, self.optimizer, self.step, self.extra_key = model, optimizer, step, extra_key
        self.xp = model.backend.xp
        self.graph = self._key = None
        self._stream = self._pool = self._blas = None  # made once; the pool serves every recording
        self._pool_emptied = None  # the pool's free_all_blocks, run when this object goes
        self.captures = self.refreshes = self.replays = 0
        self.reason = None

    def pool_bytes(self) -> int:
        """Bytes the graph's private memory pool holds (0 without a graph)."""
        return 0 if self._pool is None else int(self._pool.total_bytes())

    def key(self) -> tuple:
        """Everything the graph bakes in (compared with :func:`same_key`, a few microseconds
        of host time before every replay): the parameter, state and optimizer arrays
        themselves, held, the hyperparameters, the optimizer's device tables, the mode, extras."""
        optimizer = self.optimizer
        arrays = tuple(a for owner in _owners(self.model, optimizer) for a in owner.values())
        hyper = tuple(getattr(optimizer, name) for name in optimizer.HYPER)
        return arrays, hyper, optimizer.graph_key(), self.model.training, self.extra_key()

    def __call__(self) -> None:
        if self.reason is not None:
            self.step()
            self._empty_pool()  # the graph's arrays were replaced by this step's: free its memory
            return
        key = self.key()
        if self.graph is not None and same_key(key, self._key):
            self.graph.launch()  # on the current stream, after everything queued before it
            self.optimizer.steps += 1  # what optimizer.step() counts on the host
            self.replays += 1
            return
        changed = [part for i, part in enumerate(_KEY_PARTS)
                   if self._key is None or not same_key(key[i], self._key[i])]
        if self._key is not None and changed == [_KEY_PARTS[_ROUTINE]]:
            self.refreshes += 1  # e.g. Adam's correction table moved on: not the step's scalars
        elif self.captures - self.refreshes >= MAX_CAPTURES:
            hint = " (a learning-rate schedule that moves every step?)" if _KEY_PARTS[1] in changed else ""
            self._give_up(f"the step's {' and '.join(changed)} changed at each of {MAX_CAPTURES} recordings"
                          f"{hint}; eager steps are faster then")
            self.step()
            self._empty_pool()
            return
        self._record()

    def _give_up(self, reason: str) -> None:
        """Eager from now on; the pool is emptied after the next eager step (:meth:`_empty_pool`)."""
        self.graph = self._key = self._blas = None
        self.reason = reason

    def _empty_pool(self) -> None:
        """Free the private pool's blocks and drop it. CuPy 14.2 never frees a dropped pool's
        cached blocks (cupy/cuda/memory.pyx: SingleDeviceMemoryPool has no __dealloc__)."""
        if self._pool_emptied is not None:
            self._pool_emptied()  # once: a weakref.finalize
            self._pool = self._pool_emptied = None

    def _release_step_buffers(self) -> None:
        """Drop the buffers a step keeps between calls (layer workspaces, the shared conv
        scratch, the optimizer's address table): the warm-up makes them again, in the pool."""
        for layer in self.model.layers:
            layer.release_workspaces()
        release_shared_scratch(self.xp)
        self.optimizer.release_device_table()

    def _resources(self) -> tuple:
        """(stream, pool, blas): the recording's stream and memory pool, made once and kept (a
        new recording reuses the pool: what the old graph used goes back to it, and nothing
        else allocates from it), and cuBLAS through ctypes with its workspace (the graph
        keeps it: its products use that memory). Raises when any cannot be had."""
        xp = self.xp
        if self._stream is None:
            self._stream = xp.cuda.Stream(non_blocking=True)
        if self._pool is None:
            self._pool = xp.cuda.MemoryPool()
            self._pool_emptied = weakref.finalize(self, self._pool.free_all_blocks)
            self._pool_emptied.atexit = False  # the process's end frees everything; CUDA may be gone by then
        self._blas = capturable_cublas(xp)  # before the pool is in use: the workspace outlives graphs
        return self._stream, self._pool, self._blas

    def _record(self) -> None:
        """Warm up (this call's step, executed) and record the step (not executed)."""
        xp = self.xp
        self.graph = self._key = None  # never launched again: its memory goes back to the pool
        self._release_step_buffers()
        self.captures += 1
        with contextlib.ExitStack() as setup:
            try:
                stream, pool, blas = self._resources()
                setup.enter_context(capture_safe(xp, blas))
            except Exception as exc:  # noqa: BLE001  (the CDLL, a missing symbol, no memory: eager)
                failure = exc
            else:
                failure = None
                key, graph, recording_failure, replaced = self._warm_up_and_capture(stream, pool)
        if failure is not None:
            self._fall_back(f"setting up the recording failed ({type(failure).__name__}: {failure})")
            self.step()  # this call's step, eagerly
            self._empty_pool()
            return
        if recording_failure is not None:
            self._fall_back(f"recording the step failed ({type(recording_failure).__name__}: {recording_failure})")
        elif replaced:
            self._give_up(f"the step replaces arrays instead of updating them in place: {replaced[:3]}")
        else:
            self.graph, self._key = graph, key

    def _fall_back(self, reason: str) -> None:
        self._give_up(reason)
        warnings.warn(f"CUDA graphs: {reason}; training goes on without them", GraphFallbackWarning, stacklevel=4)

    def _warm_up_and_capture(self, stream, pool) -> tuple:
        """(key, graph, the exception that ended the recording or None, (owner, name) of the
        arrays the step replaced): this call's step run on ``stream`` from ``pool``, then recorded."""
        xp = self.xp
        caller = xp.cuda.get_current_stream()
        with xp.cuda.using_allocator(pool.malloc), stream:
            stream.wait_event(caller.record())  # after the caller's queued work
            try:
                self.step()  # the warm-up: this call's step
                self.optimizer.before_recording()  # e.g. Adam's table of bias corrections, uploaded now
                key, kept, steps = self.key(), _persistent(self.model, self.optimizer), self.optimizer.steps
                try:
                    graph, failure = self._capture(stream)
                finally:  # also on Ctrl-C: the model keeps the warm-up's arrays, never recorded ones
                    self.optimizer.steps = steps  # the recording's step() counted a step nobody ran
                    replaced = [(owner, name) for owner, name, array in kept if owner.get(name) is not array]
                    for owner, name, array in kept:
                        owner[name] = array  # recorded arrays hold nothing: the warm-up's do
            finally:
                caller.wait_event(stream.record())  # the caller's next work (a checkpoint too) after the warm-up
        return key, graph, failure, replaced

    def _capture(self, stream) -> tuple:
        """(graph, None), or (None, the first exception) when recording the step failed; the
        stream is out of capture mode either way."""
        try:
            stream.begin_capture()
        except Exception as exc:  # noqa: BLE001  (reported by the caller; the step already ran)
            return None, exc
        graph = failure = None
        try:
            self.step()  # recorded, not executed
        except Exception as exc:  # noqa: BLE001
            failure = exc
        finally:
            try:
                graph = stream.end_capture()
            except Exception as exc:  # noqa: BLE001  (after a failed step: the capture is invalid)
                failure = failure or exc
        return (None, failure) if failure is not None else (graph, None)


class TrainStepGraph:
    """gpucnn.training.loops.train_epoch's step on batches of ``batch`` images through a :class:`StepGraph`:
    ``run(indices, loss_out)`` gathers x[indices], y[indices] into float32 (B, C, H, W) and (B,),
    runs forward, the loss (written to ``loss_out``, (1,); the hits added to ``correct``, ()),
    backward and the optimizer step. ``indices`` (B,) int64 on the device."""

    def __init__(self, model, optimizer, loss_fn, x, y, batch: int):
        xp = model.backend.xp
        self.model, self.optimizer, self.loss_fn, self.x, self.y, self.batch = model, optimizer, loss_fn, x, y, batch
        self.indices = xp.zeros(batch, dtype=np.int64)  # (B,) the graph reads the batch's indices here
        self.loss = xp.zeros(1, dtype=np.float32)  # (1,) and writes its loss here
        self.correct = xp.zeros((), dtype=np.int64)  # () and adds its hits here
        self.graph = StepGraph(model, optimizer, self._step)

    def matches(self, model, optimizer, loss_fn, x, y, batch) -> bool:
        """Whether this step serves a train_epoch call with these arguments."""
        same = model is self.model and optimizer is self.optimizer and x is self.x and y is self.y
        return same and batch == self.batch and _loss_settings(loss_fn) == _loss_settings(self.loss_fn)

    def _step(self):
        xb, yb = gather_batch(self.x, self.y, self.indices)  # (B, C, H, W) float32, (B,)
        logits = self.model.forward(xb)  # (B, classes)
        self.loss_fn.forward(logits, yb, loss_out=self.loss, correct_out=self.correct)
        self.model.backward(self.loss_fn.backward(), need_input_grad=False)
        self.optimizer.step()

    def run(self, indices, loss_out) -> None:
        self.indices[...] = indices  # one copy on the device
        self.graph()
        loss_out[...] = self.loss  # one copy on the device


def _loss_settings(loss_fn) -> tuple:
    return type(loss_fn), getattr(loss_fn, "label_smoothing", None)


def train_step_graph(model, optimizer, loss_fn, x, y, batch: int, augment=None, comm=None):
    """The :class:`TrainStepGraph` for these arguments, kept as ``optimizer.graph_step`` between
    epochs (one recording serves every epoch; it goes with the optimizer), or None when
    :func:`unavailable` gives a reason."""
    if unavailable(model, optimizer, augment, comm) is not None:
        return None
    step = optimizer.graph_step
    if step is None or not step.matches(model, optimizer, loss_fn, x, y, batch):
        step = optimizer.graph_step = TrainStepGraph(model, optimizer, loss_fn, x, y, batch)
    return step
