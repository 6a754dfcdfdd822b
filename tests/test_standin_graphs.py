"""The CuPy stand-in's ``xp.cuda``: streams, CUDA-graph capture and replay (tests/standin/
graphs.py). A capture changes no array that existed before it, each ``graph.launch()``
applies the captured work once to the arrays' contents at launch time, with the capture's
Python scalars baked in, and what a captured stream cannot do is refused.
Device: the CuPy stand-in."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backends import kernels
from gpucnn.backends.kernels import gemm
from gpucnn.data.batches import load_digits
from gpucnn.nn.losses import SoftmaxCrossEntropy
from gpucnn.optim import SGD
from gpucnn.training.run import build_model
from standin import (CupyAttributeError, CupyConformanceError, NotModeledError, expect_findings,
                     standin_backend)

CAPTURE_REFUSED = "not allowed during CUDA stream capture"


@pytest.fixture
def sb():
    return standin_backend(kernels="all")


def device_array(backend, values):
    return backend.asarray(np.asarray(values, dtype=np.float32))


def captured(backend, work):
    """``work()`` captured on a fresh non-blocking stream, as gpucnn captures: the graph."""
    stream = backend.xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            work()
        finally:
            graph = stream.end_capture()
    return graph


def test_a_capture_changes_nothing_and_each_launch_applies_it_once_to_the_inputs_of_then(sb):
    xp, host = sb.xp, sb.to_numpy
    x, dy = device_array(sb, [-1.0, 2.0, 0.5, 3.0]), device_array(sb, [10.0, 20.0, 30.0, 40.0])
    out, total, dx = xp.zeros(4, dtype=np.float32), xp.ones(4, dtype=np.float32), xp.zeros(4, dtype=np.float32)
    made = {}

    def step():
        made["y"] = x * 2  # a fresh array, made during the capture
        out[...] = made["y"] + 1
        total[...] += x
        kernels.launch("relu.relu_backward", (1,), (32,), (x, dy, dx, np.int64(4)))
    graph = captured(sb, step)
    for array, before in ((x, [-1, 2, 0.5, 3]), (out, 0), (total, 1), (dx, 0)):
        np.testing.assert_array_equal(host(array), np.broadcast_to(before, (4,)))  # as before the capture
    assert np.isnan(host(made["y"])).all()  # made during the capture: unset until a launch

    graph.launch()
    np.testing.assert_array_equal(host(made["y"]), [-2, 4, 1, 6])
    np.testing.assert_array_equal(host(out), [-1, 5, 2, 7])
    np.testing.assert_array_equal(host(total), [0, 3, 1.5, 4])
    np.testing.assert_array_equal(host(dx), [0, 20, 30, 40])

    x[...] = device_array(sb, [4.0, -5.0, 6.0, -7.0])  # the next launch reads these
    graph.launch()
    np.testing.assert_array_equal(host(made["y"]), [8, -10, 12, -14])
    np.testing.assert_array_equal(host(out), [9, -9, 13, -13])
    np.testing.assert_array_equal(host(total), [4, -2, 7.5, -3])  # once per launch
    np.testing.assert_array_equal(host(dx), [10, 0, 30, 0])


def test_python_scalars_are_baked_in_at_capture_and_views_see_the_replayed_numbers(sb):
    xp, host = sb.xp, sb.to_numpy
    weight, grad = device_array(sb, [1.0, 2.0, 3.0, 4.0]), device_array(sb, [1.0, 1.0, 1.0, 1.0])
    index = xp.arange(3, -1, -1)
    hyper, made = {"lr": 0.5}, {}

    def step():
        weight[...] -= hyper["lr"] * grad  # a host value: the graph keeps 0.5
        made["square"] = (weight * weight).reshape(2, 2)  # a view of a fresh array
        made["reversed"] = weight[index]  # a gather
        made["sum"] = weight.sum()
    graph = captured(sb, step)
    hyper["lr"] = 100.0
    graph.launch()
    graph.launch()
    np.testing.assert_array_equal(host(weight), [0, 1, 2, 3])
    np.testing.assert_array_equal(host(made["square"]), [[0, 1], [4, 9]])
    np.testing.assert_array_equal(host(made["reversed"]), [3, 2, 1, 0])
    assert float(made["sum"]) == 6.0


def test_a_captured_sgd_step_replays_exactly_as_eager_steps():
    """gpucnn's own forward, loss, backward and optimizer update (the fused kernels and the
    multi-tensor update through its address table), its products through gemm.matmul inside
    gemm.capture_safe, as gpucnn.backends.cuda_graphs records them."""
    eager, graphed = (_sgd_setup("all") for _ in range(2))
    for setup in (eager, graphed):
        _sgd_step(*setup)  # the first step uploads the optimizer's table: never in a capture
    with gemm.capture_safe(graphed[0].xp):
        graph = captured(graphed[0], lambda: _sgd_step(*graphed))
    for _ in range(3):
        _sgd_step(*eager)
        graph.launch()
    for (key, layer, name), (_, twin, _) in zip(eager[1].named_parameters(), graphed[1].named_parameters()):
        np.testing.assert_array_equal(graphed[0].to_numpy(twin.params[name]),
                                      eager[0].to_numpy(layer.params[name]), err_msg=key)


def test_cupys_own_matmul_is_refused_in_a_capture():
    """CuPy's matmul (the generic code: no "gemm" group) calls cuBLAS through CuPy's binding,
    which refuses every call while a stream captures: so does the stand-in's."""
    setup = _sgd_setup("none")
    _sgd_step(*setup)
    with expect_findings() as found, pytest.raises(CupyConformanceError, match="cuBLAS API during stream capture"):
        captured(setup[0], lambda: _sgd_step(*setup))
    assert len(found) == 1 and "cupy.matmul" in str(found[0])


def _sgd_setup(selection):
    backend, data = standin_backend(kernels=selection), load_digits()
    model = build_model("simple", data.input_shape, 10, np.random.default_rng(0)).to(backend)
    return (backend, model, SGD(model, 0.1, momentum=0.9), SoftmaxCrossEntropy(),
            backend.asarray(data.train_x[:16]), backend.asarray(data.train_y[:16]))


def _sgd_step(backend, model, optimizer, loss_fn, x, y):
    loss_fn.forward(model.forward(x), y)
    model.backward(loss_fn.backward(), need_input_grad=False)
    optimizer.step()


REFUSED = {
    "download": lambda sb, x: sb.to_numpy(x),
    "float()": lambda sb, x: float(x.sum()),
    "upload": lambda sb, x: sb.asarray(np.ones(2, np.float32)),
    "xp.asarray of a list": lambda sb, x: sb.xp.asarray([1.0, 2.0]),
    "synchronize()": lambda sb, x: sb.synchronize(),
    "stream.synchronize()": lambda sb, x: sb.xp.cuda.get_current_stream().synchronize(),
    "boolean mask": lambda sb, x: x[x > 0],
    "random draw": lambda sb, x: sb.xp.random.default_rng(0).random(4, dtype=np.float32),
}


@pytest.mark.parametrize("operation", REFUSED)
def test_what_a_captured_stream_cannot_do_is_refused_and_the_capture_still_ends(sb, operation):
    x = device_array(sb, [1.0, -2.0, 3.0, -4.0])
    stream = sb.xp.cuda.Stream(non_blocking=True)
    with expect_findings() as found, pytest.raises(CupyConformanceError, match=CAPTURE_REFUSED):
        with stream:
            stream.begin_capture()
            try:
                x *= 10  # runs (in the stand-in), but no array changes until the graph launches
                REFUSED[operation](sb, x)
            finally:
                graph = stream.end_capture()
    assert len(found) == 1 and CAPTURE_REFUSED in found[0].message
    assert not stream.is_capturing()
    np.testing.assert_array_equal(sb.to_numpy(x), [1, -2, 3, -4])
    graph.launch()
    np.testing.assert_array_equal(sb.to_numpy(x), [10, -20, 30, -40])


def test_a_graph_launch_counts_one_launch_and_none_of_its_operations(sb):
    xp, work = sb.xp, sb.xp.work
    x, out = device_array(sb, np.arange(6)), xp.zeros(6, dtype=np.float32)
    graph = captured(sb, lambda: out.__setitem__(Ellipsis, xp.exp(x) + x.sum()))
    before, kinds = work.totals(), dict(work.by_kind)
    graph.launch()
    assert work.totals() == {**before, "launches": before["launches"] + 1}  # no bytes, no FLOPs
    assert dict(work.by_kind) == {**kinds, "graph launch": kinds.get("graph launch", 0) + 1}
    np.testing.assert_allclose(sb.to_numpy(out), np.exp(np.arange(6)) + 15, rtol=1e-6)


@pytest.mark.parametrize("misuse, message", [
    (lambda xp, stream: stream.begin_capture(), r"not the current stream"),
    (lambda xp, stream: _inside(stream, lambda: (stream.begin_capture(), stream.begin_capture())),
     r"capturing already"),
    (lambda xp, stream: xp.cuda.Stream(null=True).begin_capture(), r"null stream cannot capture"),
    (lambda xp, stream: stream.end_capture(), r"not capturing"),
    (lambda xp, stream: stream.wait_event(object()), r"needs a cupy.cuda.Event"),
    (lambda xp, stream: xp.cuda.using_allocator(3), r"needs a callable"),
    (lambda xp, stream: xp.cuda.Stream(non_blockin=True), r"refuses this call"),
])
def test_stream_misuse_is_refused(sb, misuse, message):
    stream = sb.xp.cuda.Stream(non_blocking=True)
    with expect_findings() as found, pytest.raises(CupyConformanceError, match=message):
        misuse(sb.xp, stream)
    assert len(found) == 1


def _inside(stream, work):
    with stream:
        work()


def test_launching_a_graph_while_a_stream_captures_is_refused(sb):
    x = device_array(sb, [1.0])
    graph = captured(sb, lambda: x.__iadd__(1))
    with expect_findings() as found, pytest.raises(CupyConformanceError, match=CAPTURE_REFUSED):
        captured(sb, graph.launch)
    assert len(found) == 1
    graph.launch()
    np.testing.assert_array_equal(sb.to_numpy(x), [2.0])


def test_streams_are_current_inside_with_and_events_order_nothing(sb):
    cuda, work = sb.xp.cuda, sb.xp.work
    null = cuda.get_current_stream()
    assert null is cuda.get_current_stream() and null.ptr == 0 and not null.is_capturing()
    first, second = cuda.Stream(non_blocking=True), cuda.Stream()
    assert len({0, first.ptr, second.ptr}) == 3
    with first:
        assert cuda.get_current_stream() is first
        with second:
            assert cuda.get_current_stream() is second
        assert cuda.get_current_stream() is first
    assert cuda.get_current_stream() is null
    before = work.totals()
    with first:
        first.begin_capture()
        assert first.is_capturing() and not second.is_capturing()
        second.wait_event(first.record())
        first.end_capture()
    assert work.totals() == before and not first.is_capturing()


def test_arrays_made_during_a_capture_are_unset_until_a_launch(sb):
    """A GPU executes nothing while a stream captures: an array made then holds whatever its
    memory held. The stand-in leaves NaN in floats, the largest value in integers, True in
    booleans; views of arrays that existed before keep the restored numbers."""
    xp, host = sb.xp, sb.to_numpy
    x = device_array(sb, [1.0, -2.0, 3.0])
    made = {}

    def step():
        made["float"] = x * 2
        made["int"] = xp.argmax(x[None, :], axis=1)
        made["bool"] = x > 0
        made["empty"] = xp.empty(3, dtype=np.int32)
        made["view"] = x[1:]
    graph = captured(sb, step)
    assert np.isnan(host(made["float"])).all() and host(made["int"])[0] == np.iinfo(np.int64).max
    assert host(made["bool"]).all() and (host(made["empty"]) == np.iinfo(np.int32).max).all()
    np.testing.assert_array_equal(host(made["view"]), [-2, 3])
    graph.launch()
    np.testing.assert_array_equal(host(made["float"]), [2, -4, 6])
    assert host(made["int"])[0] == 2 and host(made["bool"]).tolist() == [True, False, True]


def test_memory_pools_hold_nothing_but_remember_what_a_gpu_pool_would_cache(sb):
    """A pool handed to using_allocator would cache blocks on a GPU until free_all_blocks();
    CuPy 14.2 keeps a dropped pool's blocks for good (cupy/cuda/memory.pyx:
    SingleDeviceMemoryPool has no __dealloc__), so ``streams.holding_pools`` keeps it."""
    cuda, holding = sb.xp.cuda, sb.xp.streams.holding_pools
    pool = cuda.MemoryPool()
    assert holding == []
    with cuda.using_allocator(pool.malloc):
        x = sb.xp.zeros(4, dtype=np.float32)
    assert x.shape == (4,) and pool.used_bytes() == pool.total_bytes() == 0 and holding == [pool]
    pool.free_all_blocks()
    assert holding == [] and pool.frees == 1
    with cuda.using_allocator(cuda.MemoryPool().malloc):
        pass
    assert len(holding) == 1  # dropped, never emptied: still listed


@pytest.mark.parametrize("owner, name, error", [
    ("cuda", "Strem", CupyAttributeError),
    ("cuda", "Device", NotModeledError),
    ("stream", "begin_captur", CupyAttributeError),
    ("stream", "launch_host_func", NotModeledError),
    ("graph", "upload", NotModeledError),
])
def test_names_are_checked_against_cupy_cuda(sb, owner, name, error):
    cuda = sb.xp.cuda
    objects = {"cuda": cuda, "stream": cuda.Stream(), "graph": captured(sb, lambda: None)}
    with expect_findings(), pytest.raises(error, match=name):
        getattr(objects[owner], name)


def test_xp_cuda_models_exactly_what_gpucnn_uses(sb):
    assert sorted(n for n in dir(sb.xp.cuda) if not n.startswith("_")) == [
        "MemoryPool", "Stream", "get_current_stream", "using_allocator"]
