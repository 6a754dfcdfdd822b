"""What a checkpoint records and what a resume may change: the dataset, the architecture
file and the output paths as absolute paths (a checkpoint works from any folder), a gone
dataset named, the settings a resume may change printed when it starts, the run-defining
ones refused naming the checkpoint's value, a batch size the schedule counts refused with
the reason, the warning for a folder named like a built-in dataset, and --help's groups."""
from __future__ import annotations

import dataclasses
import os
import re
import warnings

import numpy as np
import pytest

import gpucnn.training.loops
from gpucnn.training.checkpoint import load_checkpoint
from gpucnn.training.config import FlagError, TrainConfig
from gpucnn.training.resume import RESUME_MAY_CHANGE, check_recorded_dataset, check_resume, resume_changes
from gpucnn.training.run import run
from scripts_in_process import interrupt_at_epoch, load_script, main as run_script

train_cli, evaluate_cli = (load_script(name, "resume_rules") for name in ("train", "evaluate"))
TINY = ["--limit-train", "200", "--limit-test", "50", "--device", "cpu", "--batch-size", "32"]


def main(script, argv, capsys):
    return run_script(script, argv, capsys)


def write_npz_dataset(path):
    """A small .npz dataset: scikit-learn's 8x8 digits, 300 training and 100 test images."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    np.savez(path, x_train=x[:300], y_train=y[:300], x_test=x[300:400], y_test=y[300:400])
    return path


# -- paths: a checkpoint works from any folder ----------------------------------------------
def test_a_checkpoint_trained_in_one_folder_is_evaluated_and_resumed_from_another(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    write_npz_dataset(a / "data.npz")
    monkeypatch.chdir(a)
    status, _, err = main(train_cli, ["--dataset", "data.npz", "--epochs", "1", "--verbose", "0",
                                      "--checkpoint", "runs/c.npz", *TINY], capsys)
    assert status == 0, err
    recorded = load_checkpoint(a / "runs" / "c.npz")["meta"]["config"]
    assert recorded["dataset"] == str(a / "data.npz") and recorded["checkpoint"] == str(a / "runs" / "c.npz")

    monkeypatch.chdir(b)
    ckpt = os.path.join("..", "A", "runs", "c.npz")
    status, out, err = main(evaluate_cli, [ckpt, "--device", "cpu"], capsys)
    assert status == 0, err
    assert f"data: {a / 'data.npz'} test images (as recorded in the checkpoint)" in out
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "2", "--verbose", "0"], capsys)
    assert status == 0, err
    assert load_checkpoint(a / "runs" / "c.npz")["meta"]["epoch"] == 2  # the recorded file, not B/runs/c.npz
    assert not (b / "runs").exists()


def test_a_gone_dataset_folder_is_named_and_another_copy_may_stand_in(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image
    folder, ckpt = tmp_path / "shapes", tmp_path / "runs" / "shapes.npz"
    rng = np.random.default_rng(0)
    for label, kind in enumerate(("dark", "light")):
        (folder / kind).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 100, (8, 8)) + 150 * label
            Image.fromarray(pixels.astype(np.uint8)).save(folder / kind / f"{i}.png")
    status, _, err = main(train_cli, ["--dataset", folder, "--epochs", "1", "--verbose", "0", "--device", "cpu",
                                      "--cache-dir", tmp_path / "cache", "--checkpoint", ckpt], capsys)
    assert status == 0, err
    moved = folder.rename(tmp_path / "moved")
    gone = f"the checkpoint's dataset folder {folder} no longer exists; pass --dataset PATH to"
    for script, argv in ((evaluate_cli, [ckpt]), (train_cli, ["--resume", ckpt, "--epochs", "2"])):
        status, _, err = main(script, argv, capsys)
        assert status == 2 and gone in err, err
        assert "expected one of" not in err  # no blame for a --dataset the user never gave
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "2", "--dataset", moved, "--device", "cpu",
                                        "--verbose", "2"], capsys)
    assert status == 0, err
    assert f"--dataset {folder} -> {moved}" in out
    with pytest.raises(FlagError, match=r"dataset file no/such\.npz is not in .* \(recorded relative to"):
        check_recorded_dataset("no/such.npz", "evaluate on a copy of it")  # an older checkpoint's path


# -- what a resume may change, and what it says -----------------------------------------------
def test_resume_prints_the_lr_epochs_and_batch_size_it_changed_and_uses_them(tmp_path, capsys):
    ckpt = tmp_path / "c.npz"
    status, _, err = main(train_cli, ["--dataset", "digits", "--epochs", "1", "--lr", "0.001", "--verbose", "0",
                                      "--checkpoint", ckpt, *TINY], capsys)
    assert status == 0, err
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "2", "--lr", "0.01", "--batch-size", "16",
                                        "--device", "cpu", "--verbose", "2"], capsys)
    assert status == 0, err
    assert ("resume: changed from the checkpoint: --epochs 1 -> 2, --batch-size 32 -> 16, --lr 0.001 -> 0.01"
            in out.splitlines())
    config = load_checkpoint(ckpt)["meta"]["config"]
    assert (config["epochs"], config["batch_size"], config["lr"]) == (2, 16, 0.01)
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "3", "--device", "cpu", "--verbose", "0"],
                            capsys)
    assert status == 0 and "resume:" not in out  # --verbose 0: only the test accuracy


@pytest.mark.parametrize("flag, value, checkpoints", [
    ("--arch", "lenet", "--arch simple"),
    ("--optimizer", "sgd", "--optimizer adam"),
    ("--dataset", "mnist", "--dataset digits"),
])
def test_a_run_defining_change_is_refused_naming_the_checkpoints_value(flag, value, checkpoints, tmp_path, capsys):
    ckpt = tmp_path / "c.npz"
    status, _, err = main(train_cli, ["--dataset", "digits", "--epochs", "1", "--verbose", "0",
                                      "--checkpoint", ckpt, *TINY], capsys)
    assert status == 0, err
    status, _, err = main(train_cli, ["--resume", ckpt, "--epochs", "2", flag, value], capsys)
    assert status == 2
    assert (f"argument --resume: {ckpt}: 1 setting contradicts the checkpoint's run: {flag} {value} "
            f"(the checkpoint: {checkpoints})") in err


def test_a_batch_size_the_cosine_schedule_counts_is_refused_with_the_reason(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "c.npz"
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 2)
        status, _, err = main(train_cli, ["--dataset", "digits", "--epochs", "2", "--schedule", "cosine",
                                          "--verbose", "0", "--checkpoint", ckpt, *TINY], capsys)
    assert status == 130 and load_checkpoint(ckpt)["meta"]["epoch"] == 1
    status, _, err = main(train_cli, ["--resume", ckpt, "--epochs", "2", "--batch-size", "16"], capsys)
    assert status == 2
    steps = load_checkpoint(ckpt)["meta"]["schedule"]["state"]["total_steps"]
    assert (f"--batch-size 16: the cosine schedule of {ckpt} counts its {steps} steps in batches of 32; another "
            "size changes the steps per epoch, so the schedule would no longer end with epoch 2; resume with "
            "--batch-size 32, or start a new run with --batch-size 16") in err
    status, out, err = main(train_cli, ["--resume", ckpt, "--epochs", "2", "--lr", "0.01", "--verbose", "2"], capsys)
    assert status == 0 and "--lr 0.001 -> 0.01" in out, err  # the rate may change under it


def test_a_warm_up_keeps_its_batch_size_until_it_ends(tmp_path):
    ckpt = tmp_path / "c.npz"
    config = TrainConfig(dataset="digits", epochs=2, warmup_epochs=1, limit_train=200, limit_test=50, batch_size=32,
                         device="cpu", verbose=0, checkpoint=str(ckpt))
    run(config, log=lambda *a: None)
    meta = load_checkpoint(ckpt)["meta"]
    resumed = dataclasses.replace(config, epochs=3, batch_size=16, resume=str(ckpt))
    check_resume(resumed, meta)  # constant, the warm-up over: the batch size may change
    state = meta["schedule"]["state"]
    state["step_count"] = state["warmup_steps"] - 1
    with pytest.raises(FlagError, match=r"--batch-size 16: the warm-up of .* counts its \d+ steps in batches of 32 "
                                        r"and is at step \d+; another size would stretch or shorten it"):
        check_resume(resumed, meta)


def test_resume_changes_names_each_change_in_the_flags_words_and_not_a_path_written_otherwise(tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = TrainConfig(dataset="digits", limit_test=100, checkpoint="runs/c.npz").to_dict()
    assert saved["checkpoint"] == str(tmp_path / "runs" / "c.npz") and saved["dataset"] == "digits"
    same = TrainConfig(dataset="digits", limit_test=100, checkpoint=str(tmp_path / "runs" / ".." / "runs" / "c.npz"))
    assert resume_changes(same, {"config": saved}) == []
    other = TrainConfig(dataset="digits", limit_test=None, augment="shift:1", verbose=2, checkpoint="runs/c.npz")
    assert resume_changes(other, {"config": saved}) == ["--augment none -> shift:1",
                                                       "--limit-test 100 -> (all test images)"]


def test_every_setting_is_either_changeable_or_refused_on_resume():
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(RESUME_MAY_CHANGE + TrainConfig.RUN_DEFINING + ("resume",)) == sorted(fields)


# -- a folder named like a built-in dataset ---------------------------------------------------
def test_a_folder_named_like_a_built_in_dataset_warns_and_dot_slash_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits" / "a").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"--dataset digits loads the built-in digits dataset, not the folder "
                                         r"\./digits here; give --dataset \./digits to train on the folder"):
        TrainConfig(dataset="digits").validate()
    assert TrainConfig(dataset="./digits").image_folder and not TrainConfig(dataset="digits").image_folder
    (tmp_path / "mnist").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(dataset="mnist", data_dir="mnist").validate()  # the folder read is the data folder: no warning


# -- --help ---------------------------------------------------------------------------------
def test_help_groups_the_flags_and_says_what_a_resume_refuses_and_may_change():
    text = train_cli.build_parser().format_help()
    sections = {}
    for block in re.split(r"\n\n(?=\S)", text):
        title, _, body = block.partition(":\n")
        sections[title] = body
    for title, flags in (("data", ["--dataset", "--image-size", "--limit-train", "--augment"]),
                         ("model", ["--arch", "--normalize"]),
                         ("training", ["--epochs", "--batch-size", "--lr", "--optimizer", "--schedule", "--resume"]),
                         ("output", ["--checkpoint", "--metrics-json", "--plot", "--verbose"]),
                         ("device", ["--device", "--distributed"])):
        assert title in sections, list(sections)
        for flag in flags:
            assert re.search(rf"^  {flag}\b", sections[title], re.M), (title, flag)
    assert "--dataset shapes/ --image-size 32x32 --epochs 10 --checkpoint runs/shapes.npz" in text
    resume = " ".join(text.split()).split("--resume PATH ", 1)[1].split(" output:", 1)[0]
    refused, may_change = resume.split("May change:")
    for name in TrainConfig.RUN_DEFINING:
        assert f"--{name.replace('_', '-')}" in refused.replace("- ", "-"), name
    for name in RESUME_MAY_CHANGE:
        assert f"--{name.replace('_', '-')}" in may_change.replace("- ", "-"), name
