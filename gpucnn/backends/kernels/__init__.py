"""The GPU path's fused kernels: CUDA C++ in ``cuda/*.cu``, each with a NumPy twin.

One training step built from CuPy's generic calls makes 100-300 of them, and each
costs 18-38 us of host time (measured on an H200), so small batches are bound by the
host; passes built from many ufuncs (BatchNorm, the loss, the optimizer) also move
their data many times. A fused kernel does one such pass in one launch.

Every kernel is an ``extern "C" __global__`` function in a ``.cu`` file of
``gpucnn/backends/kernels/cuda/``, named ``"file.function"`` here (``"pool.maxpool_forward"``).
Its NumPy twin is a function of the same name and the same arguments in the Python
module of that file (``gpucnn/backends/kernels/pool.py``): it writes the same outputs into the
same arrays, and it is the reference the kernel is tested against on a real GPU.
:func:`launch` runs whichever the arrays call for:

    CuPy arrays            the CUDA kernel (compiled by NVRTC at first use, cached)
    NumPy arrays           the twin
    the tests' stand-in    the twin, after checking every argument against the kernel's
                           signature; it counts one launch (tests/standin/kernels.py)

Which kernels a GPU backend uses is chosen per group (:data:`GROUPS`) when the backend
is made: ``get_backend("gpu", kernels=...)``, else the ``GPUCNN_KERNELS`` environment
variable, else :data:`DEFAULT_ON`. A group becomes a default only in the commit that
records its GPU-vs-twin test passing on a real GPU (``.ci/gpu``); until then it is
opt-in and the generic CuPy code runs. Every group is a default since the .ci/gpu run of
2026-12-04 on an H200 (gpucnn/backends/kernel_groups.py); ``GPUCNN_KERNELS=none`` runs the generic
CuPy code instead. The CPU path never uses them: NumPy's own tuned code is faster there.
"""
from __future__ import annotations

from ..kernel_groups import DEFAULT_ON, ENV_VAR, GROUPS, active, parse_selection, select, selected
from .runtime import compile_all, kernel_names, launch, register_runner, source_files, twin

__all__ = ["DEFAULT_ON", "ENV_VAR", "GROUPS", "active", "compile_all", "kernel_names", "launch",
           "parse_selection", "register_runner", "select", "selected", "source_files", "twin"]
