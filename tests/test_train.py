"""End-to-end training: learning happens, resume is exact, the GPU path makes a bounded
number of transfers, a NaN stops training without touching the last good checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpucnn.train import (NonFiniteLossError, TrainConfig, build_model, fit, load_checkpoint,
                          make_optimizer, run, save_checkpoint)
from standin import standin_backend

REPO_MNIST = str(Path(__file__).resolve().parent.parent / "data" / "mnist")


def quiet(*args, **kwargs):
    pass


def test_digits_learns_far_above_chance():
    result = run(TrainConfig(dataset="digits", epochs=6, lr=0.01, verbose=0), log=quiet)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert result["test_acc"] > 0.85  # chance is 0.10
    assert result["device"] == "cpu"


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
    with pytest.raises(ValueError, match=r"trained with --arch 'simple', this run asks for 'lenet'"):
        run(TrainConfig(dataset="digits", arch="lenet", epochs=2, resume=str(ckpt), verbose=0), log=quiet)


def _digits_on(backend, batch_size):
    from gpucnn.data import load_digits
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
    assert per_epoch[16] == per_epoch[256]
    assert per_epoch[16]["to_device"] <= 1 and per_epoch[16]["to_host"] <= 6


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
