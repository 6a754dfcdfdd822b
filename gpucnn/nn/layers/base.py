"""The Layer base class and the input checks every layer shares."""
from __future__ import annotations

import numpy as np

from ...backends.backend import array_module, to_host
from ...random import default_generator

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype) -> np.dtype:
    """Normalise a constructor's ``dtype`` argument; float32 or float64 only."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(
            f"expected dtype float32 or float64, got {dt}; pass dtype=numpy.float32"
        )
    return dt


def check_positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner} expected {name} to be a positive int, got {value!r}")
    return int(value)


def check_pair(owner: str, name: str, value) -> tuple[int, int]:
    """An int or a pair of ints, all positive -> (height, width)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{owner} expected {name} as an int or (h, w), got {value!r}")
        return check_positive_int(owner, name, value[0]), check_positive_int(owner, name, value[1])
    v = check_positive_int(owner, name, value)
    return v, v


def check_rng(owner: str, rng) -> np.random.Generator:
    """``rng`` itself, or gpucnn's default generator (see :func:`gpucnn.manual_seed`) for None."""
    if rng is None:
        return default_generator()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{owner} expected rng to be a numpy.random.Generator, got {type(rng).__name__}; "
            "pass rng=numpy.random.default_rng(seed)"
        )
    return rng


def in_layout_of(a, like):
    """``a`` with the memory layout of ``like`` (same shape): a copy only if they differ.

    A layer whose backward combines dy with cached arrays in several passes aligns dy
    first: one copy, instead of every pass striding through two layouts."""
    if a.strides == like.strides:
        return a
    xp = array_module(like)
    out = xp.empty_like(like)
    out[...] = a
    return out


class Layer:
    """A layer: ``forward(x)`` caches what ``backward(dy)`` needs.

    Subclasses with weights fill ``params`` and ``grads`` (same keys, same shapes);
    ``state`` holds arrays that are saved with the model but not trained.
    ``backward(dy)`` writes ``grads`` and returns dL/dx; it never mutates ``dy``.
    ``backward(dy, need_input_grad=False)`` skips dL/dx (returns None): the
    first layer of a model has no one to pass it to.
    """

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.state: dict = {}  # saved but not trained (BatchNorm's running statistics)
        self.training = True  # set by Sequential.train() / eval(); Dropout and BatchNorm read it
        self._cache = None
        self._buffers: dict = {}

    # -- to be provided by subclasses -------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, need_input_grad: bool = True):
        raise NotImplementedError

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of ``forward(x)`` for ``x.shape == input_shape``, without data."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this layer (weights excluded)."""
        return {}

    def describe(self) -> str:
        """A short description for :meth:`Sequential.summary`, e.g. ``Conv2D 1->32 5x5``;
        layers with sizes override it. ``repr(layer)`` keeps the full constructor call."""
        return type(self).__name__

    # -- shared helpers ---------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def __repr__(self) -> str:
        def show(v):
            return tuple(v) if isinstance(v, list) else v
        args = ", ".join(f"{k}={show(v)!r}" for k, v in self.get_config().items()
                         if k not in ("dtype", "init"))
        return f"{type(self).__name__}({args})"

    def _check_floating(self, x, expected_dtype=None):
        """x must be an array of a float dtype (the layer's dtype, if it has one)."""
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise TypeError(
                f"{self!r} expected an array (numpy or cupy), got {type(x).__name__}; "
                "convert with backend.asarray(x)"
            )
        if expected_dtype is not None and x.dtype != expected_dtype:
            raise TypeError(
                f"{self!r} expected x of dtype {expected_dtype}, got {x.dtype}; "
                f"cast once with x.astype(numpy.{expected_dtype})"
            )
        if np.dtype(x.dtype) not in FLOAT_DTYPES:
            raise TypeError(
                f"{self!r} expected a float32 or float64 array, got {x.dtype}; "
                "cast once with x.astype(numpy.float32)"
            )

    def _check_ndim(self, x, ndim: int, layout: str):
        if x.ndim != ndim:
            hint = "; add a channel axis with x[:, None]" if ndim == 4 and x.ndim == 3 else ""
            raise ValueError(
                f"{self!r} expected x of shape {layout}, got {tuple(x.shape)}{hint}"
            )

    def _cached(self):
        if self._cache is None:
            raise RuntimeError(
                f"{self!r}.backward() called before forward(); "
                "run forward(x) on the batch first"
            )
        return self._cache

    def _check_dy(self, dy, expected_shape):
        if tuple(dy.shape) != tuple(expected_shape):
            raise ValueError(
                f"{self!r}.backward expected dy of shape {tuple(expected_shape)} "
                f"(the shape forward returned), got {tuple(dy.shape)}"
            )

    def _workspace(self, name: str, shape: tuple, dtype, xp, initialize=None):
        """A private scratch array, kept between steps while its shape stays the same.

        Only for arrays that never leave the layer (im2col columns, their gradient):
        reusing them spares the allocator; on NumPy a fresh array above ~32 MB is new
        memory from the OS every step, and touching it costs more than the math.
        ``initialize(buffer)`` runs once, when the buffer is new.
        """
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != tuple(shape) or buffer.dtype != dtype:
            buffer = xp.empty(shape, dtype=dtype)
            if initialize is not None:
                initialize(buffer)
            self._buffers[name] = buffer
        return buffer

    def release_workspaces(self) -> None:
        """Drop the private scratch arrays (:meth:`_workspace`); the next step makes them anew
        (gpucnn.backends.cuda_graphs does, so a recorded step's scratch lies in the graph's own memory pool)."""
        self._buffers = {}

    def to(self, backend) -> "Layer":
        """Move parameters and state (and drop cached activations) to ``backend``'s device."""
        for key, value in self.params.items():
            self.params[key] = backend.asarray(to_host(value))
        for key, value in self.state.items():
            self.state[key] = backend.asarray(to_host(value))
        self.grads = {k: None for k in self.params}
        self._cache = None
        self._buffers = {}
        return self

