"""``xp.random``, ``xp.linalg``, ``xp.fft``, ``xp.lib.stride_tricks`` of the stand-in:
CuPy's names and signatures only, arrays made on the device."""
from __future__ import annotations

import inspect

import cupy
import numpy as np

from .array import StandInArray
from .cupy_api import NotModeledError, check_call, cupy_attribute, signature_of
from .graphs import RANDOM_DRAW


class Submodule:
    """cupy.linalg, cupy.fft, cupy.lib.stride_tricks: CuPy's names only, NumPy's math."""

    def __init__(self, device: StandInDevice, name: str, cupy_module, numpy_module):
        self._dev, self._name, self._cupy, self._numpy = device, name, cupy_module, numpy_module

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        cupy_attr = cupy_attribute(self._cupy, self._name, attr)
        if isinstance(cupy_attr, type) or not callable(cupy_attr):
            return cupy_attr
        numpy_function = getattr(self._numpy, attr, None)
        if numpy_function is None:
            raise NotModeledError(f"the stand-in does not model {self._name}.{attr}")
        device, call = self._dev, f"{self._name}.{attr}"

        def function(*args, **kwargs):
            check_call(call, cupy_attr, args, kwargs)
            return device.call(attr, numpy_function, args, kwargs)
        return function


class DeviceRandom:
    """``xp.random``: a device random module with cupy.random's Generator API only.

    ``default_rng(seed)`` gives a :class:`DeviceGenerator`. CuPy's legacy global
    functions (``xp.random.rand``, ``seed``, ...) exist, but gpucnn never uses a global
    generator: the stand-in refuses them (gpucnn.random.device_generator is the way in).
    """

    def __init__(self, device: StandInDevice):
        self._dev = device
        self.Generator = DeviceGenerator

    def default_rng(self, *args, **kwargs):
        check_call("cupy.random.default_rng", cupy.random.default_rng, args, kwargs)
        seed = signature_of(cupy.random.default_rng).bind(*args, **kwargs).arguments.get("seed")
        if isinstance(seed, (StandInArray, np.ndarray)):
            raise NotModeledError("cupy.random.default_rng with an array seed")
        return DeviceGenerator(self._dev, np.random.default_rng(seed))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cupy_attribute(cupy.random, "cupy.random", name)
        raise self._dev.discipline(
            f"cupy.random.{name}", f"cupy.random.{name} draws from CuPy's global generator; gpucnn draws "
            "device randomness from a Generator: gpucnn.random.device_generator(xp, rng)")


class DeviceGenerator:
    """A ``cupy.random.Generator``: its methods and signatures, arrays made on the device
    (the numbers come from NumPy's generator: the same seed gives other numbers on CuPy).
    No draw while a stream captures (tests/standin/graphs.py)."""

    def __init__(self, device: StandInDevice, host_generator: np.random.Generator):
        self._dev, self._rng = device, host_generator

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cupy_method = cupy_attribute(cupy.random.Generator, "cupy.random.Generator", name)
        numpy_method = getattr(self._rng, name)
        call, device = f"cupy.random.Generator.{name}", self._dev

        def draw(*args, **kwargs):
            check_call(call, cupy_method, args, kwargs)
            device.streams.refuse(call, RANDOM_DRAW)
            arguments = dict(signature_of(cupy_method).bind(*args, **kwargs).arguments)
            dtype, out = arguments.pop("dtype", None), arguments.pop("out", None)
            arguments = device.unwrap(arguments)
            if dtype is not None and "dtype" in inspect.signature(numpy_method).parameters:
                arguments["dtype"] = dtype
            values = np.asarray(numpy_method(**arguments))
            if dtype is not None:
                values = values.astype(dtype, copy=False)
            device.work.add("random", written=values.nbytes)
            if out is not None:
                out._a[...] = values
                return out
            return StandInArray(values, device)
        return draw
