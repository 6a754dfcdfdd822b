"""The fused-kernel machinery (gpucnn/kernels): every CUDA source compiles with NVRTC
(no GPU needed), every kernel has a NumPy twin, the stand-in checks each launch against
the kernel's signature, and the group selection. Device: none (NVRTC) and the stand-in."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backends import kernels
from gpucnn.backends.backend import get_backend
from gpucnn.backends.kernels import runtime as launching
from gpucnn.backends.kernels.relu import relu_grad
from standin import CupyConformanceError, expect_findings, standin_backend


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_every_cuda_source_compiles_with_nvrtc(arch):
    sizes = kernels.compile_all(arch)
    assert set(sizes) == {path.name for path in kernels.source_files()}
    assert all(size > 0 for size in sizes.values())


def test_a_broken_kernel_is_rejected_with_its_error_line(tmp_path, monkeypatch):
    (tmp_path / "broken.cu").write_text(
        'extern "C" __global__ void f(float* x) {\n  x[0] = undefined_name;\n}\n')
    monkeypatch.setattr(launching, "CUDA_DIR", tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)broken.cu does not compile.*broken.cu\(2\): error: identifier \"undefined_name\""):
        kernels.compile_all("compute_90")


def test_every_kernel_has_a_numpy_twin_taking_its_arguments():
    import inspect
    names = kernels.kernel_names()
    assert "relu.relu_backward" in names
    for name in names:
        params = [p for _, p in launching.signature(name)]
        assert list(inspect.signature(kernels.twin(name)).parameters) == params, name


def test_signatures_are_parsed_with_const_pointers_and_scalars():
    assert launching.signature("relu.relu_backward") == [
        ("const float*", "y"), ("const float*", "dy"), ("float*", "dx"), ("long long", "n")]


def test_standin_runs_the_twin_and_counts_one_launch():
    backend = standin_backend(kernels="all")
    xp = backend.xp
    y = backend.asarray(np.array([[1.0, -1.0], [0.0, 2.0]], np.float32))
    dy = backend.asarray(np.full((2, 2), 3.0, np.float32))
    before = xp.work.launches
    dx = relu_grad(y, dy)
    assert xp.work.launches - before == 1  # empty_like is free: the kernel alone
    np.testing.assert_array_equal(backend.to_numpy(dx), [[3.0, 0.0], [0.0, 3.0]])
    assert xp.work.by_kind["kernel relu.relu_backward"] == 1


@pytest.mark.parametrize("bad_args, message", [
    (lambda y, dy, dx: (y, dy, dx, 4), r"needs numpy.int64, got int"),
    (lambda y, dy, dx: (y, dy, dx), r"takes 4 arguments"),
    (lambda y, dy, dx: (y.astype("float64"), dy, dx, np.int64(4)), r"needs a float32 array, got float64"),
    (lambda y, dy, dx: (y.T, dy, dx, np.int64(4)), r"needs a C-contiguous array"),
])
def test_standin_refuses_a_launch_the_kernel_would_misread(bad_args, message):
    backend = standin_backend(kernels="all")
    y, dy, dx = (backend.asarray(np.ones((2, 2), np.float32)) for _ in range(3))
    with expect_findings() as found, pytest.raises(CupyConformanceError, match=message):
        kernels.launch("relu.relu_backward", (1,), (32,), bad_args(y, dy, dx))
    assert len(found) == 1


def test_numpy_arrays_run_the_twin():
    y = np.array([1.0, -2.0, 3.0], np.float32)
    np.testing.assert_array_equal(relu_grad(y, np.ones(3, np.float32)), [1.0, 0.0, 1.0])


@pytest.mark.parametrize("spec, expected", [
    ("all", set(kernels.GROUPS)), ("none", set()), ("", set()), ("relu, maxpool", {"relu", "maxpool"}),
    (["gemm"], {"gemm"}), ("default", set(kernels.DEFAULT_ON)), (None, set(kernels.DEFAULT_ON)),
])
def test_selection_spec(spec, expected):
    assert kernels.parse_selection(spec) == expected


def test_unknown_group_is_refused_naming_the_known_ones(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown fused-kernel group\(s\) \['relux'\].*maxpool"):
        get_backend("gpu", kernels="relu,relux")
    monkeypatch.setenv(kernels.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=r"GPUCNN_KERNELS=.bogus.: unknown"):
        standin_backend()


def test_environment_variable_selects_and_backend_option_wins(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "relu")
    assert standin_backend().kernels == {"relu"}
    assert standin_backend(kernels="none").kernels == set()
    backend = standin_backend(kernels="maxpool")
    assert kernels.active("maxpool", backend.xp) and not kernels.active("relu", backend.xp)
    assert not kernels.active("relu", np)  # the CPU never runs them
