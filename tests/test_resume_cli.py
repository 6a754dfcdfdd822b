"""scripts/train.py --resume CKPT --epochs N continues the run it names: every data,
model and optimizer setting comes from the checkpoint, the result is the uninterrupted
run's, and flags that contradict the checkpoint are refused all in one message."""
from __future__ import annotations

import os

import numpy as np
import pytest

import gpucnn.training.loops
from gpucnn.training.checkpoint import load_checkpoint
from gpucnn.training.config import FlagError, TrainConfig
from gpucnn.training.resume import flag_words, resume_config
from scripts_in_process import load_script, main as run_script

train_cli = load_script("train", "resume_cli")

# settings far from the defaults: a resume that fell back to any default would differ
RUN = ["--dataset", "digits", "--limit-train", "400", "--limit-test", "100", "--val-fraction", "0.2",
       "--optimizer", "momentum", "--momentum", "0.8", "--lr", "0.02", "--schedule", "cosine",
       "--warmup-epochs", "1", "--augment", "shift:1", "--label-smoothing", "0.1", "--batch-size", "32",
       "--seed", "3", "--no-normalize", "--arch", "lenet", "--device", "cpu", "--verbose", "0"]


def main(argv, capsys):
    """(exit status, stdout, stderr) of scripts/train.py with ``argv``."""
    return run_script(train_cli, argv, capsys)


def test_resume_with_only_the_checkpoint_and_epochs_ends_where_the_uninterrupted_run_ends(tmp_path, capsys,
                                                                                          monkeypatch):
    straight, stopped = tmp_path / "straight.npz", tmp_path / "stopped.npz"
    status, out, _ = main(RUN + ["--epochs", "3", "--checkpoint", straight], capsys)
    assert status == 0

    real, calls = gpucnn.training.loops.train_epoch, []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(gpucnn.training.loops, "train_epoch", interrupted_in_epoch_2)
        status, _, _ = main(RUN + ["--epochs", "3", "--checkpoint", stopped], capsys)
    assert status == 130 and load_checkpoint(stopped)["meta"]["epoch"] == 1

    status, resumed_out, err = main(["--resume", stopped, "--epochs", "3", "--verbose", "0", "--device", "cpu"],
                                    capsys)
    assert status == 0, err
    assert resumed_out.splitlines()[-1] == out.splitlines()[-1]  # "test accuracy: ..."
    ends, resumed = load_checkpoint(straight), load_checkpoint(stopped)  # --checkpoint: the run's own file
    assert resumed["meta"]["epoch"] == 3
    for key, value in ends["params"].items():
        np.testing.assert_array_equal(resumed["params"][key], value, err_msg=key)
    assert resumed["meta"]["config"]["arch"] == "lenet" and resumed["meta"]["config"]["momentum"] == 0.8


def test_every_contradicting_flag_is_listed_in_one_message_in_the_flags_own_words(tmp_path, capsys):
    ckpt = tmp_path / "c.npz"
    status, _, _ = main(RUN + ["--epochs", "2", "--checkpoint", ckpt], capsys)
    assert status == 0
    status, _, err = main(["--resume", ckpt, "--epochs", "3", "--arch", "simple", "--normalize",
                           "--schedule", "cosine", "--seed", "4", "--lr", "0.5", "--val-fraction", "0.2"], capsys)
    assert status == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines == [f"train.py: error: argument --resume: {ckpt}: 3 settings contradict the checkpoint's run: "
                     "--arch simple (the checkpoint: --arch lenet); --normalize (the checkpoint: --no-normalize); "
                     "--seed 4 (the checkpoint: --seed 3); leave them out to continue the run with the "
                     "checkpoint's settings, or start a new run without --resume"]
    assert "None" not in err


def test_resume_config_fills_what_is_not_given_and_flag_words_never_say_none():
    meta = {"config": TrainConfig(dataset="digits", limit_train=300, lr=0.5, checkpoint="a.npz").to_dict()}
    config = resume_config(meta, {"resume": "a.npz", "epochs": 5, "lr": 0.1})
    assert (config.limit_train, config.lr, config.epochs) == (300, 0.1, 5)
    assert config.checkpoint == os.path.abspath("a.npz")  # a checkpoint records absolute paths
    assert config.device == "auto"  # this run's own: not the checkpoint's
    with pytest.raises(FlagError, match=r"no --limit-train \(all training images\) \(the checkpoint: "
                                        r"--limit-train 300\)"):
        resume_config(meta, {"resume": "a.npz", "limit_train": None})
    assert flag_words("skip_bad_images", False) == "no --skip-bad-images"
    assert flag_words("image_size", None) == "no --image-size (the most common size)"
