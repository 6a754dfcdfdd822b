"""StandInArray: an array 'on the device', its numbers in a private numpy array.

NumPy may not touch it (``np.exp(x)``, ``np.asarray(x)`` raise), every attribute and
method is looked up on the real ``cupy.ndarray`` first, every operator runs as the
CuPy ufunc would (C-contiguous result, CuPy's result dtype), and every conversion to
a host value (``float``, ``int``, ``bool``, ``repr``, ``str``, ``format``, ``.item()``,
``.get()``) is counted as a device-to-host copy.
"""
from __future__ import annotations

import numpy as np

from .cupy_api import DeviceDisciplineError

# ufuncs that Python operators map to: a numpy scalar on the left of an operator
# (np.float32(2) * x) reaches __array_ufunc__ with one of these, and CuPy accepts it.
OPERATOR_UFUNCS = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
    "floordiv": np.floor_divide, "pow": np.power, "mod": np.remainder, "and": np.bitwise_and,
    "or": np.bitwise_or, "xor": np.bitwise_xor, "lshift": np.left_shift, "rshift": np.right_shift,
}
COMPARISON_UFUNCS = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                     "eq": np.equal, "ne": np.not_equal}
UNARY_UFUNCS = {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}
_SCALAR_OPERATOR_UFUNCS = set(OPERATOR_UFUNCS.values()) | set(COMPARISON_UFUNCS.values())


def c_order(a):
    """``a`` C-contiguous, as CuPy allocates every new output (0-d stays 0-d)."""
    if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
        return a.copy(order="C")
    return a


class Flags:
    """``cupy.ndarray.flags``: only the three flags CuPy has."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: np.ndarray):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n  OWNDATA : {self.owndata}"


class MemoryPointer:
    """``cupy.ndarray.data``: only its ``ptr``."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr


class StandInArray:
    """An array on the stand-in device. Supports the ``cupy.ndarray`` API gpucnn uses."""

    __slots__ = ("_a", "_dev")
    __hash__ = None

    def __init__(self, a: np.ndarray, device):
        self._a = a
        self._dev = device
        device.streams.track(a)  # a stream capture restores the buffers alive when it began

    # -- numpy must not touch device arrays ---------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise self._dev.discipline(
            "numpy.asarray", "a device array was converted to a NumPy array implicitly; "
            "use backend.to_numpy(a)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        others = [x for x in inputs if x is not self]
        if (method == "__call__" and ufunc in _SCALAR_OPERATOR_UFUNCS and not kwargs
                and all(isinstance(x, (np.generic, int, float, bool)) for x in others)):
            # a numpy scalar on the left of an operator (np.float32(2) * x): fine on CuPy
            return self._dev.ufunc(ufunc, inputs, {})
        raise self._dev.discipline(
            f"numpy.{ufunc.__name__}", f"numpy.{ufunc.__name__} was applied to a device array; "
            "use the array module of the array (xp = array_module(x))")

    def __array_function__(self, func, types, args, kwargs):
        raise self._dev.discipline(
            f"numpy.{func.__name__}", f"numpy.{func.__name__} was applied to a device array; "
            "use the array module of the array (xp = array_module(x))")

    # -- metadata: held on the host by CuPy too, reading it costs nothing ---------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: Flags(self._a))
    T = property(lambda self: StandInArray(self._a.T, self._dev))  # a view
    # cupy.ndarray.data.ptr: the first element's address. The stand-in's memory is its host
    # buffer, so a kernel twin (or a fake library) can follow a table of such addresses.
    data = property(lambda self: MemoryPointer(self._a.ctypes.data))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (StandInArray(row, self._dev) for row in self._a)

    # -- every other attribute: checked against cupy.ndarray ---------------------------------
    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ & co: numpy must not see the data
            raise AttributeError(name)
        return self._dev.array_attribute(self, name)

    # -- device -> host: each one is a copy (and a sync) -----------------------------------
    def __float__(self):
        return self._dev.download(self, float, "float()")

    def __int__(self):
        return self._dev.download(self, int, "int()")

    def __index__(self):
        return self._dev.download(self, lambda a: a.__index__(), "operator.index()")

    def __bool__(self):
        return self._dev.download(self, bool, "bool()")

    def __complex__(self):
        return self._dev.download(self, complex, "complex()")

    def __format__(self, spec):
        return self._dev.download(self, lambda a: format(a.item() if a.ndim == 0 else a, spec), "format()")

    def __repr__(self):
        return self._dev.download(self, lambda a: repr(a).replace("array(", "StandInArray(", 1), "repr()")

    def __str__(self):
        return self._dev.download(self, str, "str()")

    # -- indexing -------------------------------------------------------------------------
    def __getitem__(self, key):
        return self._dev.getitem(self, key)

    def __setitem__(self, key, value):
        self._dev.setitem(self, key, value)

    def __matmul__(self, other):
        return self._dev.matmul(self, other)

    def __rmatmul__(self, other):
        return self._dev.matmul(other, self)

    def __imatmul__(self, other):
        raise self._dev.conformance("cupy.ndarray.__imatmul__", "a @= b is not supported by CuPy")


def _binary(ufunc):
    def op(self, other):
        return self._dev.ufunc(ufunc, (self, other), {})
    return op


def _reflected(ufunc):
    def op(self, other):
        return self._dev.ufunc(ufunc, (other, self), {})
    return op


def _inplace(ufunc):
    def op(self, other):
        self._dev.ufunc(ufunc, (self, other), {"out": self})
        return self
    return op


def _unary(ufunc):
    def op(self):
        return self._dev.ufunc(ufunc, (self,), {})
    return op


for _name, _ufunc in OPERATOR_UFUNCS.items():
    setattr(StandInArray, f"__{_name}__", _binary(_ufunc))
    setattr(StandInArray, f"__r{_name}__", _reflected(_ufunc))
    setattr(StandInArray, f"__i{_name}__", _inplace(_ufunc))
for _name, _ufunc in COMPARISON_UFUNCS.items():
    setattr(StandInArray, f"__{_name}__", _binary(_ufunc))
for _name, _ufunc in UNARY_UFUNCS.items():
    setattr(StandInArray, f"__{_name}__", _unary(_ufunc))

__all__ = ["DeviceDisciplineError", "Flags", "MemoryPointer", "StandInArray", "c_order"]
