"""The whole training path on the strict CuPy stand-in: fit at every verbose level,
every optimizer and architecture, checkpoint save and resume, evaluation and predictions.
Any call real CuPy would reject fails the test (tests/conftest.py), and the device->host
copies and synchronisations of an epoch must not grow with its number of batches."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpucnn.training.loops as loops
import gpucnn.training.run as train
from gpucnn.data.batches import DataError, Dataset, load_digits
from gpucnn.training.run import TrainConfig, build_model, fit, held_out_report, run
from gpucnn.nn.layers import Dropout
from gpucnn.nn.zoo import ARCHS
from standin import expect_findings, optimizer_table_uploads, standin_backend
from standin.plant import plant
from test_backends import OPTIMIZERS

N_TRAIN = 512  # 64 batches of 8, or 4 batches of 128: the counts must be the same


def quiet(*args, **kwargs):
    pass


def digits_on(backend, n=N_TRAIN, arch="simple", optimizer="adam"):
    data = load_digits()
    rng = np.random.default_rng(0)
    model = build_model(arch, data.input_shape, 10, rng).to(backend)
    opt = OPTIMIZERS[optimizer](model)
    train_set = (backend.asarray(data.train_x[:n]), backend.asarray(data.train_y[:n]))
    val_set = (backend.asarray(data.test_x[:200]), backend.asarray(data.test_y[:200]))
    return model, opt, train_set, val_set, rng


def epoch_counts(verbose: int, batch_size: int, epochs: int = 2):
    """Per-epoch (to_device, to_host, syncs) of ``fit`` on the stand-in, the gpucnn lines
    they came from, and the slowest epoch's seconds."""
    backend = standin_backend()
    model, opt, train_set, val_set, rng = digits_on(backend)
    backend.xp.reset_transfers()
    history = fit(model, opt, train_set, val_set, epochs=epochs, batch_size=batch_size, rng=rng,
                  verbose=verbose, log=quiet)
    counts = {k: backend.xp.counts[k] / epochs for k in ("to_device", "to_host", "syncs")}
    counts["to_device"] -= optimizer_table_uploads(backend) / epochs  # once per run, not per epoch
    sites = {site: n / epochs for site, n in backend.xp.sites.items()}
    return counts, sites, max(h["seconds"] for h in history)


def assert_epoch_counts_bounded(verbose: int):
    """64 batches per epoch cost no more copies and syncs than 4 (at verbose 1, the progress
    bar's live loss adds at most two reads, each 2 copies, per second of the epoch)."""
    many, many_sites, many_seconds = epoch_counts(verbose, batch_size=8)
    few, few_sites, few_seconds = epoch_counts(verbose, batch_size=128)
    grew = sorted(f"{event} at {where} ({what}): {n:g} times per epoch with 64 batches, "
                  f"{few_sites.get((event, where, what), 0):g} with 4"
                  for (event, where, what), n in many_sites.items()
                  if n > few_sites.get((event, where, what), 0) + (verbose == 1) * 4 * (1 + 2 * many_seconds))
    assert not grew, "device syncs that grow with the number of batches:\n" + "\n".join(grew)
    slack = 0 if verbose != 1 else 2 * (1 + math.ceil(2 * max(many_seconds, few_seconds)))
    for key in many:
        assert abs(many[key] - few[key]) <= slack, (key, many, few)
    assert many["to_device"] <= 1 and many["to_host"] <= 5 + slack and many["syncs"] <= 6 + slack, many


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_fit_copies_and_syncs_per_epoch_do_not_grow_with_batches(verbose, capsys):
    assert_epoch_counts_bounded(verbose)


def test_planted_per_batch_host_sync_fails_the_epoch_test(monkeypatch):
    line = plant(monkeypatch, loops, "train_epoch", "        optimizer.step()\n",
                 "        optimizer.step()\n        float(batch_losses[b])  # planted: one sync per batch\n")
    with pytest.raises(AssertionError, match=rf"to_host at {line} \(float\(\)\): 64 times per epoch with 64 batches, 4 with 4"):
        assert_epoch_counts_bounded(0)


def test_a_uint8_epoch_on_the_standin_converts_each_batch_on_the_device():
    """uint8 pixels go up once as uint8 and each gathered batch becomes float32 on the
    device: no finding, per epoch only the shuffled order goes up (64 batches as 4), and
    the numbers are NumPy's on the float32 / 255 images."""
    data = load_digits()
    pixels = np.round(data.train_x[:N_TRAIN] * 255).astype(np.uint8)  # (N, 1, 8, 8) 0..255
    labels, as_floats = data.train_y[:N_TRAIN], pixels.astype(np.float32) / np.float32(255)
    per_epoch, histories = {}, []
    for batch_size in (8, 128):
        backend = standin_backend()
        model = build_model("simple", data.input_shape, 10, np.random.default_rng(0)).to(backend)
        train_set = (backend.asarray(pixels), backend.asarray(labels))
        val_set = (backend.asarray(pixels[:200]), backend.asarray(labels[:200]))
        assert train_set[0].dtype == np.uint8
        backend.xp.reset_transfers()
        histories.append(fit(model, OPTIMIZERS["adam"](model), train_set, val_set, epochs=2, batch_size=batch_size,
                             rng=np.random.default_rng(1), verbose=0, log=quiet))
        per_epoch[batch_size] = {k: v / 2 for k, v in backend.xp.transfers.items()}
        per_epoch[batch_size]["to_device"] -= optimizer_table_uploads(backend) / 2  # once per run
    assert per_epoch[8] == per_epoch[128] and per_epoch[8]["to_device"] <= 1, per_epoch
    model = build_model("simple", data.input_shape, 10, np.random.default_rng(0))
    on_numpy = fit(model, OPTIMIZERS["adam"](model), (as_floats, labels), (as_floats[:200], labels[:200]), epochs=2,
                   batch_size=128, rng=np.random.default_rng(1), verbose=0, log=quiet)
    for host, dev in zip(on_numpy, histories[1]):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert dev[key] == pytest.approx(host[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", ARCHS)
def test_every_optimizer_and_arch_trains_on_the_standin_as_on_numpy(arch, optimizer):
    histories = []
    for backend in (train.get_backend("cpu"), standin_backend()):
        model, opt, train_set, val_set, rng = digits_on(backend, n=96, arch=arch, optimizer=optimizer)
        for layer in model.layers:  # masks come from each device's own generator, so they differ by
            if isinstance(layer, Dropout):  # design; tests/test_toolkit_layers.py checks Dropout everywhere
                layer.p = 0.0
        if arch in ("lenet-bn", "cifar-small"):  # 96 images, 8x8: at the shared rates these wide
            opt.lr /= 10  # nets diverge, and a diverging run amplifies float32 summation order
        histories.append(fit(model, opt, train_set, val_set, epochs=2, batch_size=32, rng=rng,
                             verbose=0, log=quiet))
    # the stand-in keeps CuPy's layouts, so BLAS sums in another order: float32 rounding that
    # Adam's per-weight scaling and BatchNorm amplify in the wide nets (measured: up to 5e-4)
    # (and so a validation image of 200 may flip class; two with the fused kernels, whose
    # BatchNorm statistics sum in double and whose convolutions order their columns otherwise)
    wide = arch in ("lenet-bn", "cifar-small")
    for host, dev in zip(*histories):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            tolerance = dict(rel=2e-3, abs=0.011 if key.endswith("acc") else 1e-6) if wide else dict(rel=1e-4, abs=1e-6)
            assert dev[key] == pytest.approx(host[key], **tolerance), key


@pytest.fixture
def standin_run(monkeypatch):
    """run() with --device gpu landing on a fresh stand-in; returns the backends it got."""
    backends = []

    def fake_get_backend(name):
        backends.append(standin_backend())
        return backends[-1]
    monkeypatch.setattr(train, "get_backend", fake_get_backend)
    return backends


def test_checkpoint_save_and_resume_on_the_standin(tmp_path, standin_run):
    base = dict(dataset="digits", lr=0.01, verbose=0, seed=3, device="gpu", limit_train=300, limit_test=100)
    straight = run(TrainConfig(epochs=2, **base), log=quiet)
    ckpt = tmp_path / "ckpt.npz"
    run(TrainConfig(epochs=1, checkpoint=str(ckpt), **base), log=quiet)
    resumed = run(TrainConfig(epochs=2, resume=str(ckpt), checkpoint=str(ckpt), **base), log=quiet)
    assert resumed["device"] == "gpu" and train.load_checkpoint(ckpt)["meta"]["epoch"] == 2
    for key, value in straight["model"].state_dict().items():
        np.testing.assert_array_equal(resumed["model"].state_dict()[key], value, err_msg=key)
    assert resumed["model"].backend is standin_run[-1]  # saving left the model on the device
    np.testing.assert_array_equal(resumed["predictions"], straight["predictions"])


def test_evaluation_and_predictions_on_the_standin_equal_numpys(capsys):
    data = load_digits()
    results = []
    for backend in (train.get_backend("cpu"), standin_backend()):
        model = build_model("lenet", data.input_shape, 10, np.random.default_rng(1)).to(backend)
        if backend.name == "gpu":
            backend.xp.reset_transfers()
        results.append(held_out_report(model, data.test_x, data.test_y, 10, batch_size=64))
    (loss, acc, predictions, matrix), (dev_loss, dev_acc, dev_predictions, dev_matrix) = results
    np.testing.assert_array_equal(dev_predictions, predictions)
    np.testing.assert_array_equal(dev_matrix, matrix)
    assert dev_loss == pytest.approx(loss, rel=1e-5) and dev_acc == acc
    assert backend.xp.counts["to_device"] == 2 and backend.xp.counts["to_host"] == 3  # 6 batches


def test_labels_are_validated_before_anything_reaches_the_device(standin_run, monkeypatch):
    """CuPy would wrap a label 10 around to class 0 silently: run() refuses it on the host."""
    data = load_digits()
    bad = data.train_y.copy()
    bad[::50] = 10  # several, so the stratified split still runs
    monkeypatch.setattr(train, "load_dataset", lambda config: Dataset(data.train_x, bad, data.test_x, data.test_y))
    with pytest.raises(DataError, match=r"labels: expected values in \[0, 10\), got \[0, 10\]"):
        run(TrainConfig(dataset="digits", device="gpu", epochs=1, verbose=0), log=quiet)
    assert standin_run[0].xp.counts["to_device"] == 0


def test_the_stand_in_suite_has_no_leftover_findings():
    """Planted violations clean up after themselves: nothing real was found."""
    with expect_findings() as found:
        pass
    assert found == []
