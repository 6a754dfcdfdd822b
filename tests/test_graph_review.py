"""What a static review of the CUDA-graph path (gpucnn.backends.cuda_graphs) found, each checked on the CuPy
stand-in: the graph's memory pool, Adam's bias-correction table and the recording limit, the
steps unavailable() must refuse, a failing cuBLAS setup, the graph's key, and the arrays a
recording leaves unset. (gemm's side: tests/test_kernels_gemm_capture.py.)
Device: the CuPy stand-in (tests/standin/graphs.py, tests/standin/cublas.py)."""
from __future__ import annotations

import gc
import weakref

import cupy
import numpy as np
import pytest

import gpucnn.backends.backend
import gpucnn.backends.cuda_graphs
from gpucnn.backends.cuda_graphs import MAX_CAPTURES, GraphFallbackWarning, StepGraph, unavailable
from gpucnn.backends.kernels import gemm
from gpucnn.backends.kernels.optim import BiasCorrections
from gpucnn.nn.layers import Dense, Flatten
from gpucnn.training.loops import evaluate, train_epoch
from gpucnn.nn.model import Sequential
from gpucnn.optim import SGD, Adam
from standin import StandInDevice
from test_graphs import BATCH, IMAGES, assert_same_training, graph_backend, make_model, train


def data(backend, images=IMAGES, seed=1):
    rng = np.random.default_rng(seed)
    return (backend.asarray(rng.integers(0, 256, (images, 1, 28, 28)).astype(np.uint8)),
            backend.asarray(rng.integers(0, 10, images)))


def test_recordings_reuse_one_memory_pool_which_is_emptied_when_graphs_end():
    """Item 1. CuPy 14.2 never frees a dropped pool's cached blocks (cupy/cuda/memory.pyx:
    SingleDeviceMemoryPool has no __dealloc__; _Arena's index holds each free chunk with
    Py_INCREF; the stand-in lists such pools in ``streams.holding_pools``). So every recording
    of a step takes the same pool; giving graphs up empties it after the next eager step (the
    graph's arrays are freed by then), and so does the step's end."""
    backend = graph_backend("standin")
    holding = backend.xp.streams.holding_pools
    model = make_model("simple").to(backend)
    optimizer = SGD(model, 0.05, momentum=0.9)
    x, y = data(backend)
    order = np.random.default_rng(2)
    for epoch in range(MAX_CAPTURES):
        optimizer.lr = 0.05 / (epoch + 1)  # a new rate: the step records again
        train_epoch(model, optimizer, x, y, BATCH, order)
    graph = optimizer.graph_step.graph
    assert graph.captures == MAX_CAPTURES and graph.reason is None and len(holding) == 1
    pool = holding[0]
    optimizer.lr = 0.001
    train_epoch(model, optimizer, x, y, BATCH, order)  # one change too many: eager from now on
    assert "hyperparameters" in graph.reason and "learning-rate schedule" in graph.reason
    assert holding == [] and pool.frees == 1

    other = make_model("simple").to(backend)
    other_optimizer = SGD(other, 0.05)
    train_epoch(other, other_optimizer, x, y, BATCH, order)
    assert len(holding) == 1
    del other, other_optimizer
    gc.collect()
    assert holding == []  # the step (with the optimizer, the model) is gone: its pool emptied


def test_adam_keeps_its_graph_past_many_refreshes_of_its_correction_table(monkeypatch):
    """Item 2. The correction table holds ROWS steps; moving past it uploads a new one and the
    step records again. Those recordings are routine: they never count toward MAX_CAPTURES
    (before, Adam lost its graph for good after 4 * 1024 steps). ROWS shrunk to 4 here."""
    monkeypatch.setattr(BiasCorrections, "ROWS", 4)
    runs = {}
    for graphs in (True, False):
        backend = graph_backend("standin", graphs)
        model = make_model("simple").to(backend)
        optimizer = Adam(model, 1e-3)
        x, y = data(backend)
        order = np.random.default_rng(2)
        losses = [train_epoch(model, optimizer, x, y, BATCH, order)[0] for _ in range(6)]
        runs[graphs] = ({k: backend.to_numpy(layer.params[n]) for k, layer, n in model.named_parameters()},
                        losses, optimizer.graph_step)
    step = runs[True][2]
    graph = step.graph
    assert graph.reason is None and graph.refreshes >= MAX_CAPTURES and graph.captures > MAX_CAPTURES
    assert graph.captures - graph.refreshes == 1 and graph.replays > 0
    before = graph.replays
    train_epoch(step.model, step.optimizer, step.x, step.y, BATCH, np.random.default_rng(3))
    assert graph.replays > before  # still replaying
    for name, value in runs[False][0].items():
        np.testing.assert_array_equal(runs[True][0][name], value, err_msg=name)
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_array_equal(a, b)


def test_parameters_the_one_launch_update_cannot_take_are_not_graphed():
    """Item 4. The optimizer's fused update (which a graph replays) takes float32, C-contiguous
    parameters only; otherwise each parameter takes the per-tensor update, where Adam computes
    its bias corrections on the host: a replay would reuse one step's. unavailable() says so."""
    backend = graph_backend("standin")
    wide = Sequential([Flatten(), Dense(784, 10, dtype=np.float64)]).to(backend)
    reason = unavailable(wide, Adam(wide))
    assert reason is not None and "1.weight" in reason and "float64" in reason and "float32" in reason
    model = make_model("simple").to(backend)
    layer = model.layers[-1]
    layer.params["weight"] = backend.xp.asfortranarray(layer.params["weight"])
    reason = unavailable(model, Adam(model))
    assert reason is not None and "C-contiguous" in reason
    optimizer = Adam(model)
    x, y = data(backend)
    train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(2))
    assert optimizer.graph_step is None  # trained eagerly


@pytest.mark.parametrize("failure", ["CDLL", "missing symbol", "workspace"])
def test_a_failing_cublas_setup_trains_eagerly_with_a_warning(monkeypatch, failure):
    """Item 6. Opening libcublas, finding one of its functions, or allocating cuBLAS's 32 MiB
    workspace may fail before the recording starts: graphs fall back with a
    GraphFallbackWarning naming the cause, and training goes on as without graphs."""
    eager = train("standin", "simple", False)
    if failure == "workspace":
        def empty(device, shape, *args, **kwargs):
            if shape == gemm.WORKSPACE_BYTES:
                raise cupy.cuda.memory.OutOfMemoryError(shape, 0)
            return StandInDevice.__getattr__(device, "empty")(shape, *args, **kwargs)
        monkeypatch.setattr(StandInDevice, "empty", empty, raising=False)
        cause = "OutOfMemoryError"
    else:
        error = OSError("libcublas.so.12: cannot open shared object file") if failure == "CDLL" else \
            AttributeError("undefined symbol: cublasSetWorkspace_v2")
        cause = type(error).__name__

        def binding(xp):
            raise error
        monkeypatch.setattr(gemm, "cublas_capture_binding", binding)
    with pytest.warns(GraphFallbackWarning, match=f"setting up the recording failed \\({cause}"):
        graphed = train("standin", "simple", True)
    assert graphed[3].reason.startswith("setting up the recording failed") and graphed[3].replays == 0
    assert_same_training(graphed, eager, exact=True)


def test_the_key_holds_its_arrays_and_compares_them_by_identity():
    """Item 7. A key of ids would match a new array that took a freed one's id; the key holds
    the arrays themselves (so none is freed while it lives) and compares them with ``is``,
    its numbers with ==, never an array's elements (which would read the device)."""
    backend = graph_backend("standin")
    model = make_model("simple").to(backend)
    optimizer = SGD(model, 0.05)
    graph = StepGraph(model, optimizer, lambda: None)
    key = graph.key()
    layer = model.layers[-1]
    old = layer.params["weight"]
    memory = weakref.ref(old._a)  # the buffer under the device array
    held = [i for i, a in enumerate(key[0]) if a is old]
    assert len(held) == 1
    same_key = gpucnn.backends.cuda_graphs.same_key
    layer.params["weight"] = old.copy()  # equal numbers, another array
    syncs = backend.xp.counts["syncs"]
    assert not same_key(key, graph.key()) and backend.xp.counts["syncs"] == syncs
    del old
    gc.collect()
    assert memory() is not None  # held by the key
    layer.params["weight"] = key[0][held[0]]  # the very array again
    assert same_key(key, graph.key())
    optimizer.lr = 0.01
    assert not same_key(key, graph.key())
    assert same_key((1, (0.5, None), "x"), (1, (0.5, None), "x")) and not same_key((1,), (2,))


def test_arrays_made_while_recording_are_not_read_before_the_first_replay():
    """Item 9. On a GPU the arrays a recording makes (layer.grads, the loss gradient, the
    caches) hold garbage until the graph's first launch: the stand-in leaves NaN there. After
    a recording the model's gradients are unset; a partial batch (eager), evaluation and a
    checkpoint's state before any replay give what they give without graphs."""
    backend = graph_backend("standin")
    model = make_model("simple").to(backend)
    optimizer = SGD(model, 0.05, momentum=0.9)
    x, y = data(backend, images=BATCH)
    train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(2))  # warm-up, then the recording
    assert optimizer.graph_step.graph.captures == 1 and optimizer.graph_step.graph.replays == 0
    assert all(np.isnan(backend.to_numpy(g)).all() for layer in model.layers for g in layer.grads.values())

    results = {}
    for graphs in (True, False):
        backend = graph_backend("standin", graphs)
        model = make_model("simple").to(backend)
        optimizer = SGD(model, 0.05, momentum=0.9)
        x, y = data(backend, images=BATCH + 5)  # a full batch (recorded), a partial one (eager)
        losses = train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(2))[0]
        loss, accuracy, _ = evaluate(model, x, y)
        results[graphs] = (losses, loss, accuracy, model.state_dict(), optimizer.state_dict()["state"])
    np.testing.assert_array_equal(results[True][0], results[False][0])
    assert results[True][1:3] == results[False][1:3]
    for key, value in results[False][3].items():
        np.testing.assert_array_equal(results[True][3][key], value, err_msg=key)
    for key, buffers in results[False][4].items():
        for name, value in buffers.items():
            np.testing.assert_array_equal(results[True][4][key][name], value, err_msg=f"{key}/{name}")


def test_the_graphs_default_lives_in_code_and_the_environment_overrides_it(monkeypatch):
    """Off by default (gpucnn.backends.backend.GRAPHS_DEFAULT) until a GPU run checks graphs; an
    explicit argument wins, then GPUCNN_CUDA_GRAPHS when set, then the default."""
    monkeypatch.delenv("GPUCNN_CUDA_GRAPHS", raising=False)
    assert gpucnn.backends.backend.GRAPHS_DEFAULT is False and gpucnn.backends.backend.graphs_selected() is False
    monkeypatch.setattr(gpucnn.backends.backend, "GRAPHS_DEFAULT", True)
    assert gpucnn.backends.backend.graphs_selected() is True and gpucnn.backends.backend.graphs_selected(False) is False
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "0")
    assert gpucnn.backends.backend.graphs_selected() is False and gpucnn.backends.backend.graphs_selected(True) is True
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "")
    assert gpucnn.backends.backend.graphs_selected() is True
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "yes")
    with pytest.raises(ValueError, match="GPUCNN_CUDA_GRAPHS expected 1 \\(on\\) or 0 \\(off\\), got 'yes'"):
        gpucnn.backends.backend.graphs_selected()
