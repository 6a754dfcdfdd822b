"""gpucnn.backends.cpu_threads: layer work in cache-sized groups of channels, on a few CPU threads.

The chunking changes which values NumPy adds up together and nothing else, so BatchNorm
in chunks on several threads must equal the naive float64 reference exactly as the
one-piece path does (tests/test_toolkit_layers.py), for both layouts."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import reference as ref
from gpucnn import BatchNorm1D, BatchNorm2D, Conv2D, Flatten, MaxPool2D, ReLU, Sequential
from gpucnn.backends import cpu_threads as parallel
from standin import standin_backend

F64 = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of 64 bytes on 3 threads: the test shapes split into many groups."""
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 64)
    previous = parallel.get_num_threads()
    parallel.set_num_threads(3)
    yield
    parallel.set_num_threads(previous)


def chwn(x):
    """x (N, C, H, W) -> the same values as an NCHW view of (C, H, W, N) memory (Conv2D's output)."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # (N, C, H, W)


def test_chunks_cover_every_channel_once_in_order(tiny_chunks):
    x = np.zeros((4, 7, 3, 3), dtype=np.float32)  # 252 bytes per channel
    chunks = parallel.channel_chunks(x)
    assert len(chunks) == 7
    covered = np.concatenate([np.arange(7)[c] for c in chunks])
    np.testing.assert_array_equal(covered, np.arange(7))


def test_small_and_device_arrays_stay_in_one_piece(tiny_chunks):
    assert parallel.channel_chunks(np.zeros((2, 1, 3, 3), dtype=np.float32)) == [slice(None)]  # one channel
    parallel.CHUNK_BYTES = 1 << 20
    assert parallel.channel_chunks(np.zeros((8, 4, 8, 8), dtype=np.float32)) == [slice(None)]  # 8 KiB
    parallel.CHUNK_BYTES = 64
    device = standin_backend()
    assert parallel.channel_chunks(device.asarray(np.zeros((4, 7, 3, 3), dtype=np.float32))) == [slice(None)]


def test_every_chunk_runs_once_on_several_threads(tiny_chunks):
    x = np.zeros((16, 12, 2, 2), dtype=np.float32)
    seen, threads = [], set()
    lock = threading.Lock()

    def work(channels):
        with lock:
            seen.append((channels.start, channels.stop))
            threads.add(threading.get_ident())

    parallel.over_channel_chunks(x, work)
    assert sorted(seen) == [(c.start, c.stop) for c in parallel.channel_chunks(x)]
    assert len(threads) >= 2  # the caller's and the pool's (a quick pool thread may take both lists)


def test_an_exception_in_any_chunk_is_raised_after_all_have_finished(tiny_chunks):
    x = np.zeros((16, 12, 2, 2), dtype=np.float32)
    failing = parallel.channel_chunks(x)[0].start  # the caller's own first chunk
    done = []

    def work(channels):
        if channels.start == failing:
            raise RuntimeError("chunk 0 failed")
        time.sleep(0.01)
        done.append(channels.start)

    with pytest.raises(RuntimeError, match="chunk 0 failed"):
        parallel.over_channel_chunks(x, work)
    finished = len(done)
    time.sleep(0.05)
    assert finished == len(done) > 0  # the other threads had finished: nothing writes after the raise


@pytest.mark.parametrize("make, shape, layout", [
    (lambda: BatchNorm2D(5, dtype=np.float64), (6, 5, 3, 4), "chwn"),
    (lambda: BatchNorm2D(5, dtype=np.float64), (6, 5, 3, 4), "c"),
    (lambda: BatchNorm1D(9, dtype=np.float64), (7, 9), "c"),
])
def test_batchnorm_in_chunks_on_threads_matches_the_naive_reference(make, shape, layout, tiny_chunks, rng):
    layer = make()
    layer.params["weight"][...] = rng.standard_normal(layer.num_features)
    layer.params["bias"][...] = rng.standard_normal(layer.num_features)
    x = 1.5 + 2 * rng.standard_normal(shape)
    x = chwn(x) if layout == "chwn" else x
    assert len(parallel.channel_chunks(x)) > 2
    y = layer.forward(x)
    expected, mean, var = ref.batchnorm_forward(x, layer.params["weight"], layer.params["bias"], layer.eps)
    np.testing.assert_allclose(y, expected, **F64)
    count = x.size // x.shape[1]
    np.testing.assert_allclose(layer.state["running_var"], 0.9 + 0.1 * var * count / (count - 1), **F64)
    dy = rng.standard_normal(shape)  # C-contiguous: another layout than x's for "chwn"
    dx = layer.backward(dy)
    ref_dx, ref_dw, ref_db = ref.batchnorm_backward(x, layer.params["weight"], layer.eps, dy)
    np.testing.assert_allclose(dx, ref_dx, **F64)
    np.testing.assert_allclose(layer.grads["weight"], ref_dw, **F64)
    np.testing.assert_allclose(layer.grads["bias"], ref_db, **F64)
    assert y.strides == x.strides and dx.strides == x.strides
    layer.training = False  # evaluation mode in chunks: the running statistics, dx = scale * dy
    y = layer.forward(x)
    expected, _, _ = ref.batchnorm_forward(x, layer.params["weight"], layer.params["bias"], layer.eps,
                                           layer.state["running_mean"], layer.state["running_var"])
    np.testing.assert_allclose(y, expected, **F64)
    scale = layer.params["weight"] / np.sqrt(layer.state["running_var"] + layer.eps)
    np.testing.assert_allclose(layer.backward(dy), dy * scale.reshape((-1,) + (1,) * (len(shape) - 2)), **F64)


def test_float32_batchnorm_in_chunks_equals_one_piece_to_rounding(rng, monkeypatch):
    x = chwn((3 + rng.standard_normal((32, 16, 8, 8))).astype(np.float32))
    dy = chwn(rng.standard_normal(x.shape).astype(np.float32))
    whole, chunked = BatchNorm2D(16), BatchNorm2D(16)
    y, dx = whole.forward(x), whole.backward(dy)
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 4096)
    assert len(parallel.channel_chunks(x)) == 16
    np.testing.assert_allclose(chunked.forward(x), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked.backward(dy), dx, rtol=1e-4, atol=1e-5)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(chunked.grads[name], whole.grads[name], rtol=1e-4, atol=1e-4)


def test_thread_count_setting(monkeypatch):
    previous = parallel.get_num_threads()
    with pytest.raises(ValueError, match="positive int, got 0"):
        parallel.set_num_threads(0)
    parallel.set_num_threads(2)
    assert parallel.get_num_threads() == 2
    monkeypatch.setattr(parallel, "_num_threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert parallel.get_num_threads() == 1
    parallel.set_num_threads(previous)


@pytest.mark.parametrize("layers", [
    lambda rng: [Conv2D(3, 6, 3, padding=1, rng=rng), ReLU(), MaxPool2D(2), Conv2D(6, 4, 3, stride=2, rng=rng),
                 MaxPool2D(3, stride=1, padding=1), Flatten()],
    lambda rng: [Conv2D(3, 5, 5, padding=2, rng=rng), MaxPool2D(2, padding=1), Flatten()],
])
def test_convolution_and_pooling_in_chunks_equal_one_piece_bit_for_bit(layers, rng, monkeypatch):
    """im2col and col2im copy and add per input channel, max pooling compares per channel:
    chunks change no operation's operands, so the results are identical."""
    x = chwn(rng.standard_normal((6, 3, 10, 10)).astype(np.float32))
    results = []
    for chunk_bytes in (1 << 40, 64):
        monkeypatch.setattr(parallel, "CHUNK_BYTES", chunk_bytes)
        parallel.set_num_threads(3)
        model = Sequential(layers(np.random.default_rng(0)))
        y = model.forward(x)
        dx = model.backward(np.ones_like(y))
        results.append((y, [layer.grads.get("weight") for layer in model.layers if layer.params], dx))
    (y0, g0, dx0), (y1, g1, dx1) = results
    np.testing.assert_array_equal(y0, y1)
    for a, b in zip(g0, g1):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dx0, dx1)


def test_ranks_on_one_machine_share_its_cpus(monkeypatch):
    monkeypatch.setattr(parallel, "_num_threads", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(parallel, "_processes_sharing_cpus", 1)
    blas_limits = []  # BLAS gets the same share (the next test); this process's stays as it is
    monkeypatch.setattr(parallel, "_limit_blas_threads", blas_limits.append)
    assert parallel.get_num_threads() == 8
    parallel.share_cpus_with(3)
    assert parallel.get_num_threads() == 2  # 8 CPUs, 3 ranks: 2 threads each
    parallel.share_cpus_with(16)
    assert parallel.get_num_threads() == 1
    assert blas_limits == [2, 1]


def test_ranks_bound_to_cores_of_their_own_share_with_none():
    """The cause of a 16-core GPU machine's failure: its mpiexec bound each of 2 ranks to one
    core, and each then took half of that one core's share."""
    assert parallel.ranks_sharing_cpus(range(16), [range(16), range(16)]) == 2  # unbound
    assert parallel.ranks_sharing_cpus([0], [[0], [1]]) == 1  # bound to a core each
    assert parallel.ranks_sharing_cpus(range(8), [range(8), range(8, 16), range(4, 12)]) == 2
    assert parallel.ranks_sharing_cpus([0, 1], []) == 1


def _blas_threads(threadpoolctl):
    return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]


@pytest.mark.parametrize("chosen", [None, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"])
def test_ranks_on_one_machine_share_blas_threads_unless_the_user_chose(monkeypatch, chosen):
    """Each rank's BLAS gets the rank's share of the CPUs, as gpucnn's own threads do; a
    thread count the user set through the environment stands."""
    import threadpoolctl  # scikit-learn requires it, as gpucnn.backends.cpu_threads does
    for variable in parallel.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if chosen:
        monkeypatch.setenv(chosen, "2")
    monkeypatch.setattr(parallel, "_num_threads", None)
    monkeypatch.setattr(parallel, "_processes_sharing_cpus", 1)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    controller = threadpoolctl.ThreadpoolController()
    with controller.limit(limits=3, user_api="blas"):  # restores this process's BLAS threads after
        before = _blas_threads(threadpoolctl)
        assert before, "NumPy's BLAS is not visible to threadpoolctl"
        parallel.share_cpus_with(4)  # 8 CPUs, 4 ranks on this machine
        expected = before if chosen else [2] * len(before)
        assert _blas_threads(threadpoolctl) == expected
