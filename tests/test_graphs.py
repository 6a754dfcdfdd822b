"""CUDA graphs for the training step (gpucnn.backends.cuda_graphs): which steps are graphed, and that a
replayed step trains exactly as the eager one does.

Devices: the CuPy stand-in (its graphs record every operation during capture and replay them
on the same arrays with the captured scalars, executing nothing while recording:
tests/standin/graphs.py) and a real GPU when present (run by .ci/gpu).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import _CUPY, _NEEDS_GPU, BACKENDS, make_backend
from gpucnn.backends.kernel_groups import select as select_kernels
from gpucnn.backends.cuda_graphs import MAX_CAPTURES, GraphFallbackWarning, unavailable
from gpucnn.nn.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU
from gpucnn.training.loops import train_epoch
from gpucnn.nn.model import Sequential
from gpucnn.optim import SGD, Adam
from gpucnn.optim.schedules import make_schedule
from gpucnn.nn.zoo import build_model
from standin import expect_findings

BATCH, IMAGES = 16, 3 * 16 + 5  # three full batches and a partial one per epoch
GRAPH_KINDS = [BACKENDS[1], BACKENDS[3]]  # the stand-in, a real GPU
# A GPU's recorded products call cuBLAS with gpucnn's workspace, the eager ones with cuBLAS's
# own, so cuBLAS may pick other algorithms: float32 sums in another order, over 8 SGD steps
GPU_RTOL, GPU_ATOL = 1e-3, 1e-5


def conv_bn(rng):
    """The benchmark's conv-BN net, narrower: conv-BN-ReLU-pool twice, global pool, dense."""
    return Sequential([Conv2D(1, 8, 3, padding="same", rng=rng), BatchNorm2D(8), ReLU(), MaxPool2D(2),
                       Conv2D(8, 16, 3, padding="same", rng=rng), BatchNorm2D(16), ReLU(), MaxPool2D(2),
                       GlobalAvgPool2D(), Dense(16, 10, rng=rng)])


def make_model(arch):
    rng = np.random.default_rng(0)
    return conv_bn(rng) if arch == "conv-bn" else build_model(arch, (1, 28, 28), 10, rng)


def graph_backend(kind, graphs=True):
    backend = make_backend(kind, "all")
    backend.graphs = graphs
    return backend


@pytest.fixture(autouse=True)
def default_kernels_afterwards():
    """A real GPU's kernel selection is process-wide: back to the defaults after each test."""
    yield
    if _CUPY is not None:
        select_kernels(_CUPY, "default")


def train(kind, arch, graphs, epochs=2, schedule=None, lr=0.05):
    """Train ``epochs`` epochs on fixed random data; returns (host parameters, per-epoch
    (losses, correct), the optimizer's step count, the step's graph or None)."""
    backend = graph_backend(kind, graphs)
    model = make_model(arch).to(backend)
    optimizer = SGD(model, lr, momentum=0.9, weight_decay=1e-4)
    sched = None if schedule is None else make_schedule(schedule, optimizer, total_steps=4 * epochs)
    data = np.random.default_rng(1)
    x = backend.asarray(data.integers(0, 256, (IMAGES, 1, 28, 28)).astype(np.uint8))
    y = backend.asarray(data.integers(0, 10, IMAGES))
    order = np.random.default_rng(2)
    epochs_out = []
    for _ in range(epochs):
        losses, _, correct = train_epoch(model, optimizer, x, y, BATCH, order, schedule=sched)
        epochs_out.append((losses, correct))
    params = {k: backend.to_numpy(layer.params[n]) for k, layer, n in model.named_parameters()}
    state = {f"{i}.{n}": backend.to_numpy(v) for i, layer in enumerate(model.layers) for n, v in layer.state.items()}
    step = optimizer.graph_step  # the step train_epoch graphed, if any
    return {**params, **state}, epochs_out, optimizer.steps, (step.graph if step is not None else None)


def assert_same_training(graphed, eager, exact):
    (p_graph, e_graph, steps_graph, _), (p_eager, e_eager, steps_eager, _) = graphed, eager
    assert steps_graph == steps_eager
    check = np.testing.assert_array_equal if exact else (
        lambda a, b, err_msg="": np.testing.assert_allclose(a, b, rtol=GPU_RTOL, atol=GPU_ATOL, err_msg=err_msg))
    for (losses_g, correct_g), (losses_e, correct_e) in zip(e_graph, e_eager):
        check(losses_g, losses_e)
        assert correct_g == correct_e if exact else abs(correct_g - correct_e) <= 2  # a GPU: a near tie may flip
    for name in p_eager:
        check(p_graph[name], p_eager[name], err_msg=name)


@pytest.mark.parametrize("kind", GRAPH_KINDS)
@pytest.mark.parametrize("arch", ["simple", "lenet", "conv-bn"])
def test_a_graphed_step_trains_as_the_eager_step(kind, arch):
    """Two epochs of three full batches (one recording, then replays) and a partial batch
    (eager): the same losses, hits, weights and running statistics as without graphs.
    The stand-in runs the same operations in both: equal bit for bit; a GPU: within GPU_RTOL."""
    graphed, eager = train(kind, arch, True), train(kind, arch, False)
    graph = graphed[3]
    assert graph is not None and graph.reason is None, graph and graph.reason
    assert graph.captures == 1 and graph.replays == 2 * 3 - 1  # the first full batch was the warm-up
    assert eager[3] is None
    assert_same_training(graphed, eager, exact=kind == "standin")


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_a_step_schedule_records_again_when_the_rate_changes(kind):
    """A step schedule changes the rate twice in 8 steps: the graph is recorded again for each
    new rate (the rate is baked into the optimizer's launch), and trains as without graphs."""
    graphed, eager = train(kind, "simple", True, schedule="step"), train(kind, "simple", False, schedule="step")
    graph = graphed[3]
    assert graph.reason is None and graph.captures == 3  # rates r0, r1 (epoch 2), r2
    assert_same_training(graphed, eager, exact=kind == "standin")


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_a_rate_that_changes_every_step_turns_graphs_off(kind):
    """Cosine changes the rate every step: after MAX_CAPTURES recordings the step stays eager,
    saying why, and the training is unchanged."""
    graphed = train(kind, "simple", True, epochs=3, schedule="cosine")
    eager = train(kind, "simple", False, epochs=3, schedule="cosine")
    graph = graphed[3]
    assert graph.captures == MAX_CAPTURES and "changed" in graph.reason
    assert_same_training(graphed, eager, exact=kind == "standin")


def test_the_steady_step_is_three_launches():
    """Copy the batch's indices in, launch the graph, copy its loss out: 3 launches per step,
    against 16 eager with every kernel (tests/test_kernels_launch_counts.py). Stand-in."""
    backend = graph_backend("standin")
    model = make_model("simple").to(backend)
    optimizer = SGD(model, 0.05, momentum=0.9)
    data = np.random.default_rng(1)
    counts = {}
    for batches in (2, 5):
        x = backend.asarray(data.integers(0, 256, (BATCH * batches, 1, 28, 28)).astype(np.uint8))
        y = backend.asarray(data.integers(0, 10, BATCH * batches))
        train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(2))  # records for these arrays
        before = backend.xp.work.launches
        train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(2))  # replays only
        counts[batches] = backend.xp.work.launches - before
    assert (counts[5] - counts[2]) / 3 == 3


def test_a_recording_that_fails_warns_and_trains_eagerly(monkeypatch):
    """A step that reads the device while being recorded (CUDA forbids it) ends the recording;
    graphs turn off with a GraphFallbackWarning naming the cause, and training goes on as
    without graphs. Stand-in."""
    import gpucnn.backends.cuda_graphs as graphs

    original = graphs.TrainStepGraph._step

    def reading_step(self):
        original(self)
        float(self.loss[0])  # a download: refused during capture

    eager = train("standin", "simple", False)
    monkeypatch.setattr(graphs.TrainStepGraph, "_step", reading_step)
    with expect_findings() as found, pytest.warns(GraphFallbackWarning, match="recording the step failed"):
        graphed = train("standin", "simple", True)
    assert len(found) == 1 and "capture" in str(found[0])
    assert graphed[3].captures == 1 and "recording the step failed" in graphed[3].reason
    assert_same_training(graphed, eager, exact=True)


def test_why_a_step_is_not_graphed():
    """unavailable() names the reason for each step gpucnn leaves eager. Stand-in and NumPy."""
    def model_on(backend, layers=None):
        return (Sequential(layers) if layers else make_model("simple")).to(backend)

    on = graph_backend("standin")
    model = model_on(on)
    assert unavailable(model, SGD(model, 0.1)) is None
    assert "off" in unavailable(model_on(graph_backend("standin", False)), SGD(model, 0.1))
    cpu = make_backend("cpu")
    cpu.graphs = True
    assert "GPU backend" in unavailable(model_on(cpu), SGD(model, 0.1))
    generic = make_backend("standin", "none")
    generic.graphs = True
    assert "kernel groups ['gemm', 'optimizer']" in unavailable(model_on(generic), SGD(model, 0.1))
    no_bn = make_backend("standin", "gemm,optimizer")
    no_bn.graphs = True
    bn_model = conv_bn(np.random.default_rng(0)).to(no_bn)
    assert "['batchnorm']" in unavailable(bn_model, SGD(bn_model, 0.1))
    dropout = model_on(on, [Flatten(), Dropout(0.5, rng=np.random.default_rng(0)), Dense(784, 10)])
    assert "Dropout" in unavailable(dropout, SGD(dropout, 0.1))
    assert "augmentation" in unavailable(model, SGD(model, 0.1), augment=lambda xb, rng: xb)
    assert unavailable(model, Adam(model, 1e-3)) is None  # its bias corrections: a device table

    class HostScalars(SGD):
        capturable = False
    assert "per-step scalars on the host" in unavailable(model, HostScalars(model, 0.1))

    class TwoRanks:
        size = 2
    assert "distributed" in unavailable(model, SGD(model, 0.1), comm=TwoRanks())


def _captured_ops(cupy):
    """(name, setup -> operation) of every kind of CuPy call a graphed step makes."""
    def f32(*shape):
        return cupy.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return {
        "elementwise": lambda: (lambda a: lambda: a * 2 + 1)(f32(64, 10)),
        "fill": lambda: (lambda a: lambda: a.fill(1))(f32(64)),
        "slice copy": lambda: (lambda a, b: lambda: a.__setitem__(slice(None), b))(f32(64), f32(64)),
        "concatenate": lambda: (lambda w, b: lambda: cupy.concatenate([w, b[:, None]], axis=1))(f32(8, 9), f32(8)),
        "sum over an axis": lambda: (lambda a: lambda: a.sum(axis=0))(f32(64, 10)),
        "contiguous copy": lambda: (lambda a: lambda: cupy.ascontiguousarray(a.T))(f32(64, 10)),
        "argmax": lambda: (lambda a: lambda: a.argmax(axis=1))(f32(64, 10)),
    }


@_NEEDS_GPU
@pytest.mark.parametrize("name", list(_captured_ops(_CUPY)))
def test_each_kind_of_call_a_step_makes_records_on_the_gpu(name):
    """A diagnosis for a failing recording on a GPU: each kind of CuPy call alone, recorded with
    allocations from a private pool on a non-blocking stream, as gpucnn.backends.cuda_graphs records."""
    cupy = _CUPY
    operation = _captured_ops(cupy)[name]()
    cupy.cuda.Stream.null.synchronize()
    stream, pool = cupy.cuda.Stream(non_blocking=True), cupy.cuda.MemoryPool()
    with cupy.cuda.using_allocator(pool.malloc), stream:
        operation()  # warm-up
        stream.begin_capture()
        try:
            operation()
        finally:
            graph = stream.end_capture()
    graph.launch()
    cupy.cuda.Stream.null.synchronize()


def train_adam(kind, graphs, epochs=2, weight_decay=0.0, decoupled=False):
    """As :func:`train`, with Adam (AdamW when ``decoupled``)."""
    from gpucnn.optim import AdamW
    backend = graph_backend(kind, graphs)
    model = make_model("lenet").to(backend)
    optimizer = (AdamW if decoupled else Adam)(model, 1e-3, weight_decay=weight_decay)
    data = np.random.default_rng(1)
    x = backend.asarray(data.integers(0, 256, (IMAGES, 1, 28, 28)).astype(np.uint8))
    y = backend.asarray(data.integers(0, 10, IMAGES))
    order = np.random.default_rng(2)
    losses = [train_epoch(model, optimizer, x, y, BATCH, order)[0] for _ in range(epochs)]
    params = {k: backend.to_numpy(layer.params[n]) for k, layer, n in model.named_parameters()}
    step = optimizer.graph_step
    return params, losses, optimizer, (step.graph if step is not None else None)


@pytest.mark.parametrize("kind", GRAPH_KINDS)
@pytest.mark.parametrize("variant", ["adam", "adam-l2", "adamw"])
def test_adam_replays_with_its_bias_corrections_read_on_the_device(kind, variant):
    """Adam's bias corrections change every step: replayed steps read them from the device
    table (one recording serves every step), and the weights equal the eager Adam's (the
    stand-in: bit for bit; a GPU: within GPU_RTOL)."""
    options = {"adam": {}, "adam-l2": {"weight_decay": 1e-2}, "adamw": {"weight_decay": 1e-2, "decoupled": True}}
    (p_graph, l_graph, opt_graph, graph), (p_eager, l_eager, opt_eager, _) = (
        train_adam(kind, True, **options[variant]), train_adam(kind, False, **options[variant]))
    assert graph.reason is None and graph.captures == 1 and graph.replays == 5
    assert opt_graph.steps == opt_eager.steps == 8
    check = np.testing.assert_array_equal if kind == "standin" else (
        lambda a, b, err_msg="": np.testing.assert_allclose(a, b, rtol=GPU_RTOL, atol=GPU_ATOL, err_msg=err_msg))
    for name in p_eager:
        check(p_graph[name], p_eager[name], err_msg=name)
    for a, b in zip(l_graph, l_eager):
        check(a, b)


def test_the_correction_table_is_the_host_scalars_and_moves_on():
    """BiasCorrections holds the scalars adam_update passes, bit for bit, for ROWS steps from
    the one asked; a step outside, or another rate, uploads a new table. Stand-in."""
    from gpucnn.backends.kernels.optim import BiasCorrections, _bias_corrections
    backend = make_backend("standin", "all")
    table = BiasCorrections()
    rows, position = table.ready(backend.xp, 1e-3, (0.9, 0.999), 5)
    host = backend.to_numpy(rows).reshape(-1, 2)
    assert host.shape == (BiasCorrections.ROWS, 2) and int(backend.to_numpy(position)[0]) == 0
    for step in (5, 6, 5 + BiasCorrections.ROWS - 1):
        assert tuple(host[step - 5]) == _bias_corrections(1e-3, (0.9, 0.999), step)
    assert table.ready(backend.xp, 1e-3, (0.9, 0.999), 6)[0] is rows
    assert table.ready(backend.xp, 1e-3, (0.9, 0.999), 5 + BiasCorrections.ROWS)[0] is not rows
    assert table.first == 5 + BiasCorrections.ROWS
    before = table.rows
    assert table.ready(backend.xp, 2e-3, (0.9, 0.999), table.first)[0] is not before  # another rate
    assert table.settings == (2e-3, (0.9, 0.999))
