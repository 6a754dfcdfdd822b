"""The backend seam: the ONLY module of gpucnn that imports cupy.

A :class:`Backend` is a small object chosen once, by :func:`get_backend`:

    backend.name         "cpu" or "gpu": the device actually used
    backend.xp           the array module (numpy or cupy)
    backend.asarray(a)   host -> device
    backend.to_numpy(a)  device -> host
    backend.synchronize() wait for queued device work (a no-op on the CPU)

Layers never ask which backend is active: they take the array module from the
arrays they receive with :func:`array_module`, so one code path serves both.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from . import kernel_groups
from .host_memory import tune_host_allocator

__all__ = [
    "Backend",
    "GPUFallbackWarning",
    "array_module",
    "compile_cuda_module",
    "cublas_binding",
    "cublas_capture_binding",
    "GRAPHS_DEFAULT",
    "get_backend",
    "graphs_selected",
    "gpu_status",
    "register_array_type",
    "register_cublas_capture",
    "to_host",
]

BACKEND_NAMES = ("cpu", "gpu", "auto")
# Whether a GPU backend replays training steps from CUDA graphs (gpucnn.backends.cuda_graphs) when neither
# get_backend(graphs=...) nor GPUCNN_CUDA_GRAPHS says: the one place that default lives. Off
# until a .ci/gpu run has shown the graph tests passing on a GPU (they have never run on one).
GRAPHS_DEFAULT = False


class GPUFallbackWarning(UserWarning):
    """Emitted once when ``--device gpu`` was asked for but no usable GPU was found."""


# (array type, array -> its module) pairs consulted by array_module(); cupy
# registers itself when the GPU backend is first created, the test stand-in too.
_ARRAY_TYPES: list[tuple[type, object]] = []


def register_array_type(array_type: type, module_of) -> None:
    """Teach :func:`array_module` that an array ``a`` of ``array_type`` uses ``module_of(a)``."""
    if not any(t is array_type for t, _ in _ARRAY_TYPES):
        _ARRAY_TYPES.append((array_type, module_of))


def array_module(*arrays):
    """The array module (numpy, cupy, ...) that the given arrays belong to.

    Non-array arguments (None, Python scalars) are ignored; NumPy is the default.
    """
    for a in arrays:
        for array_type, module_of in _ARRAY_TYPES:
            if isinstance(a, array_type):
                return module_of(a)
    return np


def to_host(a) -> np.ndarray:
    """Any array, on whatever device it lives, -> host ``numpy.ndarray``."""
    xp = array_module(a)
    if xp is np:
        return np.asarray(a)
    return xp.asnumpy(a)


class Backend:
    """One device: its array module and the two transfer directions."""

    def __init__(self, name: str, xp, to_device, to_host, synchronize, memory_bytes=None,
                 kernels=frozenset(), graphs=False):
        self.name = name
        self.kernels = frozenset(kernels)  # the fused-kernel groups its arrays run (gpucnn.backends.kernels)
        self.graphs = bool(graphs)  # replay training steps from CUDA graphs (gpucnn.backends.cuda_graphs; opt-in)
        self.xp = xp
        self._to_device = to_device
        self._to_host = to_host
        self._synchronize = synchronize
        self._memory_bytes = memory_bytes

    def asarray(self, a, dtype=None):
        """Host (or same-device) array -> array on this backend's device."""
        return self._to_device(a, dtype)

    def to_numpy(self, a) -> np.ndarray:
        """Array on any device -> host ``numpy.ndarray`` (no copy on the CPU)."""
        return self._to_host(a)

    def synchronize(self) -> None:
        """Block until all queued device work is done (read timers after this)."""
        self._synchronize()

    def device_memory_bytes(self) -> int | None:
        """Bytes the device's memory pool holds (its high-water mark); None on the CPU."""
        return None if self._memory_bytes is None else int(self._memory_bytes())

    def __repr__(self) -> str:
        options = (f", kernels={sorted(self.kernels)}" if self.kernels else "") + (", graphs=True" if self.graphs else "")
        return f"Backend(name={self.name!r}{options})"


def _cpu_backend() -> Backend:
    tune_host_allocator()  # reuse a step's large buffers instead of remapping them (host_memory.py)
    return Backend(
        "cpu",
        np,
        to_device=lambda a, dtype=None: np.asarray(a, dtype=dtype),
        to_host=np.asarray,
        synchronize=lambda: None,
    )


def gpu_status():
    """Check for a usable CUDA GPU in three steps.

    Returns ``(cupy_module, None)`` when CuPy imports, a device is present and a
    tiny allocation works; otherwise ``(None, reason)`` with a one-line reason
    naming the step that failed.
    """
    try:
        import cupy  # noqa: PLC0415  (the one place cupy is imported)
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return None, (
            f"CuPy is not importable ({type(exc).__name__}: {exc}); "
            "install it with: pip install 'gpucnn[gpu]'"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy is installed but no CUDA device is available ({exc})"
    if count < 1:
        return None, "CuPy is installed but no CUDA device is available (0 devices)"
    try:
        probe = cupy.zeros(4, dtype=cupy.float32) + 1
        cupy.cuda.Stream.null.synchronize()
        if float(probe.sum()) != 4.0:
            return None, "a test allocation on the CUDA device gave a wrong result"
    except Exception as exc:
        return None, f"a CUDA device is present but a test allocation failed ({exc})"
    return cupy, None


def _gpu_backend(cupy, kernels=None, graphs=None) -> Backend:
    register_array_type(cupy.ndarray, lambda a: cupy)
    groups = kernel_groups.select(cupy, kernels)
    return Backend(
        "gpu",
        cupy,
        to_device=lambda a, dtype=None: cupy.asarray(a, dtype=dtype),
        to_host=cupy.asnumpy,
        synchronize=cupy.cuda.Stream.null.synchronize,
        memory_bytes=lambda: cupy.get_default_memory_pool().total_bytes(),
        kernels=groups,
        graphs=graphs_selected(graphs),
    )


def compile_cuda_module(source: str, options: tuple):
    """CUDA C++ ``source`` -> a ``cupy.RawModule`` (NVRTC compiles it at first use and
    CuPy caches the binary on disk); gpucnn.backends.kernels launches its functions."""
    import cupy  # noqa: PLC0415  (only reached with a usable GPU)

    return cupy.RawModule(code=source, options=tuple(options))


def cublas_binding(xp):
    """``(cublas, get_handle)`` for the real ``cupy`` module: CuPy's cuBLAS binding
    (``cupy_backends.cuda.libs.cublas``, whose calls run on CuPy's current stream) and
    ``cupy.cuda.device.get_cublas_handle`` (the current device's handle, shared with CuPy);
    None for any other array module (NumPy, the tests' stand-in). gpucnn.backends.kernels.gemm uses it."""
    if getattr(xp, "__name__", None) != "cupy":
        return None
    from cupy.cuda import device  # noqa: PLC0415  (only reached with a usable GPU)
    from cupy_backends.cuda.libs import cublas  # noqa: PLC0415

    return cublas, device.get_cublas_handle


# (array module type, module -> capture binding) pairs consulted by cublas_capture_binding();
# the tests' stand-in registers its model of libcublas (tests/standin/cublas.py)
_CUBLAS_CAPTURE: list[tuple[type, object]] = []


def register_cublas_capture(module_type: type, binding) -> None:
    """Teach :func:`cublas_capture_binding` that an array module of ``module_type`` has the
    capture binding ``binding(xp)`` (a ``(library, get_handle, stream_pointer)`` triple)."""
    if not any(t is module_type for t, _ in _CUBLAS_CAPTURE):
        _CUBLAS_CAPTURE.append((module_type, binding))


def cublas_capture_binding(xp):
    """``(library, get_handle, stream_pointer)`` for the real ``cupy`` module (or a module
    registered with :func:`register_cublas_capture`), None otherwise: the libcublas CuPy
    loaded, opened with ctypes, so gpucnn.backends.kernels.gemm can call cublasSgemm_v2 while a stream
    is being captured into a CUDA graph. CuPy's own binding refuses then ("calling cuBLAS API
    during stream capture is currently unsupported"); cuBLAS itself supports capture (cuBLAS
    guide, "CUDA Graphs Support"). Raises when the library or one of its functions cannot be
    had (gpucnn.backends.cuda_graphs then trains without graphs, saying why)."""
    for module_type, binding in _CUBLAS_CAPTURE:
        if isinstance(xp, module_type):
            return binding(xp)
    if getattr(xp, "__name__", None) != "cupy":
        return None
    import ctypes  # noqa: PLC0415
    from cupy.cuda import device  # noqa: PLC0415
    from cupy_backends.cuda.libs import cublas  # noqa: PLC0415, F401  (loads libcublas)

    return _loaded_cublas(ctypes), device.get_cublas_handle, lambda: xp.cuda.get_current_stream().ptr


def mapped_cublas_path(maps_lines) -> str | None:
    """The path of the libcublas.so.* (not libcublasLt) among a /proc/<pid>/maps listing's
    lines; None when none is mapped. Two different files (after resolving symbolic links)
    raise RuntimeError: a handle of one copy must not be used with another's functions, and
    the maps do not say which copy CuPy's binding calls (PyTorch, imported beside CuPy, may
    bring its own)."""
    paths = {fields[5].strip() for fields in (line.split(maxsplit=5) for line in maps_lines) if len(fields) == 6}
    found = sorted({os.path.realpath(p) for p in paths if os.path.basename(p).startswith("libcublas.so")})
    if len(found) > 1:
        raise RuntimeError(f"CUDA graphs call the libcublas CuPy uses, expected one libcublas.so mapped, got "
                           f"{len(found)}: {', '.join(found)}; gpucnn cannot tell which one CuPy's handle "
                           "belongs to. Train without importing a second CUDA stack (PyTorch) in the same "
                           "process, or install CuPy and PyTorch against the same CUDA libraries")
    return found[0] if found else None


def _loaded_cublas(ctypes):
    """The libcublas.so.* mapped into this process (CuPy loaded it), as a ctypes library."""
    with open("/proc/self/maps") as maps:
        path = mapped_cublas_path(maps)
    if path is None:
        raise RuntimeError("CUDA graphs need libcublas, but CuPy has not loaded it (no libcublas.so "
                           "in /proc/self/maps)")
    library = ctypes.CDLL(path)
    void, c_int = ctypes.c_void_p, ctypes.c_int
    for name, argtypes in (("cublasGetStream_v2", [void, ctypes.POINTER(void)]),
                           ("cublasSetStream_v2", [void, void]),
                           ("cublasSetPointerMode_v2", [void, c_int]),
                           ("cublasSetWorkspace_v2", [void, void, ctypes.c_size_t]),
                           ("cublasSgemm_v2", [void, c_int, c_int, c_int, c_int, c_int, void, void, c_int,
                                               void, c_int, void, void, c_int])):
        function = getattr(library, name)  # AttributeError: a library without it
        function.argtypes, function.restype = argtypes, c_int
    return library


def graphs_selected(graphs=None) -> bool:
    """Whether a GPU backend replays training steps from CUDA graphs: ``graphs`` when given,
    else the environment variable GPUCNN_CUDA_GRAPHS when set ("1" on, "0" off: an override),
    else :data:`GRAPHS_DEFAULT`."""
    if graphs is not None:
        return bool(graphs)
    value = os.environ.get("GPUCNN_CUDA_GRAPHS", "").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"GPUCNN_CUDA_GRAPHS expected 1 (on) or 0 (off), got {value!r}; unset it for "
                         f"gpucnn's default ({'on' if GRAPHS_DEFAULT else 'off'})")
    return GRAPHS_DEFAULT if value == "" else value == "1"


def nvrtc_binding():
    """CuPy's NVRTC binding (``cupy.cuda.nvrtc``): compiles CUDA C++ without a GPU."""
    from cupy.cuda import nvrtc  # noqa: PLC0415

    return nvrtc


def get_backend(name: str = "auto", kernels=None, graphs=None) -> Backend:
    """Return the backend for ``name`` in ``"cpu"``, ``"gpu"``, ``"auto"``.

    ``kernels`` (GPU only): the fused-kernel groups to run (gpucnn.backends.kernels): ``"all"``,
    ``"none"``, ``"default"`` or a comma-separated list of groups; None reads the
    ``GPUCNN_KERNELS`` environment variable, else the defaults. The CPU never runs them.
    ``graphs`` (GPU only): replay each training step from a CUDA graph (gpucnn.backends.cuda_graphs); None
    reads ``GPUCNN_CUDA_GRAPHS`` (1 on, 0 off) when set, else :data:`GRAPHS_DEFAULT` (off).

    ``"auto"`` picks the GPU when one is usable, else the CPU, silently.
    ``"gpu"`` without a usable GPU falls back to the CPU with one
    :class:`GPUFallbackWarning` that says which detection step failed.
    """
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(
            f"get_backend expected a device name in {BACKEND_NAMES}, got {name!r}; "
            "use 'auto' to take the GPU when there is one"
        )
    if kernels is not None:
        kernel_groups.parse_selection(kernels)  # a bad name fails before any device work
    graphs_selected(graphs)  # a bad GPUCNN_CUDA_GRAPHS fails before any device work
    if name == "cpu":
        return _cpu_backend()
    cupy, reason = gpu_status()
    if cupy is not None:
        return _gpu_backend(cupy, kernels, graphs)
    if name == "gpu":
        warnings.warn(
            f"--device gpu asked for a GPU, but {reason}; falling back to the CPU",
            GPUFallbackWarning,
            stacklevel=2,
        )
    return _cpu_backend()
