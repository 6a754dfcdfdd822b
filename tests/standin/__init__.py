"""A test-only stand-in for the CuPy GPU backend, checked against the installed CuPy.

CI has no GPU, but CuPy imports without one, so the stand-in holds its numbers in
private NumPy arrays and checks every call gpucnn makes against the real ``cupy``
package (cupy-cuda12x 14.x, the ``test`` extra installs it):

* names: every attribute taken from ``xp``, from a device array, from ``xp.random``,
  ``xp.linalg``, ``xp.fft`` or ``xp.lib.stride_tricks`` must exist in ``cupy``
  (``xp.block``, ``xp.vecdot``, ``x.resize`` fail with CupyAttributeError);
* arguments: every call is bound against CuPy's signature (``inspect.signature`` or
  CuPy's docstring); ufuncs take only ``out``, ``dtype``, ``casting`` (``where=`` fails
  with CupyConformanceError), ``sum`` has no ``initial=``, creation has no ``like=``;
* result dtypes: every ufunc call is resolved by CuPy's own type tables (Python scalars
  weak, as NEP 50) and every reduction by CuPy's reduction tables; a result dtype that
  NumPy computes differently fails;
* layout, as CuPy makes it: ufunc, reduction, matmul and gather results are
  C-contiguous unless written into ``out=`` (``empty_like``/``astype``/``copy`` keep
  NumPy's order rules, which CuPy shares);
* indexing, as CuPy does it: out-of-range integer indices wrap around silently (labels
  must be validated on the host), duplicate-index scatters land in another order than
  NumPy's last-wins;
* device discipline, stricter than CuPy: a NumPy function or ufunc applied to a device
  array (``np.exp(x)``, which CuPy would dispatch), host arrays mixed into device
  arithmetic, NumPy index arrays (which CuPy would upload silently), CuPy's legacy
  global random functions: all raise DeviceDisciplineError;
* counts: every host->device upload and device->host copy (``asnumpy``, ``.get()``,
  ``float()``, ``int()``, ``bool()``, ``.item()``, ``repr``/``str``/``format``), every
  synchronisation (those copies, boolean masks, ``nonzero``, ``synchronize()``), each
  with the gpucnn line it came from; and the work a GPU would do: kernel launches,
  bytes read and written, FLOPs (tests/standin/work.py);
* CUDA graphs (``xp.cuda``: Stream, get_current_stream, MemoryPool, using_allocator): a
  capture changes no existing array, each ``graph.launch()`` replays the captured work on
  the arrays' contents of then, scalars baked in, and counts one launch; arrays made during a
  capture hold NaN (integers: their largest value) until the first launch; transfers, syncs,
  random draws and CuPy's cuBLAS calls (``xp.matmul``) inside a capture are refused, memory
  pools count whether they still hold blocks (tests/standin/graphs.py);
* cuBLAS: the handle CuPy and gpucnn share (its stream and workspace) and the libcublas
  functions gpucnn calls through ctypes, which check their operands' memory and record into a
  capture (tests/standin/cublas.py).

Every violation is raised where it happens, names the call and the calling gpucnn
line, and is also appended to ``FINDINGS``: tests/conftest.py fails any test that
left a finding behind, even one whose exception was swallowed.

What the stand-in cannot check: timing; the numerics of CuPy's kernels (its
reductions and cuBLAS sum in other orders: parity with NumPy is checked within
float32 tolerances on a real GPU only); cuBLAS's algorithms, memory pools' sizes, ordering between streams,
device memory limits; kernel compilation; the random numbers themselves (the stand-in's
Generator draws NumPy's numbers); and any CuPy behaviour not listed above.
"""
from __future__ import annotations

import contextlib

from gpucnn.backends import kernels as gpucnn_kernels
from gpucnn.backends.backend import Backend, register_array_type, register_cublas_capture
from gpucnn.backends.kernels import register_runner

from .array import StandInArray
from .cupy_api import (FINDINGS, CupyAttributeError, CupyConformanceError, DeviceDisciplineError,
                       Finding, NotModeledError)
from .device import StandInDevice
from .kernels import run_kernel

__all__ = ["FINDINGS", "CupyAttributeError", "CupyConformanceError", "DeviceDisciplineError",
           "Finding", "NotModeledError", "StandInArray", "StandInDevice", "expect_findings",
           "optimizer_table_uploads", "standin_backend"]


def standin_backend(kernels=None) -> Backend:
    """A fresh GPU-like backend whose arrays obey CuPy 14's API and count transfers.

    ``kernels``: the fused-kernel groups it runs (gpucnn.backends.kernels.select: None reads
    GPUCNN_KERNELS, else the defaults); each launch runs the kernel's NumPy twin after
    checking its arguments against the CUDA signature (tests/standin/kernels.py)."""
    device = StandInDevice()
    register_array_type(StandInArray, lambda a: a._dev)
    register_runner(StandInDevice, run_kernel)
    register_cublas_capture(StandInDevice, _cublas_capture_binding)
    groups = gpucnn_kernels.select(device, kernels)
    return Backend("gpu", device, to_device=device.asarray, to_host=device.asnumpy,
                   synchronize=device.synchronize, kernels=groups)


def _cublas_capture_binding(device: StandInDevice) -> tuple:
    """gpucnn.backends.backend.cublas_capture_binding for the stand-in: its model of libcublas, the
    device's handle and the current stream's pointer (tests/standin/cublas.py)."""
    return device._libcublas, device._libcublas.get_handle, lambda: device.streams.current().ptr


def optimizer_table_uploads(backend) -> int:
    """Host->device copies an optimizer makes once, at its first step, on ``backend``: the
    fused multi-tensor update ("optimizer" kernel group) uploads its table of parameter and
    state addresses then (and again only when they move). 0 without that group."""
    return 1 if gpucnn_kernels.active("optimizer", backend.xp) else 0


@contextlib.contextmanager
def expect_findings():
    """Collect (and clear) the findings made inside the block: for tests that plant
    a violation on purpose. Yields the list, filled when the block ends."""
    start = len(FINDINGS)
    found: list[Finding] = []
    try:
        yield found
    finally:
        found.extend(FINDINGS[start:])
        del FINDINGS[start:]
