"""Shared fixtures: the backends every cross-backend test runs on, and the rule that a
test fails when the CuPy stand-in found anything during it (tests/standin/)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers: reference, standin, gradcheck

from gpucnn.backends.backend import get_backend, gpu_status  # noqa: E402
from gpucnn.backends.kernel_groups import select as select_kernels  # noqa: E402
from standin import FINDINGS, standin_backend  # noqa: E402

_CUPY, _NO_GPU_REASON = gpu_status()
_NEEDS_GPU = pytest.mark.skipif(_CUPY is None, reason=f"needs a CUDA GPU: {_NO_GPU_REASON}")

# Every backend test runs on NumPy, on the CuPy stand-in (always: CI has no GPU) and on
# real CuPy when a CUDA device is usable (skipped with the reason otherwise); on the two GPU
# kinds both with the default fused kernels (gpucnn.backends.kernels) and with none of them, so the
# generic CuPy code stays tested too.
BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("standin", id="standin"),
    pytest.param("standin-generic", id="standin-generic"),
    pytest.param("cupy", id="cupy", marks=_NEEDS_GPU),
    pytest.param("cupy-generic", id="cupy-generic", marks=_NEEDS_GPU),
]
DEVICE_BACKENDS = BACKENDS[1:]


def make_backend(kind: str, kernels=None):
    """A backend by test id: "standin" / "cupy" with the fused-kernel groups ``kernels``
    (None: the defaults), "...-generic" with none."""
    kernels = "none" if kind.endswith("-generic") else kernels
    if kind.startswith("standin"):
        return standin_backend(kernels=kernels)
    if kind.startswith("cupy"):
        return get_backend("gpu", kernels=kernels)
    return get_backend("cpu")


def backend_of(kind: str, kernels=None):
    """A generator for a fixture: yields make_backend(kind, kernels), then puts the real
    GPU's kernel selection (process-wide) back to the defaults."""
    backend = make_backend(kind, kernels)
    yield backend
    if kind.startswith("cupy"):
        select_kernels(backend.xp, "default")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend: NumPy, the CuPy stand-in, and a real GPU when present (the GPU kinds
    with and without the fused kernels)."""
    yield from backend_of(request.param)


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request):
    """A GPU-like backend: the CuPy stand-in, or a real GPU when present (with and without
    the fused kernels)."""
    yield from backend_of(request.param)


@pytest.fixture(params=[BACKENDS[1], BACKENDS[3]])  # the stand-in, a real GPU
def kernel_backend(request):
    """A GPU-like backend running every fused kernel (gpucnn.backends.kernels): the CuPy stand-in
    (each launch runs the kernel's NumPy twin after checking its arguments against the
    CUDA signature), or a real GPU when present (the CUDA kernels themselves). The GPU's
    selection goes back to the defaults afterwards."""
    yield from backend_of(request.param, "all")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def fail_on_new_findings(start: int) -> None:
    """pytest.fail naming every stand-in finding recorded since ``start`` (and forget them)."""
    new = FINDINGS[start:]
    del FINDINGS[start:]
    if new:
        pytest.fail("the CuPy stand-in found calls that real CuPy would reject or run differently:\n"
                    + "\n".join(f"  {finding}" for finding in new), pytrace=False)


@pytest.fixture(autouse=True)
def standin_findings_fail_the_test():
    """A finding fails its test even when the exception it raised was caught."""
    start = len(FINDINGS)
    yield
    fail_on_new_findings(start)
