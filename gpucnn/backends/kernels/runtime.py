"""Compiling and launching the kernels of ``cuda/*.cu``, or running their NumPy twins.

``launch("pool.maxpool_forward", grid, block, args)`` takes the kernel's arguments in
its signature's order: device arrays for pointers (C-contiguous, of the pointer's
type), ``numpy.int32`` for ``int``, ``numpy.int64`` for ``long long``, ``numpy.float32``
for ``float``. (CuPy passes a Python int as a 64-bit integer and a float as a double:
a kernel reading ``int`` would read garbage, so plain Python numbers are never used.)
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np

from ..backend import array_module, compile_cuda_module, nvrtc_binding

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
# NVRTC options for every source: C++17, no fast-math (results must match the twins)
NVRTC_OPTIONS = ("-std=c++17",)
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)

# array-module type -> runner(xp, kernel, grid, block, args, shared_mem): the tests' stand-in
_RUNNERS: dict = {}
_MODULES: dict = {}  # source file stem -> cupy.RawModule
_FUNCTIONS: dict = {}  # "file.function" -> cupy RawKernel function


def source_files() -> list[Path]:
    """Every CUDA source of the package, sorted."""
    return sorted(CUDA_DIR.glob("*.cu"))


def kernel_signatures(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``{function: [(C type, name), ...]}`` of every ``extern "C" __global__`` kernel in
    ``path``; the type keeps ``const`` and ``*`` (``"const float*"``)."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)
    signatures = {}
    for name, params in _KERNEL_RE.findall(text):
        parsed = []
        for param in (p.strip() for p in params.split(",") if p.strip()):
            param = re.sub(r"\s*\*\s*", "* ", re.sub(r"__restrict__", "", param)).split()
            parsed.append((" ".join(param[:-1]).replace("* ", "*").replace(" *", "*"), param[-1]))
        signatures[name] = parsed
    return signatures


def kernel_names() -> list[str]:
    """Every kernel as ``"file.function"``."""
    return [f"{path.stem}.{name}" for path in source_files() for name in kernel_signatures(path)]


def signature(kernel: str) -> list[tuple[str, str]]:
    """The ``[(C type, name)]`` parameters of ``"file.function"``."""
    stem, function = _split(kernel)
    return kernel_signatures(CUDA_DIR / f"{stem}.cu")[function]


def twin(kernel: str):
    """The NumPy twin of ``"file.function"``: ``function`` in ``gpucnn.backends.kernels.<file>``."""
    stem, function = _split(kernel)
    module = importlib.import_module(f"{__package__}.{stem}")
    found = getattr(module, function, None)
    if found is None:
        raise LookupError(f"kernel {kernel} has no NumPy twin: define {function}() in gpucnn/backends/kernels/{stem}.py")
    return found


def register_runner(array_module_type: type, runner) -> None:
    """Arrays whose module is of ``array_module_type`` run kernels through
    ``runner(xp, kernel, grid, block, args, shared_mem)`` (the tests' CuPy stand-in)."""
    _RUNNERS[array_module_type] = runner


def launch(kernel: str, grid, block, args, shared_mem: int = 0) -> None:
    """Run ``"file.function"`` over ``grid`` x ``block`` threads on ``args``: the CUDA
    kernel for CuPy arrays, its NumPy twin for NumPy arrays (the outputs are written into
    the arrays passed, either way). Asynchronous on the GPU, as every CuPy call."""
    xp = array_module(_first_array(args))
    runner = _RUNNERS.get(type(xp))
    if runner is not None:
        return runner(xp, kernel, grid, block, args, shared_mem)
    if xp is np:
        twin(kernel)(*args)
        return None
    function = _FUNCTIONS.get(kernel)
    if function is None:
        function = _FUNCTIONS[kernel] = _module(_split(kernel)[0]).get_function(_split(kernel)[1])
    function(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)
    return None


def _first_array(args):
    """The first array among a launch's arguments (its scalars are NumPy scalars): which
    device runs the kernel. (A profile on an H200 found a third of launch()'s host time in
    scanning every argument for it.)"""
    for a in args:
        if not isinstance(a, np.generic) and hasattr(a, "shape"):
            return a
    return None


def _split(kernel: str) -> tuple[str, str]:
    stem, _, function = kernel.partition(".")
    if not function:
        raise ValueError(f"a kernel is named 'file.function', got {kernel!r}")
    return stem, function


def _module(stem: str):
    module = _MODULES.get(stem)
    if module is None:
        source = (CUDA_DIR / f"{stem}.cu").read_text()
        module = _MODULES[stem] = compile_cuda_module(source, NVRTC_OPTIONS)
    return module


def compile_all(arch: str = "compute_90") -> dict[str, int]:
    """Compile every source with NVRTC to PTX for ``arch`` (no GPU needed: CuPy's NVRTC
    binding, not its device-querying compiler front end); returns ``{file name: PTX
    bytes}``. A source that does not compile raises RuntimeError with NVRTC's log."""
    nvrtc = nvrtc_binding()

    sizes = {}
    for path in source_files():
        program = nvrtc.createProgram(path.read_text(), path.name, [], [])
        try:
            try:
                nvrtc.compileProgram(program, [f"-arch={arch}", *NVRTC_OPTIONS])
            except nvrtc.NVRTCError as exc:
                log = nvrtc.getProgramLog(program)
                raise RuntimeError(f"{path.name} does not compile for {arch}: {exc}\n{log}") from None
            sizes[path.name] = len(nvrtc.getPTX(program))
        finally:
            nvrtc.destroyProgram(program)
    return sizes


def memory_order(a):
    """a (any shape) -> (memory, perm): ``memory`` is ``a.transpose(perm)``, C-contiguous, its
    axes in memory order (outermost first), no copy, when some order of a's axes is contiguous
    (an NCHW view of (C, H, W, N) memory gives perm (1, 2, 3, 0)); otherwise a C-contiguous
    copy of a (one launch) and the identity perm. What a kernel reading raw memory is given."""
    perm = tuple(sorted(range(a.ndim), key=lambda axis: -a.strides[axis]))  # stable: ties keep order
    view = a.transpose(perm)
    if view.flags.c_contiguous:
        return view, perm
    return array_module(a).ascontiguousarray(a), tuple(range(a.ndim))


def element_strides(memory, perm) -> tuple[int, ...]:
    """The element strides, axis by axis, of the array that :func:`memory_order` turned into
    ``(memory, perm)``: how a kernel steps through ``memory`` along each of its axes."""
    return tuple(memory.strides[perm.index(axis)] // memory.itemsize for axis in range(memory.ndim))


def grid_1d(count: int, block: int = 256, max_blocks: int = 65535 * 8) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a grid-stride loop over ``count`` items."""
    blocks = max(1, min((int(count) + block - 1) // block, max_blocks))
    return (blocks,), (block,)
