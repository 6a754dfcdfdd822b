"""The CuPy stand-in itself: it refuses what the installed CuPy refuses, behaves as CuPy
behaves where CuPy differs from NumPy, counts what CuPy would copy or wait for, and a
violation planted into gpucnn makes the test that runs it fail, naming the gpucnn line."""
from __future__ import annotations

import inspect
import itertools
import re

import cupy
import numpy as np
import pytest

from gpucnn import SoftmaxCrossEntropy
from gpucnn.nn.layers import activations
from gpucnn.random import device_generator
from standin import (CupyAttributeError, CupyConformanceError, DeviceDisciplineError, FINDINGS,
                     expect_findings, standin_backend)
from standin import cupy_api, device as standin_device
from standin.plant import plant


@pytest.fixture
def sb():
    return standin_backend()


def on_device(sb, a):
    return sb.asarray(np.asarray(a))


# -- names: only what cupy has ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["block", "vecdot", "unstack"])
def test_numpy_only_functions_fail_as_on_cupy(sb, name):
    assert hasattr(np, name) and not hasattr(cupy, name)  # the ground truth, read from the install
    with expect_findings() as found, pytest.raises(CupyAttributeError, match=rf"cupy\.{name} does not exist"):
        getattr(sb.xp, name)
    assert [f.call for f in found] == [f"cupy.{name}"]


@pytest.mark.parametrize("name", ["resize", "setflags", "itemset"])
def test_numpy_only_array_methods_fail_as_on_cupy(sb, name):
    assert not hasattr(cupy.ndarray, name)
    x = on_device(sb, np.ones((2, 3), np.float32))
    with expect_findings() as found, pytest.raises(CupyAttributeError, match=rf"cupy\.ndarray\.{name}"):
        getattr(x, name)
    assert found[0].call == f"cupy.ndarray.{name}"


def test_names_cupy_has_work_and_constants_are_cupys_own(sb):
    xp = sb.xp
    x = on_device(sb, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert xp.float32 is cupy.float32 and xp.newaxis is None and xp.inf == cupy.inf
    assert isinstance(x, xp.ndarray)
    np.testing.assert_array_equal(sb.to_numpy(xp.maximum(x, 2.0)), np.maximum(np.arange(6).reshape(2, 3), 2))


# -- arguments: bound against CuPy's signatures -----------------------------------------------
@pytest.mark.parametrize("call, wrong", [
    (lambda xp, x: xp.maximum(x, 0, where=x > 0), "where="),
    (lambda xp, x: xp.exp(x, order="C"), "order="),
    (lambda xp, x: xp.add(x, 1, subok=True), "subok="),
    (lambda xp, x: xp.sum(x, initial=0), "initial"),
    (lambda xp, x: x.sum(where=True), "where"),
    (lambda xp, x: x.max(initial=0), "initial"),
    (lambda xp, x: xp.zeros(3, like=x), "like"),
    (lambda xp, x: xp.empty_like(x, device="cpu"), "device"),
    (lambda xp, x: xp.pad(x, 1, constant_value=0), "constant_value="),
    (lambda xp, x: xp.maximum(x), "takes 2 inputs"),
])
def test_keywords_cupy_rejects_are_refused(sb, call, wrong):
    x = on_device(sb, np.ones((2, 3), np.float32))
    with expect_findings() as found, pytest.raises(CupyConformanceError, match=re.escape(wrong)):
        call(sb.xp, x)
    assert len(found) == 1 and found[0].location.startswith("tests/test_standin_conformance.py:")


def test_keywords_cupy_accepts_pass(sb):
    xp = sb.xp
    x = on_device(sb, np.ones((2, 3), np.float32))
    xp.maximum(x, 0, out=xp.empty_like(x), casting="same_kind")
    xp.exp(x, dtype=np.float32)
    x.sum(axis=0, keepdims=True)
    x.astype(np.float64, copy=False)
    xp.pad(x, ((1, 0), (0, 2)), mode="constant", constant_values=0)
    xp.empty_like(x, dtype=bool)
    xp.full_like(x, 3, dtype=np.uint8)


def test_ufunc_keywords_and_var_keyword_table_match_the_installed_cupy():
    """The two hand-written tables in cupy_api, read back from CuPy itself."""
    signature = cupy_api.signature_from_doc(cupy.maximum.__doc__)
    assert {p.name for p in signature.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} == cupy_api.UFUNC_KEYWORDS
    source = inspect.getsource(inspect.getmodule(cupy.pad))
    assert set(re.findall(r"kwargs\.get\('(\w+)'", source)) == cupy_api.VAR_KEYWORDS["pad"]


def test_signatures_are_read_for_cythonized_methods():
    """CuPy's ndarray methods have no inspect signature: the docstring gives it."""
    assert str(cupy_api.signature_of(cupy.ndarray.sum)) == "(axis=..., dtype=..., out=..., keepdims=...)"
    assert list(cupy_api.signature_of(cupy.ndarray.dot).parameters) == ["b", "out"]  # "_ndarray_base b"
    assert list(cupy_api.signature_of(cupy.ndarray.reshape).parameters) == ["shape", "order", "copy"]


# -- submodules: cupy's, not numpy's -------------------------------------------------------------
def test_random_is_a_device_module_with_cupys_generator_api(sb):
    xp = sb.xp
    gen = xp.random.default_rng(7)
    with expect_findings() as found:
        with pytest.raises(DeviceDisciplineError, match="global generator"):
            xp.random.rand(3)  # exists in CuPy, but gpucnn never draws from a global generator
        with pytest.raises(CupyAttributeError, match=r"cupy\.random\.Generator\.normal"):
            gen.normal(size=3)  # numpy's Generator has it, cupy's does not
    assert [f.call for f in found] == ["cupy.random.rand", "cupy.random.Generator.normal"]
    sb.xp.reset_transfers()
    mask = gen.random((4, 5), dtype=np.float32)
    ints = gen.integers(0, 10, size=6)
    noise = gen.standard_normal((2, 2), dtype=np.float32)
    assert all(isinstance(a, xp.ndarray) for a in (mask, ints, noise))
    assert mask.dtype == np.float32 and ints.dtype == np.int64 and noise.dtype == np.float32
    assert sb.xp.transfers == {"to_device": 0, "to_host": 0}  # drawn on the device


def test_device_generator_draws_on_the_device_from_the_host_generators_state(sb):
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    first = sb.to_numpy(device_generator(sb.xp, rng).random((3, 4), dtype=np.float32))
    rng.bit_generator.state = state
    again = sb.to_numpy(device_generator(sb.xp, rng).random((3, 4), dtype=np.float32))
    np.testing.assert_array_equal(first, again)


def test_linalg_and_fft_have_cupys_names_only(sb):
    x = on_device(sb, np.arange(4, dtype=np.float32))
    assert float(sb.xp.linalg.norm(x)) == pytest.approx(np.linalg.norm(np.arange(4)))
    assert sb.xp.fft.fft(x).shape == (4,)
    for submodule, name in ((sb.xp.linalg, "vector_norm"), (sb.xp.linalg, "vecdot"), (sb.xp.fft, "fftshift_")):
        with expect_findings(), pytest.raises(CupyAttributeError):
            getattr(submodule, name)


# -- result dtypes: CuPy's type tables agree with NumPy 2 for everything gpucnn uses -----------
UFUNCS = ["add", "subtract", "multiply", "true_divide", "floor_divide", "power", "remainder", "maximum",
          "minimum", "greater", "greater_equal", "less", "less_equal", "equal", "not_equal",
          "logical_and", "logical_or", "bitwise_and", "exp", "log", "log1p", "absolute", "sqrt",
          "square", "negative", "sign", "tanh", "isfinite", "logical_not"]
DTYPES = [np.dtype(t) for t in ("bool", "uint8", "int32", "int64", "float16", "float32", "float64")]


@pytest.mark.parametrize("name", UFUNCS)
def test_cupy_ufunc_result_dtypes_equal_numpy_2s(name):
    """Arrays of every dtype pair, and arrays with Python int/float scalars (weak, NEP 50)."""
    np_ufunc, cupy_ufunc = getattr(np, name), getattr(cupy, name)
    operands = [(d, False) for d in DTYPES] + [(np.dtype(np.int64), int), (np.dtype(np.float64), float)]
    for combo in itertools.product(operands, repeat=np_ufunc.nin):
        if all(weak for _, weak in combo):
            continue
        try:
            expected = np_ufunc.resolve_dtypes(tuple(w or d for d, w in combo) + (None,) * np_ufunc.nout)
        except TypeError:  # NumPy has no loop (float % bool...): neither need agree then
            continue
        assert cupy_api.cupy_ufunc_result_dtypes(cupy_ufunc, list(combo)) == tuple(expected[np_ufunc.nin:]), combo


@pytest.mark.parametrize("name", ["sum", "prod", "max", "min", "argmax", "argmin", "mean", "any", "all"])
def test_cupy_reduction_result_dtypes_equal_numpy_2s(name):
    for dtype in DTYPES:
        assert cupy_api.cupy_reduction_dtype(name, dtype) == getattr(np.zeros((2, 3), dtype), name)(axis=0).dtype


def test_a_result_dtype_cupy_would_compute_differently_is_refused(sb, monkeypatch):
    monkeypatch.setattr(standin_device, "cupy_ufunc_result_dtypes", lambda ufunc, ops: (np.dtype(np.float64),))
    x = on_device(sb, np.ones(3, np.float32))
    with expect_findings() as found, pytest.raises(CupyConformanceError, match=r"float32.*in NumPy but.*float64"):
        x * 2
    assert found[0].call == "cupy.multiply"


# -- layout: as CuPy lays results out ------------------------------------------------------------
def test_ufunc_results_are_c_contiguous_unless_written_into_out(sb):
    xp = sb.xp
    chwn = on_device(sb, np.ones((2, 3, 4, 5), np.float32)).transpose(3, 0, 1, 2)  # NCHW view
    assert np.exp(np.ones((2, 3, 4, 5), np.float32).transpose(3, 0, 1, 2)).strides == chwn.strides  # NumPy keeps it
    for result in (xp.exp(chwn), chwn * 2, chwn + chwn, chwn > 0, chwn.sum(axis=1, keepdims=True)):
        assert result.flags.c_contiguous  # CuPy: C-contiguous, the layout is lost
    kept = xp.exp(chwn, out=xp.empty_like(chwn))
    assert kept.strides == chwn.strides
    assert xp.copy(chwn).strides == chwn.strides and chwn.astype(np.float64).strides == tuple(
        2 * s for s in chwn.strides)  # order='K' keeps it, as in CuPy


@pytest.mark.parametrize("view", [
    lambda a: a.transpose(3, 0, 1, 2),                   # NCHW view of (C, H, W, N) memory
    lambda a: a.transpose(3, 0, 1, 2)[:, :, ::2, 1::2],   # a pooling window of it
    lambda a: a.reshape(6, 20).T,                          # F-ordered 2-D
    lambda a: a[1:, :, 2],                                 # a plain slice
])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, bool])
def test_cupys_empty_like_keeps_the_layout_as_numpys_does(view, dtype):
    """CuPy's own K-order rule (_new_like_order_and_strides, run on the host) gives the
    strides NumPy's empty_like gives: empty_like(x) is a layout-keeping out= array."""
    assert inspect.signature(cupy.empty_like).parameters["order"].default == "K"
    a = view(np.zeros((2, 3, 4, 5), np.float32))
    assert cupy_api.cupy_like_strides(a, dtype) == np.empty_like(a, dtype=dtype).strides


# -- indexing: wrap-around and scatter order, as on CuPy -----------------------------------------
def test_out_of_range_integer_indices_wrap_around_silently(sb):
    x = on_device(sb, np.arange(3, dtype=np.float32) * 10)
    idx = on_device(sb, np.array([5, -1, 3]))
    with pytest.raises(IndexError):
        np.arange(3)[np.array([5])]  # NumPy raises...
    np.testing.assert_array_equal(sb.to_numpy(x[idx]), [20, 20, 0])  # ...CuPy wraps around


def test_out_of_range_device_labels_give_a_wrong_loss_silently():
    """Why labels are validated on the host before upload (gpucnn.data.batches.check_labels):
    on a GPU CuPy's generic gather scores a label 10 for 10 classes as class 0, silently;
    the fused loss kernel ("softmax_ce" group) makes that row's loss NaN instead."""
    logits = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    labels = np.array([1, 2, 3, 10])
    generic, fused = standin_backend(kernels="none"), standin_backend(kernels="softmax_ce")
    bad = SoftmaxCrossEntropy().forward(generic.asarray(logits), generic.asarray(labels))
    wrapped = SoftmaxCrossEntropy().forward(logits, np.array([1, 2, 3, 0]))
    assert float(bad) == pytest.approx(float(wrapped), rel=1e-6)
    assert np.isnan(float(SoftmaxCrossEntropy().forward(fused.asarray(logits), fused.asarray(labels))))
    with pytest.raises(ValueError, match=r"labels in \[0, 10\)"):
        SoftmaxCrossEntropy().forward(logits, np.array([1, 2, 3, 10]))  # on the host: refused


def test_duplicate_index_scatters_land_in_another_order_than_numpys(sb):
    idx = np.array([0, 2, 0])
    host = np.zeros(3, np.float32)
    host[idx] = [1, 2, 3]  # NumPy: the last write wins
    dev = on_device(sb, np.zeros(3, np.float32))
    dev[on_device(sb, idx)] = on_device(sb, np.array([1, 2, 3], np.float32))
    assert host[0] == 3 and sb.to_numpy(dev)[0] != 3  # code relying on the order fails parity
    assert sb.xp.counts["duplicate_scatters"] == 1


def test_host_index_arrays_are_refused(sb):
    x = on_device(sb, np.arange(3, dtype=np.float32))
    with expect_findings(), pytest.raises(DeviceDisciplineError, match="xp.arange"):
        x[np.array([0, 1])]


def test_numpy_functions_and_host_arrays_are_refused(sb):
    x = on_device(sb, np.ones((2, 3), np.float32))
    for bad in (lambda: np.exp(x), lambda: np.pad(x, 1), lambda: np.asarray(x), lambda: np.sum(x),
                lambda: x + np.ones(3, np.float32), lambda: np.ones(3, np.float32) * x):
        with expect_findings(), pytest.raises(DeviceDisciplineError):
            bad()
    y = np.float32(2) * x + 1.5  # scalars are fine, as on CuPy
    assert isinstance(y, sb.xp.ndarray) and y.dtype == np.float32


# -- counting: every copy to the host, every synchronisation ----------------------------------------
@pytest.mark.parametrize("download", [
    float, lambda a: a.item(), lambda a: a.get(), repr, str, lambda a: f"{a:.3f}", lambda a: print(a),
    lambda a: int(a > 0), lambda a: bool(a > 0), lambda a: np.arange(3)[a.astype(np.int64)],
])
def test_every_device_to_host_copy_is_counted(sb, download, capsys):
    x = on_device(sb, np.float32(1.5))
    sb.xp.reset_transfers()
    download(x)
    assert sb.xp.counts["to_host"] == 1 and sb.xp.counts["syncs"] == 1


def test_boolean_masks_nonzero_and_synchronize_are_syncs_without_copies(sb):
    x = on_device(sb, np.array([1.0, -2.0, 3.0], np.float32))
    sb.xp.reset_transfers()
    x[x > 0]
    x[x < 0] = 0
    sb.xp.nonzero(x)
    x.nonzero()
    sb.synchronize()
    assert sb.xp.counts["syncs"] == 5 and sb.xp.counts["to_host"] == 0
    assert {where.split(":")[0] for _, where, _ in sb.xp.sites} == {"tests/test_standin_conformance.py"}


# -- work: what the GPU model counts ---------------------------------------------------------------
def test_kernels_bytes_and_flops_are_counted_and_views_are_free(sb):
    xp, work = sb.xp, sb.xp.work
    a = on_device(sb, np.ones((4, 6), np.float32))
    b = on_device(sb, np.ones((6, 5), np.float32))
    work.reset()
    a.T.reshape(6, 4)[1:]  # views: no kernel
    xp.empty((3, 3), dtype=np.float32)  # allocation: no kernel
    assert work.launches == 0
    a @ b
    assert (work.launches, work.flops, work.bytes_read, work.bytes_written) == (1, 2 * 4 * 5 * 6, 4 * (24 + 30), 4 * 20)
    work.reset()
    a + 1
    xp.zeros(10, dtype=np.float32)
    a[0] += 1  # one add; the write-back onto itself is skipped, as CuPy does
    assert work.launches == 3 and work.by_kind == {"elementwise": 2, "fill": 1}


# -- planted violations: each makes the test that runs it fail -------------------------------------
def run_relu_parity():
    from test_backends import layer_parity
    layer_parity("relu", standin_backend())


def test_planted_call_that_cupy_lacks_fails_the_layer_test(monkeypatch):
    line = plant(monkeypatch, activations.ReLU, "forward",
                 "y = xp.maximum(x, 0, out=xp.empty_like(x))", "y = xp.block([[xp.maximum(x, 0)]])")
    with expect_findings() as found, pytest.raises(CupyAttributeError) as raised:
        run_relu_parity()
    assert f"{line}: cupy.block does not exist in CuPy" in str(raised.value)
    assert found == [(f"cupy.block", line, found[0].message)] and line.startswith("gpucnn/nn/layers/activations.py:")


def test_planted_keyword_cupy_rejects_fails_the_layer_test(monkeypatch):
    line = plant(monkeypatch, activations.ReLU, "forward",
                 "y = xp.maximum(x, 0, out=xp.empty_like(x))", "y = xp.maximum(x, 0, where=True)")
    with expect_findings() as found, pytest.raises(CupyConformanceError, match=rf"{line}: cupy\.maximum\(\) got where="):
        run_relu_parity()
    assert [(f.call, f.location) for f in found] == [("cupy.maximum(where=)", line)]


def test_a_swallowed_violation_still_fails_the_test():
    from conftest import fail_on_new_findings
    start = len(FINDINGS)
    sb = standin_backend()
    try:
        sb.xp.block([[on_device(sb, np.ones(2))]])
    except Exception:  # e.g. a broad except in library code
        pass
    with pytest.raises(pytest.fail.Exception, match=r"cupy\.block does not exist"):
        fail_on_new_findings(start)
    assert len(FINDINGS) == start
