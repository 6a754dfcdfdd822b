"""scripts/train.py --save-best and --patience: the best validation epoch kept beside the
last one (and never replaced by a worse resume), early stopping that goes on to the test,
a patience count that survives a resume, and the flags' refusals. fit's validation numbers
are scripted (gpucnn.training.loops.evaluate, called from fit) so that which epoch is best is known."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import gpucnn.training.loops
import gpucnn.training.run
from gpucnn.training.checkpoint import load_checkpoint
from gpucnn.training.config import FlagError, TrainConfig
from gpucnn.training.run import best_checkpoint_path, early_stopping
from scripts_in_process import load_script, main as run_script

train_cli = load_script("train", "save_best")
evaluate_cli = load_script("evaluate", "save_best")
predict_cli = load_script("predict", "save_best")

RUN = ["--dataset", "digits", "--limit-train", "200", "--limit-test", "50", "--lr", "0.01", "--device", "cpu",
       "--verbose", "2"]


def main(script, argv, capsys):
    return run_script(script, argv, capsys)


def error_lines(err):
    return [line for line in err.splitlines() if "error:" in line]


@pytest.fixture
def no_data(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")
    monkeypatch.setattr(gpucnn.training.run, "load_dataset", forbidden)


@pytest.fixture
def validation(monkeypatch):
    """validation(*(val_loss, val_acc)): the next epochs' validation numbers, in turn; the
    held-out test (and an epoch past the script) is evaluated for real."""
    real, queue = gpucnn.training.loops.evaluate, []

    def evaluate(model, x, y, batch_size=gpucnn.training.loops.EVAL_BATCH_SIZE, comm=None):
        loss, accuracy, predictions = real(model, x, y, batch_size, comm)
        if queue and sys._getframe(1).f_code.co_name == "fit":
            loss, accuracy = queue.pop(0)
        return loss, accuracy, predictions

    monkeypatch.setattr(gpucnn.training.loops, "evaluate", evaluate)
    return lambda *pairs: queue.extend(pairs)


def config_line(out):
    return json.loads(next(line for line in out.splitlines() if line.startswith("config: "))[len("config: "):])


# -- the flags ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--save-best"], "argument --save-best expected --checkpoint PATH beside it (the best epoch goes to PATH's "
                      ".best.npz), got no --checkpoint; add --checkpoint runs/NAME.npz"),
    (["--patience", "0"], "argument --patience: expected a positive integer"),
    (["--patience", "two"], "argument --patience: expected a positive integer"),
])
def test_bad_save_best_and_patience_flags_exit_2_before_loading_data(flags, message, capsys, no_data):
    status, out, err = main(train_cli, ["--dataset", "digits", *flags], capsys)
    assert status == 2 and out == ""
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0], err


def test_the_best_file_sits_beside_the_checkpoint():
    assert best_checkpoint_path("runs/x.npz") == "runs/x.best.npz"
    assert best_checkpoint_path("runs/x") == "runs/x.best"


# -- --save-best -------------------------------------------------------------------------------------
def test_save_best_keeps_the_best_validation_epoch_beside_the_last(tmp_path, capsys, validation):
    ckpt = tmp_path / "x.npz"
    validation((0.9, 0.5), (0.5, 0.8), (0.4, 0.7))  # epoch 2 has the best accuracy
    status, out, err = main(train_cli, RUN + ["--epochs", "3", "--checkpoint", ckpt, "--save-best"], capsys)
    assert status == 0, err
    assert config_line(out)["save_best"] is True
    best_file = tmp_path / "x.best.npz"
    assert f"best: epoch 2 (val_acc 80.00%, val_loss 0.5000), kept in {best_file}" in out
    last, best = load_checkpoint(ckpt), load_checkpoint(best_file)
    assert last["meta"]["epoch"] == 3 and best["meta"]["epoch"] == 2
    assert last["meta"]["best"] == best["meta"]["best"] == {"epoch": 2, "val_acc": 0.8, "val_loss": 0.5}
    assert [h["epoch"] for h in best["meta"]["history"]] == [1, 2]
    assert any((best["params"][k] != v).any() for k, v in last["params"].items())  # another epoch's weights

    # evaluate.py and predict.py take it as any checkpoint
    status, out, err = main(evaluate_cli, [best_file, "--device", "cpu"], capsys)
    assert status == 0 and "accuracy" in out, err
    from PIL import Image
    from gpucnn.data.batches import load_digits
    image = tmp_path / "digit.png"
    Image.fromarray((load_digits().test_x[0, 0] * 255).astype(np.uint8)).save(image)  # (8, 8) floats in [0, 1]
    status, out, err = main(predict_cli, [best_file, image, "--device", "cpu"], capsys)
    assert status == 0 and out.startswith(f"{image}: "), err


def test_a_resume_that_does_worse_never_replaces_the_best_checkpoint(tmp_path, capsys, validation):
    ckpt, best_file = tmp_path / "x.npz", tmp_path / "x.best.npz"
    validation((0.9, 0.5), (0.5, 0.8))
    status, _, err = main(train_cli, RUN + ["--epochs", "2", "--checkpoint", ckpt, "--save-best"], capsys)
    assert status == 0, err
    kept = best_file.read_bytes()

    validation((0.3, 0.7))  # epoch 3: a lower loss, a lower accuracy: worse
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "3", "--verbose", "2"], capsys)
    assert status == 0, err
    assert best_file.read_bytes() == kept  # still epoch 2
    assert load_checkpoint(ckpt)["meta"]["best"]["epoch"] == 2 and "best: epoch 2 " in out

    validation((0.4, 0.8))  # epoch 4: the same accuracy as epoch 2, a lower loss: better
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "4", "--verbose", "2"], capsys)
    assert status == 0, err
    assert load_checkpoint(best_file)["meta"]["epoch"] == 4


# -- --patience ----------------------------------------------------------------------------------------
def test_patience_stops_early_then_tests_as_after_the_last_epoch(tmp_path, capsys, validation):
    ckpt = tmp_path / "x.npz"
    validation((0.5, 0.5), (0.6, 0.6), (0.7, 0.7))
    status, out, err = main(train_cli, RUN + ["--epochs", "6", "--patience", "2", "--checkpoint", ckpt], capsys)
    assert status == 0, err
    assert config_line(out)["patience"] == 2
    lines = out.splitlines()
    stop = lines.index("early stop after epoch 3: no better validation loss for 2 epochs")
    assert lines[stop - 1].startswith("epoch 3/6")
    assert any(line.startswith("test: loss") for line in lines[stop:]) and lines[-1].startswith("test accuracy:")
    meta = load_checkpoint(ckpt)["meta"]
    assert meta["epoch"] == 3 and meta["early_stopping"] == {"monitor": "val_loss", "best": 0.5, "best_epoch": 1,
                                                             "wait": 2}


def test_a_resume_continues_the_patience_count(tmp_path, capsys, validation):
    ckpt = tmp_path / "x.npz"
    validation((0.5, 0.5), (0.6, 0.5))  # epoch 2: one epoch without a better loss
    status, _, err = main(train_cli, RUN + ["--epochs", "2", "--patience", "3", "--checkpoint", ckpt], capsys)
    assert status == 0, err

    validation((0.7, 0.5), (0.8, 0.5), (0.1, 0.5))  # a fresh count would stop after epoch 5, not 4
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "6", "--verbose", "2"], capsys)
    assert status == 0, err
    assert "early stop after epoch 4: no better validation loss for 3 epochs" in out
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 4

    # the run stopped early: resuming it with the same patience is refused, a larger one trains on
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "6", "--verbose", "2"], capsys)
    assert status == 2 and len(error_lines(err)) == 1, err
    assert (f"--patience 3: {ckpt} has gone 3 epochs without a better validation loss (the best: epoch 1), as "
            "many as --patience allows; pass --patience 4 or more to train on") in err
    validation((0.2, 0.5))
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "5", "--patience", "4", "--verbose", "2"],
                            capsys)
    assert status == 0, err
    assert "--patience 3 -> 4" in out and load_checkpoint(ckpt)["meta"]["epoch"] == 5


def test_a_checkpoint_without_a_count_is_counted_from_its_history():
    meta = {"history": [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}, {"epoch": 3, "val_loss": 0.45}]}
    stopper = early_stopping(TrainConfig(dataset="digits", patience=2, resume="old.npz"), meta)
    assert (stopper.best, stopper.best_epoch, stopper.wait) == (0.4, 2, 1)
    with pytest.raises(FlagError, match="pass --patience 2 or more"):
        early_stopping(TrainConfig(dataset="digits", patience=1, resume="old.npz"), meta)
    assert early_stopping(TrainConfig(dataset="digits"), meta) is None
