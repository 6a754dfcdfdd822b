"""StandInDevice: the stand-in's array module ``xp``, NumPy's arithmetic behind CuPy's API.

Every name is looked up on the real ``cupy`` module and every call's arguments bound
against CuPy's signature (tests/standin/cupy_api.py). The results follow what CuPy
does differently from NumPy: new arrays from ufuncs, reductions, matrix multiplies
and gathers are C-contiguous (unless written into ``out=``), integer index arrays
wrap around instead of raising, duplicate-index scatters land in another order than
NumPy's, and ``xp.random`` is a device random module with cupy.random's Generator API.
Transfers and synchronisations are counted (``counts``, with their gpucnn lines in
``sites``), and the work a GPU would do is added up in ``work`` (tests/standin/work.py).
``cuda`` holds streams and CUDA-graph capture: every operation that writes device memory is
also handed to ``streams.record``, which keeps it for replay while a stream captures
(tests/standin/graphs.py).
"""
from __future__ import annotations

import inspect
import types
from collections import Counter
from functools import partial

import cupy
import numpy as np

from . import work as kinds
from .array import StandInArray, c_order as _c_order
from .cupy_api import (CupyConformanceError, DeviceDisciplineError, NotModeledError, caller_location,
                       check_call, cupy_attribute, cupy_like_strides, cupy_reduction_dtype,
                       cupy_ufunc_result_dtypes, operand_type, violation)
from .cublas import StandInCublas
from .graphs import UNCAPTURABLE, DeviceStreams, StandInCuda
from .indexing import Indexing
from .memory import DeviceMemory
from .modules import DeviceRandom, Submodule
from .work import Work, gemm_flops, pad_launches

COUNTERS = ("to_device", "to_host", "syncs", "duplicate_scatters")
DOWNLOAD_METHODS = frozenset({"get", "item", "tolist", "tobytes"})
LIKE_FUNCTIONS = frozenset({"empty_like", "zeros_like", "ones_like", "full_like"})


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


class StandInDevice(Indexing):
    """The stand-in's array module (``xp``)."""

    __name__ = "gpucnn_tests_standin_cupy"
    ndarray = StandInArray

    def __init__(self):
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.sites: Counter = Counter()  # (event, gpucnn line, what) -> count
        self.work = Work()
        self.memory = DeviceMemory()  # bytes its arrays hold (tests/standin/memory.py)
        self.streams = DeviceStreams(self)
        self.cuda = StandInCuda(self.streams)
        self._libcublas = StandInCublas(self)  # the cuBLAS handle and ctypes functions (tests/standin/cublas.py)
        self.random = DeviceRandom(self)
        self.linalg = Submodule(self, "cupy.linalg", cupy.linalg, np.linalg)
        self.fft = Submodule(self, "cupy.fft", cupy.fft, np.fft)
        self.lib = types.SimpleNamespace(stride_tricks=Submodule(
            self, "cupy.lib.stride_tricks", cupy.lib.stride_tricks, np.lib.stride_tricks))
        self._functions: dict = {}

    # -- counters -------------------------------------------------------------------------
    @property
    def transfers(self) -> dict:
        return {"to_device": self.counts["to_device"], "to_host": self.counts["to_host"]}

    def reset_transfers(self) -> None:
        """Zero the transfer, sync and scatter counters (not ``work``)."""
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.sites.clear()

    def event(self, name: str, what: str) -> None:
        self.streams.refuse(what, UNCAPTURABLE[name])
        self.counts[name] += 1
        self.sites[(name, caller_location(), what)] += 1

    def download(self, arr: StandInArray, convert, what: str):
        """A device->host copy: CuPy waits for the device, then copies."""
        self.event("to_host", what)
        self.event("syncs", what)
        return convert(arr._a)

    def synchronize(self) -> None:
        self.event("syncs", "synchronize()")

    def discipline(self, call, message):
        return violation(DeviceDisciplineError, call, message)

    def conformance(self, call, message):
        return violation(CupyConformanceError, call, message)

    # -- wrapping -------------------------------------------------------------------------
    def wrap(self, value):
        if isinstance(value, (np.ndarray, np.generic)):
            return StandInArray(np.asarray(value), self)
        if isinstance(value, tuple):
            return tuple(self.wrap(v) for v in value)
        if isinstance(value, list):
            return [self.wrap(v) for v in value]
        return value

    def unwrap(self, value):
        if isinstance(value, StandInArray):
            if value._dev is not self:
                raise self.discipline("mixed devices", "arrays of two different devices were mixed")
            return value._a
        if isinstance(value, np.ndarray):
            raise self.discipline("host array", f"a host numpy array (shape {value.shape}) was mixed "
                                  "with device arrays; upload it once with backend.asarray(a)")
        if isinstance(value, tuple):
            return tuple(self.unwrap(v) for v in value)
        if isinstance(value, list):
            return [self.unwrap(v) for v in value]
        if isinstance(value, dict):
            return {k: self.unwrap(v) for k, v in value.items()}
        return value

    @staticmethod
    def arrays_in(*values) -> list[np.ndarray]:
        found = []
        for v in values:
            if isinstance(v, StandInArray):
                found.append(v._a)
            elif isinstance(v, (tuple, list)):
                found += StandInDevice.arrays_in(*v)
            elif isinstance(v, dict):
                found += StandInDevice.arrays_in(*v.values())
        return found

    # -- host <-> device --------------------------------------------------------------------
    def asarray(self, a, dtype=None, order=None, **kwargs):
        check_call("cupy.asarray", cupy.asarray, (a,), dict(dtype=dtype, order=order, **kwargs))
        if isinstance(a, StandInArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        self.event("to_device", "asarray")
        return StandInArray(np.array(self._host_only(a), dtype=dtype, order=order or "K"), self)

    def array(self, a, dtype=None, copy=True, order="K", **kwargs):
        check_call("cupy.array", cupy.array, (a,), dict(dtype=dtype, copy=copy, order=order, **kwargs))
        if isinstance(a, StandInArray):
            return a.astype(a.dtype if dtype is None else dtype, order=order, copy=copy)
        self.event("to_device", "array")
        return StandInArray(np.array(self._host_only(a), dtype=dtype, order=order), self)

    def _host_only(self, a):
        if isinstance(a, (list, tuple)) and any(isinstance(v, StandInArray) for v in a):
            raise NotModeledError("cupy.asarray of a list holding device arrays: use xp.stack")
        return a

    def asnumpy(self, a, *args, **kwargs):
        check_call("cupy.asnumpy", cupy.asnumpy, (a, *args), kwargs)
        if not isinstance(a, StandInArray):
            return np.asarray(a)
        return self.download(a, lambda host: host.copy(order="C"), "asnumpy()")

    def get_array_module(self, *args):
        return self if any(isinstance(a, StandInArray) for a in args) else np

    # -- every other name of cupy ------------------------------------------------------------
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        function = self._functions.get(name)
        if function is not None:
            return function
        cupy_attr = cupy_attribute(cupy, "cupy", name)
        if inspect.ismodule(cupy_attr):
            raise NotModeledError(f"the stand-in does not model cupy.{name}; model it before gpucnn uses it")
        if isinstance(cupy_attr, type) or not callable(cupy_attr):
            return cupy_attr  # dtypes, finfo, constants: the very objects CuPy gives
        numpy_function = getattr(np, name, None)
        if numpy_function is None:
            raise NotModeledError(f"the stand-in does not model cupy.{name}")

        if isinstance(numpy_function, np.ufunc) and isinstance(cupy_attr, cupy.ufunc):
            def function(*args, **kwargs):
                return self.ufunc(numpy_function, args, kwargs)
        else:
            def function(*args, **kwargs):
                check_call(f"cupy.{name}", cupy_attr, args, kwargs)
                return self.call(name, numpy_function, args, kwargs)
        function.__name__ = name
        self._functions[name] = function
        return function

    def call(self, name, numpy_function, args, kwargs, inputs=()):
        """Run one function or method on the private arrays, as CuPy would (and record it
        while a stream captures, unless it only allocates)."""
        if name in ("matmul", "dot") and len(args) >= 2:
            return self.matmul(args[0], args[1], kwargs.get("out"), call=f"cupy.{name}")
        arrays = list(inputs) + self.arrays_in(args, kwargs)
        np_args, np_kwargs = self.unwrap(args), self.unwrap(kwargs)
        if name == "take_along_axis":
            np_args = self._wrap_take_along_axis(np_args, np_kwargs)
        if name in kinds.SYNCING:
            self.event("syncs", f"{name}()")
        result = numpy_function(*np_args, **np_kwargs)
        if name in LIKE_FUNCTIONS:
            result = self._like_layout(result, np_args, np_kwargs)
        replay = partial(self.call, name, numpy_function, args, kwargs, inputs)
        out = kwargs.get("out")
        if out is not None:
            self._account(name, arrays, [out._a], np_args)
            return self.streams.record(replay, out)
        results = [r for r in _as_tuple(result) if isinstance(r, (np.ndarray, np.generic))]
        fresh = [r for r in results if not any(np.may_share_memory(r, a) for a in arrays)]
        if name not in kinds.ORDER_AWARE:  # CuPy allocates every new output C-contiguous
            relaid = [_c_order(r) if any(r is f for f in fresh) else r for r in _as_tuple(result)]
            result = tuple(relaid) if isinstance(result, tuple) else relaid[0]
        if name in kinds.REDUCTIONS and kwargs.get("dtype") is None and arrays and results:
            self._check_reduction_dtype(name, arrays[0].dtype, results[0].dtype)
        if name in kinds.ALLOCATIONS:  # nothing to replay: a graph's buffers are its capture's
            return self.wrap(result)
        if fresh or name in kinds.FILLS:
            self._account(name, arrays, fresh, np_args)
        return self.streams.record(replay, self.wrap(result))

    def _account(self, name, inputs, outputs, np_args):
        if name in kinds.ALLOCATIONS:
            return
        read = sum(a.nbytes for a in inputs)
        written = sum(np.asarray(o).nbytes for o in outputs)
        size_out = sum(np.asarray(o).size for o in outputs)
        if name in kinds.FILLS:
            self.work.add("fill", written=written)
        elif name in kinds.REDUCTIONS:
            self.work.add("reduction", read, written, flops=sum(a.size for a in inputs))
        elif name in kinds.GEMMS:
            self.work.add("gemm", read, written, gemm_flops(inputs[0].shape, inputs[-1].shape, size_out, name))
        elif name in kinds.ELEMENTWISE_FUNCTIONS:
            self.work.add("elementwise", read, written, flops=size_out)
        elif name == "pad":
            self.work.add("copy", read, written, launches=pad_launches(np_args[1], inputs[0].ndim))
        else:
            self.work.add("copy", read, written)

    @staticmethod
    def _like_layout(result, np_args, np_kwargs):
        """Give an ``*_like`` result the strides CuPy's rule gives it (NumPy's, in every
        case tests/test_standin_conformance.py tries)."""
        order = np_kwargs.get("order", "K")
        strides = cupy_like_strides(np_args[0], result.dtype, order, np_kwargs.get("shape"))
        if strides == result.strides:
            return result
        base = np.empty(result.size, dtype=result.dtype)
        relaid = np.lib.stride_tricks.as_strided(base, result.shape, strides)
        relaid[...] = result
        return relaid

    def _wrap_take_along_axis(self, np_args, np_kwargs):
        a, indices, *rest = np_args
        axis = rest[0] if rest else np_kwargs.get("axis")
        if axis is not None and indices.dtype.kind in "iu" and a.shape[axis]:
            indices = np.mod(indices, a.shape[axis])  # CuPy wraps out-of-range indices around
        return (a, indices, *rest)

    # -- ufuncs and operators ---------------------------------------------------------------
    def ufunc(self, numpy_ufunc, args, kwargs):
        """A CuPy ufunc: CuPy's keywords and dtypes, and a C-contiguous result unless out=
        (recorded while a stream captures)."""
        call = f"cupy.{numpy_ufunc.__name__}"
        cupy_ufunc = cupy_attribute(cupy, "cupy", numpy_ufunc.__name__)
        check_call(call, cupy_ufunc, tuple(args), kwargs)
        nin = numpy_ufunc.nin
        out = kwargs.get("out", args[nin] if len(args) > nin else None)
        result = numpy_ufunc(*self.unwrap(tuple(args)), **self.unwrap(kwargs))
        inputs = self.arrays_in(tuple(args[:nin]))
        if out is None and kwargs.get("dtype") is None:
            expected = cupy_ufunc_result_dtypes(cupy_ufunc, [operand_type(v) for v in args[:nin]])
            got = tuple(np.dtype(r.dtype) for r in _as_tuple(result))
            if expected != got:
                shown = ", ".join(str(operand_type(v)[0]) + (" (Python scalar)" if operand_type(v)[1] else "")
                                  for v in args[:nin])
                raise self.conformance(call, f"{call} on ({shown}) gives {got} in NumPy but "
                                       f"{expected} in CuPy {cupy.__version__}")
        if out is not None:
            written = self.arrays_in(out)
            self.work.add("elementwise", sum(a.nbytes for a in inputs), sum(a.nbytes for a in written),
                          flops=sum(a.size for a in written))
            return self.streams.record(partial(self.ufunc, numpy_ufunc, args, kwargs), out)
        result = tuple(_c_order(r) for r in result) if isinstance(result, tuple) else _c_order(result)
        outputs = [np.asarray(r) for r in _as_tuple(result)]
        self.work.add("elementwise", sum(a.nbytes for a in inputs), sum(o.nbytes for o in outputs),
                      flops=sum(o.size for o in outputs))
        return self.streams.record(partial(self.ufunc, numpy_ufunc, args, kwargs), self.wrap(result))

    def matmul(self, a, b, out=None, call="cupy.matmul"):
        # CuPy's cuBLAS binding: refused during a capture, from gpucnn.backends.kernels.gemm's lines as from
        # any other (gemm's ctypes calls go to self._libcublas), else the handle takes the current stream
        self._libcublas.cupy_call(call)
        a_np, b_np = self.unwrap(a), self.unwrap(b)
        if not isinstance(a, StandInArray) or not isinstance(b, StandInArray):
            raise self.discipline(call, f"{call} needs two device arrays")
        result = np.matmul(a_np, b_np, out=None if out is None else out._a)
        flops = gemm_flops(a_np.shape, b_np.shape, result.size, "matmul")
        self.work.add("gemm", a_np.nbytes + b_np.nbytes, result.nbytes, flops)
        return self.streams.record(partial(self.matmul, a, b, out, call),
                                   out if out is not None else self.wrap(_c_order(result)))

    def _check_reduction_dtype(self, name, in_dtype, got):
        expected = cupy_reduction_dtype(name, in_dtype)
        if expected is not None and expected != got:
            raise self.conformance(f"cupy.{name}", f"cupy.{name} of {in_dtype} gives {expected} in CuPy, "
                                   f"{got} in NumPy")

    # -- array attributes and methods ------------------------------------------------------
    def array_attribute(self, arr: StandInArray, name: str):
        cupy_attr = cupy_attribute(cupy.ndarray, "cupy.ndarray", name)
        if name in ("data", "device", "base"):
            raise NotModeledError(f"the stand-in does not model cupy.ndarray.{name}")
        if not callable(cupy_attr):  # a property of cupy.ndarray: real, imag, mT
            return self.wrap(getattr(arr._a, name))
        call = f"cupy.ndarray.{name}"

        def method(*args, **kwargs):
            check_call(call, cupy_attr, args, kwargs)
            if name in DOWNLOAD_METHODS:
                if name == "get":
                    return self.download(arr, lambda host: host.copy(order="C"), ".get()")
                return self.download(arr, lambda host: getattr(host, name)(*args, **kwargs), f".{name}()")
            if name == "fill":
                arr._a.fill(self.unwrap(args[0]) if args else kwargs["value"])
                self.work.add("fill", written=arr.nbytes)
                return self.streams.record(partial(method, *args, **kwargs))
            if name in ("matmul", "dot"):
                return self.matmul(arr, args[0], kwargs.get("out"), call=call)
            return self.call(name, getattr(arr._a, name), args, kwargs, inputs=[arr._a])
        method.__name__ = name
        return method
