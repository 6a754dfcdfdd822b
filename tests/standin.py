"""A test-only stand-in for the CuPy GPU backend that enforces CuPy's rules on the CPU.

CI has no GPU, so device-discipline bugs (a numpy function applied to a device
array, host and device arrays mixed in arithmetic, a numpy index array used on a
device array, a hidden device->host copy in the batch loop) would only show up on
a user's GPU. Arrays of this stand-in hold their numbers in a private numpy
array and:

* raise TypeError when a numpy-module function or ufunc is applied to them
  (``np.pad(x)``, ``np.exp(x)``, ``np.asarray(x)``): code must use ``xp``;
* raise TypeError when mixed with host numpy arrays in arithmetic, assignment
  or indexing, as CuPy does;
* count every host<->device transfer: uploads (``asarray``) and downloads
  (``asnumpy``, ``.get()``, ``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``,
  formatting), so tests can bound the transfers of a training epoch.

Arithmetic with Python or numpy *scalars* is allowed, as on CuPy.
"""
from __future__ import annotations

import numpy as np

from gpucnn.backend import Backend, register_array_type

# ufuncs that Python operators map to: a numpy scalar on the left of an operator
# (np.float32(2) * x) reaches __array_ufunc__ with one of these, and CuPy accepts it.
_OPERATOR_UFUNCS = {
    np.add, np.subtract, np.multiply, np.true_divide, np.floor_divide, np.power,
    np.remainder, np.matmul, np.greater, np.greater_equal, np.less, np.less_equal,
    np.equal, np.not_equal, np.bitwise_and, np.bitwise_or, np.bitwise_xor,
}

# calls on the host that copy device -> host (CuPy synchronises and copies for each)
_DOWNLOAD_METHODS = {"item", "tolist", "get", "tobytes"}


class DeviceDisciplineError(TypeError):
    """What the stand-in raises: a TypeError, as CuPy raises in the same cases."""


class StandInArray:
    """An array 'on the device'. Supports the ndarray API that gpucnn uses."""

    __slots__ = ("_a", "_dev")
    __hash__ = None

    def __init__(self, a: np.ndarray, device: "StandInDevice"):
        self._a = a
        self._dev = device

    # -- numpy must not touch device arrays --------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise DeviceDisciplineError(
            "Implicit conversion of a device array to a NumPy array is not allowed; "
            "use backend.to_numpy(a)"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        others = [x for x in inputs if x is not self]
        if (method == "__call__" and ufunc in _OPERATOR_UFUNCS and not kwargs
                and all(isinstance(x, (np.generic, int, float, bool)) for x in others)):
            # a numpy scalar on the left of an operator: allowed, as on CuPy
            return self._dev.wrap(ufunc(*(self._dev.unwrap(x) for x in inputs)))
        raise DeviceDisciplineError(
            f"numpy.{ufunc.__name__} was applied to a device array; "
            "use the array module of the array (xp = array_module(x))"
        )

    def __array_function__(self, func, types, args, kwargs):
        raise DeviceDisciplineError(
            f"numpy.{func.__name__} was applied to a device array; "
            "use the array module of the array (xp = array_module(x))"
        )

    # -- attributes and methods: run on the private array, results stay on the device ---
    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ & co: numpy must not see the data
            raise AttributeError(name)
        attr = getattr(self._a, name)
        dev = self._dev
        if not callable(attr):
            return dev.wrap(attr)
        if name in _DOWNLOAD_METHODS:
            dev.transfers["to_host"] += 1

            def download(*args, **kwargs):
                return attr(*args, **kwargs)
            return download

        def method(*args, **kwargs):
            return dev.wrap(attr(*dev.unwrap(args), **dev.unwrap(kwargs)))
        return method

    @property
    def shape(self):
        return self._a.shape

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self._dev.wrap(row) for row in self._a)

    def __repr__(self):
        return f"StandInArray({self._a!r})"

    # -- device -> host conversions: each one is a transfer ------------------------------
    def _download_scalar(self, convert):
        self._dev.transfers["to_host"] += 1
        return convert(self._a)

    def __float__(self):
        return self._download_scalar(float)

    def __int__(self):
        return self._download_scalar(int)

    def __index__(self):
        return self._download_scalar(lambda a: a.__index__())

    def __bool__(self):
        return self._download_scalar(bool)

    def __format__(self, spec):
        return self._download_scalar(lambda a: format(a.item() if a.ndim == 0 else a, spec))

    # -- indexing -----------------------------------------------------------------------
    def __getitem__(self, key):
        return self._dev.wrap(self._a[self._dev.unwrap_index(key)])

    def __setitem__(self, key, value):
        self._a[self._dev.unwrap_index(key)] = self._dev.unwrap(value)


def _binary(name):
    def op(self, other):
        result = getattr(self._a, name)(self._dev.unwrap(other))
        if result is NotImplemented:
            return NotImplemented
        return self._dev.wrap(result)
    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        getattr(self._a, name)(self._dev.unwrap(other))
        return self
    op.__name__ = name
    return op


def _unary(name):
    def op(self):
        return self._dev.wrap(getattr(self._a, name)())
    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "pow", "mod", "matmul",
              "and", "or", "xor"):
    setattr(StandInArray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(StandInArray, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(StandInArray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(StandInArray, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(StandInArray, f"__{_name}__", _unary(f"__{_name}__"))


class StandInDevice:
    """The stand-in's array module (``xp``): numpy's functions behind CuPy's rules."""

    __name__ = "gpucnn_tests_standin_cupy"
    ndarray = StandInArray

    def __init__(self):
        self.transfers = {"to_device": 0, "to_host": 0}

    # -- wrapping -------------------------------------------------------------------
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
                raise DeviceDisciplineError("arrays of two different devices were mixed")
            return value._a
        if isinstance(value, np.ndarray):
            raise DeviceDisciplineError(
                f"a host numpy array (shape {value.shape}) was mixed with device arrays; "
                "upload it once with backend.asarray(a)"
            )
        if isinstance(value, tuple):
            return tuple(self.unwrap(v) for v in value)
        if isinstance(value, list):
            return [self.unwrap(v) for v in value]
        if isinstance(value, dict):
            return {k: self.unwrap(v) for k, v in value.items()}
        return value

    def unwrap_index(self, key):
        if isinstance(key, np.ndarray):
            raise DeviceDisciplineError(
                "a numpy index array was used on a device array; build indices with xp.arange"
            )
        return self.unwrap(key)

    # -- transfers ------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        if isinstance(a, StandInArray):
            return a if dtype is None else a.astype(dtype)
        self.transfers["to_device"] += 1
        return StandInArray(np.array(a, dtype=dtype), self)

    array = asarray

    def asnumpy(self, a):
        if not isinstance(a, StandInArray):
            return np.asarray(a)
        self.transfers["to_host"] += 1
        return a._a.copy()

    def reset_transfers(self):
        self.transfers = {"to_device": 0, "to_host": 0}

    # -- every other numpy name: types and constants as they are, functions wrapped -----
    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, type) or not callable(attr):
            return attr

        def function(*args, **kwargs):
            return self.wrap(attr(*self.unwrap(args), **self.unwrap(kwargs)))
        function.__name__ = name
        return function


def standin_backend() -> Backend:
    """A fresh GPU-like backend whose arrays obey CuPy's rules and count transfers."""
    device = StandInDevice()
    register_array_type(StandInArray, lambda a: a._dev)
    backend = Backend("gpu", device, to_device=device.asarray, to_host=device.asnumpy,
                      synchronize=lambda: None)
    return backend
