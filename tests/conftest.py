"""Shared fixtures: the backends every cross-backend test runs on."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers: reference, standin, gradcheck

from gpucnn.backend import get_backend, gpu_status  # noqa: E402
from standin import standin_backend  # noqa: E402

_CUPY, _NO_GPU_REASON = gpu_status()

# Backends compared with NumPy: the stand-in always (CI has no GPU), real CuPy when usable.
DEVICE_BACKENDS = [
    pytest.param("standin", id="standin"),
    pytest.param("cupy", id="cupy", marks=pytest.mark.skipif(
        _CUPY is None, reason=f"needs a CUDA GPU: {_NO_GPU_REASON}")),
]


def make_backend(kind: str):
    if kind == "standin":
        return standin_backend()
    if kind == "cupy":
        return get_backend("gpu")
    return get_backend("cpu")


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request):
    """A GPU-like backend: the CuPy-rules stand-in, or a real GPU when present."""
    return make_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
