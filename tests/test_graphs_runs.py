"""CUDA graphs (gpucnn.backends.cuda_graphs) in whole training runs: scripts/train.py's run with
GPUCNN_CUDA_GRAPHS=1, a resumed run, Ctrl-C while recording, and the recorded step's lifetime.
Device: the CuPy stand-in (tests/standin/graphs.py records and replays captured work), playing
the GPU of scripts/train.py."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.training.loops import train_epoch
from gpucnn.optim import SGD
from test_graphs import BATCH, graph_backend, make_model


def standin_gpu(monkeypatch) -> list:
    """scripts/train.py's GPU backend made by the stand-in (GPUCNN_CUDA_GRAPHS honoured); the
    list collects the backends made."""
    import gpucnn.backends.backend
    from standin import standin_backend
    made = []

    def gpu_backend(cupy, kernels=None, graphs=None):
        backend = standin_backend(kernels)
        backend.graphs = gpucnn.backends.backend.graphs_selected(graphs)
        made.append(backend)
        return backend

    monkeypatch.setattr(gpucnn.backends.backend, "gpu_status", lambda: (object(), None))
    monkeypatch.setattr(gpucnn.backends.backend, "_gpu_backend", gpu_backend)
    return made


def test_a_resumed_graphed_run_equals_a_straight_one(monkeypatch, tmp_path):
    """With graphs on, two epochs straight and one epoch, a checkpoint and a resumed second
    epoch (load_state_dict replaces the arrays the graph baked in: it records again) give the
    same weights, history and test accuracy. Stand-in."""
    from gpucnn.training.checkpoint import load_checkpoint
    from gpucnn.training.run import TrainConfig, run
    standin_gpu(monkeypatch)
    monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", "1")
    base = dict(dataset="digits", device="gpu", verbose=0, limit_train=200, batch_size=32, seed=3)
    quiet = [].append
    straight = run(TrainConfig(epochs=2, **base), log=quiet)
    ckpt = tmp_path / "ckpt.npz"
    run(TrainConfig(epochs=1, checkpoint=str(ckpt), **base), log=quiet)
    resumed = run(TrainConfig(epochs=2, resume=str(ckpt), checkpoint=str(ckpt), **base), log=quiet)
    for key, value in straight["model"].state_dict().items():
        np.testing.assert_array_equal(resumed["model"].state_dict()[key], value, err_msg=key)
    assert resumed["test_acc"] == straight["test_acc"] and load_checkpoint(ckpt)["meta"]["epoch"] == 2
    for a, b in zip(resumed["history"], straight["history"]):
        assert {k: v for k, v in a.items() if k not in ("seconds", "images_per_s")} == \
               {k: v for k, v in b.items() if k not in ("seconds", "images_per_s")}


@pytest.mark.parametrize("flags", [{}, {"optimizer": "momentum", "lr": 0.05}], ids=["adam", "momentum"])
def test_a_training_run_with_graphs_equals_one_without(monkeypatch, flags):
    """scripts/train.py's run (fit, validation and the held-out test in evaluation mode between
    the graph's replays) with GPUCNN_CUDA_GRAPHS=1 on the stand-in: it says graphs are on and
    gives the same history and test accuracy as the run without them."""
    from gpucnn.training.run import TrainConfig, run
    made = standin_gpu(monkeypatch)
    runs = {}
    for graphs in ("0", "1"):
        monkeypatch.setenv("GPUCNN_CUDA_GRAPHS", graphs)
        lines = []
        runs[graphs] = run(TrainConfig(dataset="digits", device="gpu", epochs=2, verbose=0, limit_train=200,
                                       batch_size=32, **flags), log=lines.append), lines
    (plain, plain_log), (graphed, graphed_log) = runs["0"], runs["1"]
    assert "CUDA graphs: on (full batches replay one recorded step)" in graphed_log
    train_images = int(next(line for line in graphed_log if line.startswith("data: ")).split()[2])
    launches = [backend.xp.work.by_kind["graph launch"] for backend in made]
    assert launches == [0, 2 * (train_images // 32) - 1]  # every full batch but the first, the warm-up
    assert not any(line.startswith("CUDA graphs") for line in plain_log)
    assert graphed["test_acc"] == plain["test_acc"]
    for epoch_graphed, epoch_plain in zip(graphed["history"], plain["history"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert epoch_graphed[key] == epoch_plain[key], key


def test_a_recorded_step_goes_with_its_optimizer():
    """The recorded step (and the graph's memory pool) lives on the optimizer: dropping the
    model and optimizer frees it. Stand-in."""
    import gc
    import weakref
    backend = graph_backend("standin")
    model = make_model("simple").to(backend)
    optimizer = SGD(model, 0.05)
    x = backend.asarray(np.zeros((2 * BATCH, 1, 28, 28), np.uint8))
    y = backend.asarray(np.zeros(2 * BATCH, np.int64))
    train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(0))
    step = weakref.ref(optimizer.graph_step)
    assert step() is not None and step().graph.captures == 1
    del model, optimizer
    gc.collect()
    assert step() is None


def test_ctrl_c_while_recording_leaves_the_warm_up_step_in_the_model(monkeypatch):
    """A KeyboardInterrupt during the recording (after the warm-up ran the batch) propagates;
    the stream leaves capture mode and the model holds the warm-up's weights, the same as one
    eager step's, so a checkpoint saved then is right. Stand-in."""
    import gpucnn.backends.cuda_graphs as graphs
    original, calls = graphs.TrainStepGraph._step, []

    def interrupted_step(self):
        calls.append(1)
        original(self)
        if len(calls) == 2:  # the recording
            raise KeyboardInterrupt

    monkeypatch.setattr(graphs.TrainStepGraph, "_step", interrupted_step)
    results = {}
    for graphs_on in (True, False):
        backend = graph_backend("standin", graphs_on)
        model = make_model("lenet").to(backend)
        optimizer = SGD(model, 0.05, momentum=0.9)
        data = np.random.default_rng(1)
        x = backend.asarray(data.integers(0, 256, (BATCH, 1, 28, 28)).astype(np.uint8))
        y = backend.asarray(data.integers(0, 10, BATCH))
        if graphs_on:
            with pytest.raises(KeyboardInterrupt):
                train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(2))
            assert not optimizer.graph_step.graph._stream.is_capturing() and optimizer.steps == 1
        else:
            train_epoch(model, optimizer, x, y, BATCH, np.random.default_rng(2))
        results[graphs_on] = {k: backend.to_numpy(layer.params[n]) for k, layer, n in model.named_parameters()}
    for name in results[False]:
        np.testing.assert_array_equal(results[True][name], results[False][name], err_msg=name)
