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
  gpucnn.kernels.optim.BiasCorrections); a schedule that changes the rate makes the next call
  record again; after ``MAX_CAPTURES`` recordings the step stays eager (a per-step schedule
  such as cosine or a warm-up changes the rate every step: eager is then faster);
* addresses: the key holds the identity of every parameter, state and optimizer buffer
  (a step must update them in place; one that replaces an array while being recorded is
  put back and graphs are turned off for it); the step's other memory (activations,
  gradients, workspaces, the optimizer's address table) comes from the graph's private
  pool, emptied of the layers' and optimizer's old buffers first, so memory that eager code
  frees later goes back to that pool, never to memory the graph still writes.
* cuBLAS: CuPy's binding refuses calls during capture; gpucnn.kernels.gemm calls cuBLAS
  through ctypes instead while recording (:func:`gpucnn.kernels.gemm.capture_safe`), which
  is why the ``gemm`` kernel group is required (Dense and Conv2D multiply through it).

Not graphed (eager, as without graphs): Dropout and augmentation (a graph would replay one
random mask), distributed training, BatchNorm without its fused kernels (it replaces its
running statistics), the CPU. Turned on by ``get_backend("gpu", graphs=True)`` or
``GPUCNN_CUDA_GRAPHS=1``; off by default until a `.ci/gpu` run has checked it on a GPU.
"""
from __future__ import annotations

import warnings

import numpy as np

from .kernels.gemm import capture_safe
from .layers import BatchNorm1D, BatchNorm2D, Dropout
from .layers.scratch import release_shared_scratch
from .pixels import gather_batch

__all__ = ["GraphFallbackWarning", "MAX_CAPTURES", "StepGraph", "TrainStepGraph", "train_step_graph",
           "unavailable"]

MAX_CAPTURES = 4  # recordings of one step before it stays eager (its scalars keep changing)
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
    return None


def _owners(model, optimizer) -> list:
    """The dicts of every array a step keeps and updates in place: parameters, layer state
    (BatchNorm's running statistics) and optimizer buffers."""
    return [owner for layer in model.layers for owner in (layer.params, layer.state)] + list(optimizer.state.values())


def _persistent(model, optimizer) -> list:
    """(owner dict, name, array) of every array :func:`_owners` holds."""
    return [(owner, name, array) for owner in _owners(model, optimizer) for name, array in owner.items()]


class StepGraph:
    """Calls ``step()`` (device work only: no host reads, no uploads) through a CUDA graph.

    ``extra_key()``: what else the step bakes in (shapes, the identity of its input arrays).
    ``captures``, ``replays``: counts; ``reason``: why the step now runs eagerly (None while
    graphs are in use)."""

    def __init__(self, model, optimizer, step, extra_key=tuple):
        self.model, self.optimizer, self.step, self.extra_key = model, optimizer, step, extra_key
        self.xp = model.backend.xp
        self.graph = self._pool = self._key = None
        self._stream = None
        self.captures = self.replays = 0
        self.reason = None

    def pool_bytes(self) -> int:
        """Bytes the graph's private memory pool holds (0 without a graph)."""
        return 0 if self._pool is None else int(self._pool.total_bytes())

    def key(self) -> tuple:
        """Everything the graph bakes in: array identities, hyperparameters, mode, extras.
        (Checked before every replay: a few microseconds of host time.)"""
        optimizer = self.optimizer
        arrays = tuple(id(a) for owner in _owners(self.model, optimizer) for a in owner.values())
        hyper = tuple(getattr(optimizer, name) for name in optimizer.HYPER)
        return arrays, hyper, optimizer.graph_key(), self.model.training, self.extra_key()

    def __call__(self) -> None:
        if self.graph is not None and self.key() == self._key:
            self.graph.launch()  # on the current stream, after everything queued before it
            self.optimizer.steps += 1  # what optimizer.step() counts on the host
            self.replays += 1
        elif self.reason is not None:
            self.step()
        elif self.captures >= MAX_CAPTURES:
            self._give_up(f"the step's scalars or arrays changed {self.captures} times (a learning-rate "
                          "schedule that moves every step?); eager steps are faster then")
            self.step()
        else:
            self._record()

    def _give_up(self, reason: str) -> None:
        self.graph = self._pool = self._key = None
        self.reason = reason

    def _release_step_buffers(self) -> None:
        """Drop the buffers a step keeps between calls (layer workspaces, the shared conv
        scratch, the optimizer's address table): the warm-up makes them again, in the pool."""
        for layer in self.model.layers:
            layer.release_workspaces()
        release_shared_scratch(self.xp)
        self.optimizer.release_device_table()

    def _record(self) -> None:
        """Warm up (this call's step, executed) and record the step (not executed)."""
        xp = self.xp
        self.graph = self._pool = self._key = None  # the old graph's pool is freed with it
        if self._stream is None:
            self._stream = xp.cuda.Stream(non_blocking=True)
        stream, caller = self._stream, xp.cuda.get_current_stream()
        self._release_step_buffers()
        pool = xp.cuda.MemoryPool()
        self.captures += 1
        with capture_safe(xp), xp.cuda.using_allocator(pool.malloc), stream:
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
        if failure is not None:
            self._give_up(f"recording the step failed ({type(failure).__name__}: {failure})")
            warnings.warn(f"CUDA graphs: {self.reason}; training goes on without them",
                          GraphFallbackWarning, stacklevel=3)
        elif replaced:
            self._give_up(f"the step replaces arrays instead of updating them in place: {replaced[:3]}")
        else:
            self.graph, self._pool, self._key = graph, pool, key

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
    """gpucnn.loops.train_epoch's step on batches of ``batch`` images through a :class:`StepGraph`:
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
