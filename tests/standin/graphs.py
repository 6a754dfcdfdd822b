"""``xp.cuda`` of the stand-in: streams, CUDA-graph capture and replay, memory pools.

gpucnn captures a training step into a CUDA graph through ``xp.cuda.Stream``,
``get_current_stream``, ``MemoryPool``, ``using_allocator`` and the graph that
``stream.end_capture()`` returns; the stand-in models these, each name and call checked
against the real ``cupy.cuda`` (any other name of ``xp.cuda`` raises NotModeledError), with
what a GPU does with them:

* capture: between ``begin_capture()`` and ``end_capture()`` a GPU runs nothing, it records.
  The stand-in runs every operation at once anyway (the Python code after it needs its
  shapes) and records it as a replayable entry; at ``end_capture()`` every buffer that
  existed at ``begin_capture()`` gets its contents of that moment back, so the capture has
  changed nothing there, and every buffer made during the capture holds what a GPU leaves in
  memory nothing has written yet: the stand-in puts NaN there (integers: their largest value;
  booleans: True) until a launch writes it, so code that reads one before shows.
* replay: ``graph.launch()`` runs the entries again, in order, on the same array objects:
  each reads its inputs' contents at launch time and writes the same buffers (a fresh
  result is copied into the array the capture returned, so every view of it sees the new
  numbers), with the Python scalars of the capture baked in. A launch counts as one launch
  ("graph launch") in ``device.work`` and its operations count nothing.
* refused while a stream captures (a CupyConformanceError finding): downloads, uploads and
  every synchronisation (``synchronize()``, boolean masks, ``nonzero``), ``xp.random``
  draws, CuPy's cuBLAS calls (``xp.matmul``, ``xp.dot``: tests/standin/cublas.py), a graph
  launch, a second capture, and ``begin_capture()`` on a stream that is not the current one;
  work issued on another stream then is a NotModeledError finding.
* memory pools: NumPy allocates (a MemoryPool holds nothing and ``using_allocator`` only
  checks its argument, so freeing memory a graph still uses goes unnoticed: a graph keeps
  its arrays alive here), but each device lists the pools that would still cache blocks on a
  GPU (``streams.holding_pools``): one handed to ``using_allocator``, until its
  ``free_all_blocks()``. CuPy 14.2 never frees a dropped pool's cached blocks
  (cupy/cuda/memory.pyx: SingleDeviceMemoryPool has no ``__dealloc__``, and an ``_Arena``'s
  index holds each free chunk with ``Py_INCREF``), so the list keeps dropped pools too.

Not modelled: ordering between streams (everything runs in issue order; events order
nothing), capture modes, the blocks a pool caches for arrays still alive when it is emptied,
and CuPy's per-thread current stream (one per device here: gpucnn issues device work from
one thread).
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import weakref

import cupy
import numpy as np

from .array import StandInArray
from .cupy_api import NotModeledError, check_call, cupy_attribute, signature_of, violation
from .work import Work

# why each counted event cannot happen inside a capture (StandInDevice.event's counters)
UNCAPTURABLE = {
    "to_device": "a host->device upload is a synchronous copy, which CUDA refuses in a captured "
                 "stream; upload before begin_capture() into a buffer the graph reads",
    "to_host": "a device->host copy waits for the stream, which runs nothing while it captures; "
               "read results after graph.launch()",
    "syncs": "it waits for the device, which runs nothing while a stream captures "
             "(cudaErrorStreamCaptureUnsupported)",
}
CUPY_CUBLAS = ("CuPy's cuBLAS binding raises 'calling cuBLAS API during stream capture is currently "
               "unsupported' (CuPy 14); multiply with gpucnn.backends.kernels.gemm.matmul inside "
               "gemm.capture_safe(), which calls cuBLAS through ctypes")
RANDOM_DRAW = ("a graph replays the draw with the arguments baked in at capture, and what it draws "
               "then depends on the generator's device state, which the stand-in does not model; "
               "draw outside the captured work")


class ModelsCupy:
    """Stands in for a CuPy object (``_cupy``, named ``_cupy_name``): a name it does not model
    fails as on CuPy (CupyAttributeError) when CuPy lacks it, else with NotModeledError."""

    _cupy: object
    _cupy_name: str

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cupy_attribute(self._cupy, self._cupy_name, name)
        raise NotModeledError(f"the stand-in does not model {self._cupy_name}.{name}; model it in "
                              "tests/standin/graphs.py before gpucnn uses it")

    def _bind(self, name: str, args: tuple, kwargs: dict) -> dict:
        """Check a call of CuPy's ``name`` (a method, or a function or class of cupy.cuda)
        against its signature; the arguments given, by parameter name."""
        cupy_object = getattr(self._cupy, name)
        check_call(f"{self._cupy_name}.{name}", cupy_object, args, kwargs)
        return dict(signature_of(cupy_object).bind(*args, **kwargs).arguments)


class Capture:
    """One capture in progress: its stream, its entries so far, and every buffer alive at its
    start with a copy of its contents then."""

    def __init__(self, stream: StandInStream, buffers):
        self.stream = stream
        self.entries: list[tuple] = []  # (replay, the device arrays the capture returned)
        self.existing = list(buffers)  # held: their ids and memory stay theirs during the capture
        self.saved = [(b, b.copy()) for b in buffers if b.flags.writeable]

    def restore(self, buffers) -> None:
        """What a GPU shows after a capture: the buffers as they were before it, and those made
        during it (``buffers`` holds every live one) unset: NaN, an integer's largest value, True."""
        for buffer, contents in self.saved:
            if buffer.flags.writeable:  # else made read-only since (cuBLAS's workspace): unchanged
                buffer[...] = contents
        spans = sorted((b.ctypes.data, b.ctypes.data + b.nbytes) for b in self.existing)
        starts, reach = [s for s, _ in spans], list(itertools.accumulate((e for _, e in spans), max))
        before = {id(b) for b in self.existing}
        for buffer in buffers:
            start, end = buffer.ctypes.data, buffer.ctypes.data + buffer.nbytes
            i = bisect.bisect_left(starts, end)  # spans that start before this buffer ends: [0, i)
            if id(buffer) in before or not buffer.flags.writeable or (i and reach[i - 1] > start):
                continue  # existed, or a view of memory that existed (raw addresses)
            kind = buffer.dtype.kind
            if kind in "fc":
                buffer[...] = np.nan
            elif kind in "iu":
                buffer[...] = np.iinfo(buffer.dtype).max
            elif kind == "b":
                buffer[...] = True


class DeviceStreams:
    """A device's streams: the current one, the capture in progress, the buffers a capture
    must restore. StandInDevice calls :meth:`record` at each operation, :meth:`refuse` where
    an operation cannot be captured, and StandInArray calls :meth:`track` on each array."""

    def __init__(self, device):
        self.device = device
        self._pointers = itertools.count(0x7F0000000000, 0x100)  # distinct, nonzero: stream ptrs
        self.null = StandInStream(self, 0)
        self._entered: list[StandInStream] = []  # the ``with stream:`` blocks, innermost last
        self._buffers = weakref.WeakValueDictionary()  # id -> root numpy array of device arrays
        self._capture: Capture | None = None
        self.holding_pools: list[StandInMemoryPool] = []  # pools that would cache blocks on a GPU

    # -- called by the stand-in at every array and operation ------------------------------
    def track(self, a: np.ndarray) -> bool:
        """Remember the buffer under device array ``a`` (weakly) for a capture to restore;
        True when it is a buffer not seen before."""
        while isinstance(a.base, np.ndarray):
            a = a.base
        if id(a) in self._buffers:
            return False
        self._buffers[id(a)] = a
        self.device.memory.allocated(a)
        return True

    def record(self, replay, result=None):
        """``result``; while a stream captures, ``replay`` (which re-runs the operation that
        gave ``result``, on the same arguments) becomes an entry of the graph."""
        capture = self._capture
        if capture is not None:
            if self.current() is not capture.stream:
                raise violation(NotModeledError, "cupy.cuda.Stream", f"device work issued on {self.current()} "
                                f"while {capture.stream} captures: the stand-in does not model work on "
                                "another stream during a capture; issue it inside `with stream:`")
            capture.entries.append((replay, result))
        return result

    def buffer_at(self, ptr: int, nbytes: int):
        """(root buffer, byte offset) of the live device buffer that holds [ptr, ptr + nbytes),
        None when none does (what a raw address given to cuBLAS must point into)."""
        for root in list(self._buffers.values()):
            start = root.ctypes.data
            if start <= ptr and ptr + nbytes <= start + root.nbytes:
                return root, ptr - start
        return None

    @property
    def recording(self) -> bool:
        """Whether a stream captures now."""
        return self._capture is not None

    def refuse(self, call: str, why: str) -> None:
        """Raise (and record) a conformance error when a stream captures: ``call`` cannot be."""
        if self._capture is not None:
            raise self.device.conformance(call, f"{call} is not allowed during CUDA stream capture: {why}")

    # -- streams --------------------------------------------------------------------------
    def new_stream(self) -> StandInStream:
        return StandInStream(self, next(self._pointers))

    def current(self) -> StandInStream:
        return self._entered[-1] if self._entered else self.null

    def enter(self, stream: StandInStream) -> None:
        self._entered.append(stream)

    def exit(self) -> None:
        self._entered.pop()

    def capturing(self, stream: StandInStream) -> bool:
        return self._capture is not None and self._capture.stream is stream

    # -- capture and replay ---------------------------------------------------------------
    def begin(self, stream: StandInStream) -> None:
        call = "cupy.cuda.Stream.begin_capture"
        if stream.ptr == 0:
            raise self.device.conformance(call, "the null stream cannot capture (CUDA refuses the legacy "
                                          "stream); capture on xp.cuda.Stream(non_blocking=True)")
        if self._capture is not None:
            raise self.device.conformance(call, f"{self._capture.stream} is capturing already: end that "
                                          "capture first (one capture at a time)")
        if self.current() is not stream:
            raise self.device.conformance(call, f"begin_capture() on {stream}, which is not the current "
                                          f"stream ({self.current()}): the work would run on the current "
                                          "stream, uncaptured; begin it inside `with stream:`")
        self._capture = Capture(stream, list(self._buffers.values()))

    def end(self, stream: StandInStream) -> StandInGraph:
        capture = self._capture
        if capture is None or capture.stream is not stream:
            raise self.device.conformance("cupy.cuda.Stream.end_capture", f"end_capture() on {stream}, "
                                          "which is not capturing")
        self._capture = None
        capture.restore(list(self._buffers.values()))
        return StandInGraph(self, capture.entries)

    def replay(self, entries) -> None:
        """Run a graph's entries in order; ``device.work`` counts one launch for them all."""
        device = self.device
        if self._capture is not None:
            raise device.conformance("cupy.cuda.Graph.launch", "launching a graph is not allowed during "
                                     f"CUDA stream capture ({self._capture.stream} is capturing)")
        counted, device.work = device.work, Work()
        try:
            for replay, captured in entries:
                _refresh(captured, replay())
        finally:
            device.work = counted
        counted.add("graph launch")


def _device_arrays(value) -> list:
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, StandInArray)]
    return [value] if isinstance(value, StandInArray) else []


def _refresh(captured, replayed) -> None:
    """Copy the numbers of a replayed operation's fresh results into the arrays its capture
    returned (results that are views of its inputs, or its out=, are those already)."""
    for old, new in zip(_device_arrays(captured), _device_arrays(replayed)):
        if not np.may_share_memory(old._a, new._a):
            old._a[...] = new._a


class StandInStream(ModelsCupy):
    """A ``cupy.cuda.Stream``: ``with stream:`` makes it current; it captures graphs."""

    _cupy, _cupy_name = cupy.cuda.Stream, "cupy.cuda.Stream"

    def __init__(self, streams: DeviceStreams, ptr: int):
        self._streams, self._ptr = streams, ptr

    ptr = property(lambda self: self._ptr)

    def __repr__(self):
        return "<StandInStream null>" if self._ptr == 0 else f"<StandInStream {self._ptr:#x}>"

    def __enter__(self):
        self._streams.enter(self)
        return self

    def __exit__(self, *exc_info):
        self._streams.exit()

    def begin_capture(self, *args, **kwargs) -> None:
        if self._bind("begin_capture", args, kwargs).get("mode") is not None:
            raise NotModeledError("the stand-in models the default capture mode only (relaxed)")
        self._streams.begin(self)

    def end_capture(self, *args, **kwargs) -> StandInGraph:
        self._bind("end_capture", args, kwargs)
        return self._streams.end(self)

    def is_capturing(self, *args, **kwargs) -> bool:
        self._bind("is_capturing", args, kwargs)
        return self._streams.capturing(self)

    def record(self, *args, **kwargs) -> StandInEvent:
        event = self._bind("record", args, kwargs).get("event")
        if event is not None and not isinstance(event, StandInEvent):
            raise self._streams.device.conformance("cupy.cuda.Stream.record", "record(event) needs a "
                                                   f"cupy.cuda.Event, got {type(event).__name__}")
        return event or StandInEvent()

    def wait_event(self, *args, **kwargs) -> None:
        event = self._bind("wait_event", args, kwargs)["event"]
        if not isinstance(event, StandInEvent):
            raise self._streams.device.conformance("cupy.cuda.Stream.wait_event", "wait_event(event) needs "
                                                   f"a cupy.cuda.Event, got {type(event).__name__}")

    def synchronize(self, *args, **kwargs) -> None:
        self._bind("synchronize", args, kwargs)
        self._streams.device.event("syncs", "cupy.cuda.Stream.synchronize()")


class StandInEvent(ModelsCupy):
    """A ``cupy.cuda.Event`` that ``stream.record()`` returned (it orders nothing here)."""

    _cupy, _cupy_name = cupy.cuda.Event, "cupy.cuda.Event"


class StandInGraph(ModelsCupy):
    """A ``cupy.cuda.Graph``: the entries one capture recorded."""

    _cupy, _cupy_name = cupy.cuda.Graph, "cupy.cuda.Graph"

    def __init__(self, streams: DeviceStreams, entries: list):
        self._streams, self._entries = streams, entries

    def launch(self, *args, **kwargs) -> None:
        stream = self._bind("launch", args, kwargs).get("stream")
        if stream is not None and not isinstance(stream, StandInStream):
            raise self._streams.device.conformance("cupy.cuda.Graph.launch", "launch(stream) needs a "
                                                   f"cupy.cuda.Stream, got {type(stream).__name__}")
        self._streams.replay(self._entries)


class StandInMemoryPool(ModelsCupy):
    """A ``cupy.cuda.MemoryPool`` that holds nothing (the stand-in's memory is NumPy's); it
    counts its ``free_all_blocks()`` calls (``frees``) and leaves the device's
    ``holding_pools`` when emptied."""

    _cupy, _cupy_name = cupy.cuda.MemoryPool, "cupy.cuda.MemoryPool"

    def __init__(self, streams: DeviceStreams):
        self._streams, self.frees = streams, 0

    def malloc(self, *args, **kwargs):
        self._bind("malloc", args, kwargs)
        raise NotModeledError("the stand-in allocates with NumPy, not from a memory pool: hand pool.malloc "
                              "to xp.cuda.using_allocator instead of calling it")

    def used_bytes(self, *args, **kwargs) -> int:
        self._bind("used_bytes", args, kwargs)
        return 0

    def total_bytes(self, *args, **kwargs) -> int:
        self._bind("total_bytes", args, kwargs)
        return 0

    def free_all_blocks(self, *args, **kwargs) -> None:
        self._bind("free_all_blocks", args, kwargs)
        self.frees += 1
        holding = self._streams.holding_pools
        if self in holding:
            holding.remove(self)


class StandInCuda(ModelsCupy):
    """``xp.cuda``: ``Stream``, ``get_current_stream``, ``MemoryPool``, ``using_allocator``."""

    _cupy, _cupy_name = cupy.cuda, "cupy.cuda"

    def __init__(self, streams: DeviceStreams):
        self._streams = streams

    def Stream(self, *args, **kwargs) -> StandInStream:  # noqa: N802 (CuPy's name)
        options = self._bind("Stream", args, kwargs)
        if options.get("ptds"):
            raise NotModeledError("the stand-in does not model per-thread default streams (ptds=True)")
        return self._streams.null if options.get("null") else self._streams.new_stream()

    def get_current_stream(self, *args, **kwargs) -> StandInStream:
        self._bind("get_current_stream", args, kwargs)
        return self._streams.current()

    def MemoryPool(self, *args, **kwargs) -> StandInMemoryPool:  # noqa: N802 (CuPy's name)
        self._bind("MemoryPool", args, kwargs)
        return StandInMemoryPool(self._streams)

    def using_allocator(self, *args, **kwargs):
        allocator = self._bind("using_allocator", args, kwargs).get("allocator")
        if allocator is None:
            raise NotModeledError("the stand-in does not model using_allocator(None) (CuPy's raw allocator)")
        if not callable(allocator):
            raise self._streams.device.conformance("cupy.cuda.using_allocator", "using_allocator(allocator) "
                                                   f"needs a callable such as pool.malloc, got "
                                                   f"{type(allocator).__name__}")
        pool = getattr(allocator, "__self__", None)
        if isinstance(pool, StandInMemoryPool) and pool not in self._streams.holding_pools:
            self._streams.holding_pools.append(pool)  # it caches what the block allocates, freed or not
        return contextlib.nullcontext()


__all__ = ["DeviceStreams", "StandInCuda", "StandInEvent", "StandInGraph", "StandInMemoryPool",
           "StandInStream", "RANDOM_DRAW", "UNCAPTURABLE"]
