"""End-to-end training: learning happens, resume is exact, the GPU path makes a bounded
number of transfers, a NaN stops training without touching the last good checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpucnn.training.checkpoint import load_checkpoint, save_checkpoint
from gpucnn.training.run import NonFiniteLossError, TrainConfig, fit, make_optimizer, run
from gpucnn.nn.zoo import build_model
from standin import optimizer_table_uploads, standin_backend

REPO_MNIST = str(Path(__file__).resolve().parent.parent / "data" / "mnist")


def quiet(*args, **kwargs):
    pass


def test_digits_learns_far_above_chance():
    result = run(TrainConfig(dataset="digits", epochs=6, lr=0.01, verbose=0, device="cpu"), log=quiet)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert result["test_acc"] > 0.85  # chance is 0.10
    assert result["device"] == "cpu"


def test_auto_device_trains_on_the_gpu_when_one_is_usable(monkeypatch):
    """--device auto (the default) means the GPU when detection finds one: here the GPU's
    status is faked as present and the CuPy stand-in plays the device."""
    import gpucnn.backends.backend
    from standin import standin_backend
    monkeypatch.setattr(gpucnn.backends.backend, "gpu_status", lambda: (object(), None))
    monkeypatch.setattr(gpucnn.backends.backend, "_gpu_backend", lambda cupy, kernels=None, graphs=None: standin_backend(kernels))
    lines = []
    result = run(TrainConfig(dataset="digits", epochs=1, lr=0.01, verbose=0, limit_train=200), log=lines.append)
    assert TrainConfig().device == "auto"
    assert result["device"] == "gpu" and "device: gpu" in lines
    assert 0 <= result["test_acc"] <= 1


def test_mnist_subset_one_epoch_learns():
    result = run(TrainConfig(data_dir=REPO_MNIST, epochs=1, limit_train=3000, limit_test=1000,
                             verbose=0), log=quiet)
    assert result["test_acc"] > 0.80
    assert result["history"][0]["val_loss"] < 2.302  # below the loss of a uniform guess, ln(10)
    assert np.asarray(result["confusion_matrix"]).sum() == 1000


def test_lenet_builds_for_both_datasets(rng):
    assert build_model("lenet", (1, 28, 28), 10, rng).summary((1, 1, 28, 28))
    assert build_model("lenet", (1, 8, 8), 10, rng).summary((1, 1, 8, 8))


def test_two_epochs_equal_one_epoch_plus_resume(tmp_path):
    base = dict(dataset="digits", lr=0.01, verbose=0, seed=3)
    straight = run(TrainConfig(epochs=2, **base), log=quiet)
    ckpt = tmp_path / "ckpt.npz"
    run(TrainConfig(epochs=1, checkpoint=str(ckpt), **base), log=quiet)
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 1
    resumed = run(TrainConfig(epochs=2, resume=str(ckpt), checkpoint=str(ckpt), **base), log=quiet)
    for key, value in straight["model"].state_dict().items():
        np.testing.assert_array_equal(resumed["model"].state_dict()[key], value, err_msg=key)
    assert resumed["test_acc"] == straight["test_acc"]
    for a, b in zip(resumed["history"], straight["history"]):
        assert {k: v for k, v in a.items() if k not in ("seconds", "images_per_s")} == \
               {k: v for k, v in b.items() if k not in ("seconds", "images_per_s")}
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 2


def test_resume_refuses_another_architecture(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    run(TrainConfig(dataset="digits", epochs=1, checkpoint=str(ckpt), verbose=0), log=quiet)
    with pytest.raises(ValueError, match=r"--arch lenet \(the checkpoint: --arch simple\)"):
        run(TrainConfig(dataset="digits", arch="lenet", epochs=2, resume=str(ckpt), verbose=0), log=quiet)


def _digits_on(backend, batch_size):
    from gpucnn.data.batches import load_digits
    data = load_digits()
    rng = np.random.default_rng(0)
    model = build_model("simple", data.input_shape, 10, rng).to(backend)
    opt = make_optimizer("adam", model, 1e-3)
    train = (backend.asarray(data.train_x), backend.asarray(data.train_y))
    val = (backend.asarray(data.test_x), backend.asarray(data.test_y))
    return model, opt, train, val, rng


@pytest.mark.parametrize("verbose", [0, 2])
def test_epoch_transfers_are_bounded_and_independent_of_batch_count(verbose):
    """Data uploaded once; per epoch only the shuffled order goes up and a handful
    of totals come down, whether an epoch has 6 batches or 90."""
    per_epoch = {}
    for batch_size in (16, 256):
        backend = standin_backend()
        model, opt, train, val, rng = _digits_on(backend, batch_size)
        backend.xp.reset_transfers()
        fit(model, opt, train, val, epochs=2, batch_size=batch_size, rng=rng, verbose=verbose, log=quiet)
        per_epoch[batch_size] = {k: v / 2 for k, v in backend.xp.transfers.items()}
        per_epoch[batch_size]["to_device"] -= optimizer_table_uploads(backend) / 2  # once per run
    assert per_epoch[16] == per_epoch[256]
    assert per_epoch[16]["to_device"] <= 1 and per_epoch[16]["to_host"] <= 6


def test_a_schedule_and_label_smoothing_add_no_transfers():
    """The schedule is host arithmetic (a float per batch), the smoothed loss stays on the
    device: an epoch with both makes the transfers of an epoch without them, and the
    learning rate follows the schedule batch by batch."""
    from gpucnn.nn.losses import SoftmaxCrossEntropy
    from gpucnn.optim.schedules import make_schedule

    transfers = []
    for extras in (False, True):
        backend = standin_backend()
        model, opt, train, val, rng = _digits_on(backend, 64)
        options = {}
        if extras:
            options = dict(loss_fn=SoftmaxCrossEntropy(0.1),
                           schedule=make_schedule("cosine", opt, total_steps=2 * 23, warmup_steps=23))
        backend.xp.reset_transfers()
        history = fit(model, opt, train, val, epochs=2, batch_size=64, rng=rng, verbose=0, log=quiet, **options)
        transfers.append(dict(backend.xp.transfers))
    assert transfers[0] == transfers[1]
    assert history[0]["lr"] == pytest.approx(1e-3 * 22 / 23) and history[1]["lr"] < 1e-5  # 1437 images: 23 batches
    assert options["schedule"].step_count == 46 and opt.lr == 0.0


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    backend = standin_backend()
    model, opt, train, val, rng = _digits_on(backend, 64)
    ckpt = tmp_path / "ckpt.npz"
    config = TrainConfig(dataset="digits", verbose=0)

    def save_then_poison(epoch, history):
        save_checkpoint(ckpt, model, opt, epoch, rng, config, history)
        model.layers[0].params["weight"] *= float("nan")  # the next epoch's loss is NaN

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, batch 1 of \d+"):
        fit(model, opt, train, val, epochs=3, batch_size=64, rng=rng, verbose=0,
            on_epoch_end=save_then_poison, log=quiet)
    saved = load_checkpoint(ckpt)
    assert saved["meta"]["epoch"] == 1
    assert all(np.isfinite(v).all() for v in saved["params"].values())


# -- fit for library users: host arrays, no validation, the default generator -------------
def test_fit_uploads_host_arrays_once_and_runs_without_validation():
    from gpucnn.data.batches import load_digits
    import gpucnn

    data = load_digits()
    x64 = data.train_x[:300].astype(np.float64)  # host float64: cast to float32 on the way up
    histories = []
    for _ in range(2):
        backend = standin_backend()
        gpucnn.manual_seed(7)
        model = build_model("simple", data.input_shape, 10, gpucnn.default_generator()).to(backend)
        opt = make_optimizer("adam", model, 1e-2)
        backend.xp.reset_transfers()
        history = fit(model, opt, (x64, data.train_y[:300]), epochs=2, batch_size=32, verbose=0)  # rng=None
        # x and y once, one shuffled order per epoch, the fused optimizer's table once
        assert backend.xp.transfers["to_device"] == 2 + 2 + optimizer_table_uploads(backend)
        histories.append(history)
    assert set(histories[0][0]) == {"epoch", "train_loss", "train_acc", "seconds", "images_per_s"}
    assert [h["train_loss"] for h in histories[0]] == [h["train_loss"] for h in histories[1]]  # manual_seed


def test_fit_checks_its_data():
    model = build_model("simple", (1, 8, 8), 10, np.random.default_rng(0))
    opt = make_optimizer("sgd", model, 0.1)
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="fit expected as many train images as labels, got 4 and 3"):
        fit(model, opt, (x, np.zeros(3, np.int64)), epochs=1)
    with pytest.raises(ValueError, match=r"val labels: expected values in \[0, 10\), got \[-1, 0\]"):
        fit(model, opt, (x, np.zeros(4, np.int64)), (x, np.array([0, -1, 0, 0])), epochs=1)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 1, H, W\), got \(1, 3, 8, 8\)"):
        fit(model, opt, (np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int64)), epochs=1)


# -- splits: the sizes scikit-learn accepts, computed exactly --------------------------------
@pytest.mark.parametrize("fraction", [0.1, 0.05, 0.3, 0.5, 0.9, 0.123])
def test_smallest_limit_train_is_exactly_what_sklearn_accepts(fraction):
    from sklearn.model_selection import train_test_split
    from gpucnn.data.batches import load_digits
    from gpucnn.data.splits import SplitError, data_generator, plan_splits, smallest_splittable

    y = load_digits().train_y
    smallest = smallest_splittable(fraction, 10, len(y))
    splits = plan_splits(y, y, smallest, fraction, None, data_generator(0))
    assert len(splits.train) + len(splits.val) == smallest
    assert len(np.unique(y[splits.val])) == 10 == len(np.unique(y[splits.train]))
    with pytest.raises(SplitError, match=f"--limit-train {smallest - 1} .*pass --limit-train {smallest} or more"):
        plan_splits(y, y, smallest - 1, fraction, None, data_generator(0))
    with pytest.raises(ValueError, match="number of classes|too few"):  # sklearn refuses one less too
        train_test_split(y[:smallest - 1], test_size=fraction, stratify=np.arange(smallest - 1) % 10)


@pytest.mark.parametrize("fraction, direction", [(0.001, "or more"), (0.999, "or less")])
def test_suggested_val_fraction_works_and_its_neighbour_does_not(fraction, direction):
    import re
    from gpucnn.data.splits import SplitError, check_split_sizes

    with pytest.raises(SplitError) as info:
        check_split_sizes(1437, None, fraction, 10)
    suggested = re.search(rf"pass --val-fraction ([0-9.]+) {direction}", str(info.value)).group(1)
    check_split_sizes(1437, None, float(suggested), 10)
    step = 10.0 ** -len(suggested.split(".")[1])
    neighbour = float(suggested) + (-step if direction == "or more" else step)
    with pytest.raises(SplitError):
        check_split_sizes(1437, None, neighbour, 10)


def test_resume_refuses_a_checkpoint_with_no_epochs_left(tmp_path):
    from gpucnn.training.run import FlagError
    ckpt = tmp_path / "ckpt.npz"
    run(TrainConfig(dataset="digits", epochs=1, checkpoint=str(ckpt), verbose=0), log=quiet)
    with pytest.raises(FlagError, match=rf"{ckpt} already holds 1 epoch; pass --epochs 2 or more to continue"):
        run(TrainConfig(dataset="digits", epochs=1, resume=str(ckpt), verbose=0), log=quiet)


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_goes_to_stderr_only_when_it_is_a_terminal(terminal, monkeypatch, capsys):
    import io
    import sys

    class Stderr(io.StringIO):
        def isatty(self):
            return terminal
    stderr = Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr("gpucnn.training.report.Progress.DELAY", 0.0)  # draw at once
    model = build_model("simple", (1, 8, 8), 10, np.random.default_rng(0))
    x, y = np.random.default_rng(1).random((256, 1, 8, 8), dtype=np.float32), np.arange(256) % 10
    fit(model, make_optimizer("sgd", model, 0.1), (x, y), epochs=2, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    assert [line.split()[:2] for line in out.splitlines()] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert "\r" not in out
    assert ("epoch 1/2:" in stderr.getvalue() and "batch" in stderr.getvalue()) == terminal
    assert stderr.getvalue() == "" or terminal
