"""scripts/train.py and scripts/evaluate.py as a user runs them: exit codes, one-line
messages, help, outputs checked before any data loads, Ctrl-C, JSON.

Most tests call ``main(argv)`` in-process (a subprocess costs seconds on a small machine);
the pipe and SIGINT cases run a real process.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpucnn.data.datasets
import gpucnn.training.loops
import gpucnn.training.report
import gpucnn.training.run
from gpucnn.training.checkpoint import load_checkpoint
from gpucnn.data.batches import DataError
from gpucnn.training.run import TrainConfig, run
from scripts_in_process import interrupt_at_epoch, load_script, main  # noqa: F401  (test_toolkit_cli imports them from here)

REPO = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, str(REPO / "scripts" / "train.py")]


train_cli = load_script("train")
evaluate_cli = load_script("evaluate")


def error_lines(err):
    return [line for line in err.splitlines() if "error:" in line]


@pytest.fixture
def no_data(monkeypatch):
    """Loading data, building or training a model fails the test: what is checked must be
    checked before."""
    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded (or a model built) before the flags were checked")
    monkeypatch.setattr(gpucnn.training.run, "load_dataset", forbidden)
    monkeypatch.setattr(gpucnn.training.run, "build_model", forbidden)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """A 2-epoch digits run (checkpoint + its result), shared by the read-only tests."""
    path = tmp_path_factory.mktemp("ckpt") / "digits.npz"
    result = run(TrainConfig(dataset="digits", epochs=2, lr=0.01, limit_test=100, checkpoint=str(path),
                             verbose=0), log=lambda *a: None)
    return path, result


# -- 5: help ------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [train_cli, evaluate_cli], ids=["train", "evaluate"])
def test_every_option_has_help_and_each_default_shows_once(script):
    parser = script.build_parser()
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    arguments = text[min(text.find(h) for h in ("positional arguments:", "options:") if h in text):]
    blocks = re.split(r"\n(?=  -|  [a-z])", arguments)  # one block per argument
    for action in parser._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"
        flag = (action.option_strings or [action.dest])[-1]
        block = next(b for b in blocks if re.search(rf"(^|, ){re.escape(flag)}\b", b.strip()))
        assert block.count("(default:") <= 1, block
    unwrapped = re.sub(r"-\n\s+", "-", text)  # argparse may wrap a path at a hyphen (/tmp/ci-check)
    assert unwrapped.count(f"{train_cli.DATA_ROOT}/<dataset>") == 1


def test_help_shows_whole_descriptions_and_the_data_dir_and_momentum_defaults_once():
    train_help = train_cli.build_parser().format_help()
    assert re.search(r"--seed SEED .*\(default: 0\)", " ".join(train_help.split()))
    flat = " ".join(train_help.split())
    assert "--momentum BETA momentum of --optimizer momentum or nesterov, only with them (default: 0.9)" in flat
    assert "(default: 0, and 0.01 for adamw)" in flat and flat.count("(default: 0, and 0.01") == 1
    assert "resumes only up to those epochs" in flat  # a fixed-length schedule cannot be stretched
    assert "--normalize, --no-normalize" in flat and "raw images [0, 1] (default: on)" in flat
    evaluate_help = evaluate_cli.build_parser().format_help()
    assert "loss, accuracy and the confusion matrix." in evaluate_help
    assert "mnist unless --dataset says otherwise." in evaluate_help


# -- bad flags: exit 2, one line, before any data ------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--batch-size", "-8"], "argument --batch-size: expected a positive integer, got '-8'"),
    (["--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--limit-train", "-5"], "argument --limit-train: expected a positive integer, got '-5'"),
    (["--val-fraction", "1.5"], "argument --val-fraction: expected a fraction in (0, 1), got '1.5'"),
    (["--resume", "no/such/file.npz"], "argument --resume: no/such/file.npz: no such file"),
    (["--epochs", "2", "--bogus"], "unrecognized arguments: --bogus"),
    (["--momentum", "1.2", "--optimizer", "momentum"], "argument --momentum: expected a number in [0, 1), got '1.2'"),
    (["--momentum", "0.5"], "argument --momentum: only used with --optimizer momentum or nesterov, got --optimizer adam"),
    (["--dataset", "digits", "--data-dir", "x"],
     "argument --data-dir: only used with --dataset mnist, fashion-mnist or cifar10, got --dataset digits"),
    (["--dataset", "digits", "--download"], "argument --download: only used with --dataset mnist, fashion-mnist"),
])
def test_bad_flags_exit_2_with_one_line_before_loading_data(flags, message, capsys, no_data):
    status, out, err = main(train_cli, flags, capsys)
    assert status == 2
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0], err
    assert out == ""


# -- 7: output paths checked before the work -----------------------------------------------
def bad_output(tmp_path):
    (tmp_path / "a_file").write_text("x")
    return [
        (["--checkpoint", "/proc/x.npz"], "argument --checkpoint: cannot create files in /proc"),
        (["--checkpoint", tmp_path], f"argument --checkpoint: {tmp_path} is a folder"),
        (["--checkpoint", tmp_path / "a_file" / "c.npz"], "argument --checkpoint: cannot create the folder"),
        (["--metrics-json", "/proc/gpucnn/m.json"], "argument --metrics-json: cannot create files in /proc"),
        (["--metrics-json", tmp_path], "argument --metrics-json: "),
        (["--metrics-json", "/dev/null"], "argument --metrics-json: /dev/null exists and is not a regular file"),
        (["--plot", "/proc/p.png"], "argument --plot: cannot create files in /proc"),
        (["--plot", tmp_path / "out.txt"], "argument --plot: matplotlib cannot write .txt files; use one of"),
        (["--plot", tmp_path / "out"], "has no extension to choose the format"),
        (["--plot", tmp_path / "o.png", "--metrics-json", tmp_path / "o.png"], "the same file as --metrics-json"),
        (["--metrics-json", tmp_path / "c.npz", "--checkpoint", tmp_path / "c.npz"], "the same file as --checkpoint"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_output_paths_exit_2_naming_the_flag_before_loading_data(case, tmp_path, capsys, no_data):
    flags, message = bad_output(tmp_path)[case]
    status, out, err = main(train_cli, ["--dataset", "digits", *flags], capsys)
    assert status == 2, err
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0], err
    assert not list(tmp_path.glob(".gpucnn-probe-*"))  # the write probe cleans up


@pytest.mark.parametrize("flag", ["--metrics-json", "--plot"])
def test_an_output_failing_after_training_keeps_the_checkpoint_and_says_so(flag, tmp_path, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(gpucnn.training.report, "write_metrics_json", disk_full)
    monkeypatch.setattr("gpucnn.training.plot.plot_run", disk_full)
    ckpt, out_file = tmp_path / "c.npz", tmp_path / ("m.json" if flag == "--metrics-json" else "p.png")
    status, out, err = main(train_cli, ["--dataset", "digits", "--epochs", "1", "--verbose", "0",
                                        "--checkpoint", ckpt, flag, out_file], capsys)
    assert status == 1
    assert error_lines(err) == [f"error: could not write {flag} {out_file} ([Errno 28] No space left on device); "
                                f"the trained model is kept in {ckpt}"]
    assert "Traceback" not in err and out.startswith("test accuracy: ")
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 1


# -- 8: subsets and splits too small --------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--limit-train", "5"], "--limit-train 5 with --val-fraction 0.1 leaves 4 training and 1 validation images "
                             "for 10 classes (a stratified split needs 10 on each side); pass --limit-train 91 or more"),
    (["--limit-train", "20"], "pass --limit-train 91 or more"),
    (["--limit-train", "25", "--val-fraction", "0.3"], "pass --limit-train 31 or more"),
    (["--val-fraction", "0.001"], "--val-fraction 0.001 on 1437 images leaves 1435 training and 2 validation images"),
    (["--val-fraction", "0.999"], "pass --val-fraction 0.993 or less"),
    (["--limit-test", "5"], "--limit-test 5 cannot hold one image of each of the 10 classes; pass --limit-test 10 or more"),
])
def test_splits_that_leave_a_class_or_split_empty_exit_2_before_any_model(flags, message, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was built before the split sizes were checked")
    monkeypatch.setattr(gpucnn.training.run, "build_model", forbidden)
    status, out, err = main(train_cli, ["--dataset", "digits", "--verbose", "0", *flags], capsys)
    assert status == 2
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0], err


# -- 9 and 10: checkpoints that cannot be resumed --------------------------------------------
def test_a_truncated_or_random_checkpoint_is_one_line_exit_2(tmp_path, digits_checkpoint, capsys, no_data):
    truncated, random_bytes = tmp_path / "truncated.npz", tmp_path / "random.npz"
    truncated.write_bytes(digits_checkpoint[0].read_bytes()[:3000])
    random_bytes.write_bytes(np.random.default_rng(0).bytes(500))
    for path, problem in ((truncated, "the file is truncated or damaged"), (random_bytes, "not an .npz file")):
        for script, argv in ((train_cli, ["--dataset", "digits", "--epochs", "5", "--resume", path]),
                             (evaluate_cli, [path])):
            status, out, err = main(script, argv, capsys)
            assert status == 2
            assert len(error_lines(err)) == 1 and f"{path}: {problem}" in err, err
            assert "pickle" not in err and "Traceback" not in err


def test_a_model_file_is_not_a_checkpoint_to_resume(tmp_path, digits_checkpoint, capsys, no_data):
    model_file = tmp_path / "model.npz"
    digits_checkpoint[1]["model"].save(model_file)
    status, _, err = main(train_cli, ["--dataset", "digits", "--resume", model_file], capsys)
    assert status == 2
    assert f"{model_file}: a model file (Sequential.save), not a training checkpoint" in error_lines(err)[0]


def test_resume_with_no_epochs_left_exits_2(digits_checkpoint, capsys, no_data):
    path = digits_checkpoint[0]
    status, _, err = main(train_cli, ["--dataset", "digits", "--limit-test", "100", "--lr", "0.01",
                                      "--epochs", "2", "--resume", path], capsys)
    assert status == 2
    assert error_lines(err) == [f"train.py: error: argument --resume: {path} already holds 2 epochs; "
                                "pass --epochs 3 or more to continue"]


# -- 11: Ctrl-C ----------------------------------------------------------------------------
def test_ctrl_c_prints_a_resume_command_that_keeps_checkpointing(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "c.npz"
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 2)
        status, out, err = main(train_cli, ["--dataset", "digits", "--epochs", "9", "--lr=0.01", "--see", "3",
                                            "--limit-test", "50", "--verbose", "0", "--checkpoint", ckpt], capsys)
    assert status == 130 and "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == f"interrupted during epoch 2; epoch 1 is saved in {ckpt}"
    command = shlex.split(lines[1].removeprefix("resume with: "))
    assert command[:2] == ["python", sys.argv[0]] or command[1].endswith("train.py")
    args = command[2:]
    for flag, value in (("--dataset", "digits"), ("--epochs", "9"), ("--lr", "0.01"), ("--seed", "3"),
                        ("--limit-test", "50"), ("--verbose", "0"), ("--resume", str(ckpt)),
                        ("--checkpoint", str(ckpt))):
        assert args[args.index(flag) + 1] == value, (flag, args)
    # following the command literally (one epoch more, to keep the test short) keeps checkpointing
    args[args.index("--epochs") + 1] = "2"
    status, out, err = main(train_cli, args, capsys)
    assert status == 0, err
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 2


def test_ctrl_c_without_checkpoint_saves_the_last_completed_epoch_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = dict(dataset="digits", lr=0.01, verbose=0, seed=1, limit_test=50)
    straight = run(TrainConfig(epochs=2, **base), log=lambda *a: None)
    with monkeypatch.context() as patch, pytest.raises(gpucnn.training.run.TrainingInterrupted) as info:
        interrupt_at_epoch(patch, 2)
        run(TrainConfig(epochs=4, **base), log=lambda *a: None)
    assert (info.value.epoch, info.value.checkpoint) == (1, gpucnn.training.run.INTERRUPTED_CHECKPOINT)
    resumed = run(TrainConfig(epochs=2, resume=gpucnn.training.run.INTERRUPTED_CHECKPOINT, **base), log=lambda *a: None)
    for key, value in straight["model"].state_dict().items():
        np.testing.assert_array_equal(resumed["model"].state_dict()[key], value, err_msg=key)


def test_ctrl_c_before_any_epoch_says_there_is_nothing_to_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    interrupt_at_epoch(monkeypatch, 1)
    status, out, err = main(train_cli, ["--dataset", "digits", "--epochs", "3", "--verbose", "0"], capsys)
    assert status == 130
    assert err.splitlines() == ["interrupted during epoch 1; no epoch had completed, nothing to resume"]
    assert not list(tmp_path.iterdir())


def test_a_closed_stdout_does_not_stop_training(tmp_path, capsys, monkeypatch):
    class GonePipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise OSError("no file")
    monkeypatch.setattr(sys, "stdout", GonePipe())
    ckpt = tmp_path / "c.npz"
    status = train_cli.main(["--dataset", "digits", "--epochs", "2", "--checkpoint", str(ckpt)])
    assert status == 0 and load_checkpoint(ckpt)["meta"]["epoch"] == 2
    assert capsys.readouterr().err == ""


def wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert path.exists(), "no checkpoint was written after the first epoch"


def test_ctrl_c_through_tee_exits_130_without_traceback(tmp_path):
    """As `train.py ... 2>&1 | tee log` and Ctrl-C: SIGINT reaches python and tee; later
    writes hit a closed pipe. A real process group, a real pipe."""
    ckpt, log, status = tmp_path / "c.npz", tmp_path / "log", tmp_path / "status"
    command = (f"{shlex.join(TRAIN)} --dataset digits --epochs 100000 --checkpoint {ckpt} 2>&1 "
               f"| tee {log} > /dev/null; echo ${{PIPESTATUS[0]}} > {status}")
    proc = subprocess.Popen(["bash", "-c", command], cwd=tmp_path, start_new_session=True)
    wait_for(ckpt, proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    assert status.read_text().strip() == "130"
    text = log.read_text()
    assert "Traceback" not in text and "Error" not in text and "\r" not in text
    assert load_checkpoint(ckpt)["meta"]["epoch"] >= 1
    assert not list(tmp_path.glob(".tmp-*"))


def test_ctrl_c_in_a_process_prints_the_resume_hint_on_stderr(tmp_path):
    ckpt = tmp_path / "c.npz"
    proc = subprocess.Popen(TRAIN + ["--dataset", "digits", "--epochs", "100000", "--checkpoint", str(ckpt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    wait_for(ckpt, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "\r" not in out + err
    said = int(re.search(rf"epoch (\d+) is saved in {re.escape(str(ckpt))}", err).group(1))
    assert load_checkpoint(ckpt)["meta"]["epoch"] >= said >= 1  # > only if Ctrl-C hit between rename and report
    assert f"--resume {ckpt} --checkpoint {ckpt}" in err and "--epochs 100000" in err
    assert sum(line.startswith("epoch ") for line in out.splitlines()) >= said - 1  # verbose 1 in a pipe


# -- 6 and 12: what goes where, what is printed ----------------------------------------------
def test_a_run_logs_lines_on_stdout_no_bars_off_a_terminal_and_only_settings_that_apply(tmp_path, capsys):
    metrics, ckpt = tmp_path / "metrics.json", tmp_path / "ckpt.npz"
    status, out, err = main(train_cli, ["--dataset", "digits", "--epochs", "3", "--lr", "0.01", "--device", "cpu",
                                        "--metrics-json", metrics, "--checkpoint", ckpt], capsys)
    assert status == 0 and err == ""  # verbose 1 in a pipe: no bars, one line per epoch
    assert "\r" not in out
    config = json.loads(out.splitlines()[0].removeprefix("config: "))
    assert config["dataset"] == "digits" and config["epochs"] == 3
    assert not {"data_dir", "download", "momentum", "resume", "limit_train"} & set(config)
    assert config["weight_decay"] == 0 and config["schedule"] == "constant" and config["normalize"] is True
    assert "device: cpu" in out and "Total" in out and "confusion matrix" in out
    assert sum(line.startswith("epoch ") for line in out.splitlines()) == 3
    assert out.splitlines()[-1].startswith("test accuracy: ")
    m = json.loads(metrics.read_text())
    assert set(m) == {"device", "config", "history", "test_loss", "test_acc", "confusion_matrix", "class_names"}
    assert m["device"] == "cpu" and m["config"]["epochs"] == 3 and m["config"]["dataset"] == "digits"
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    for h in m["history"]:
        assert set(h) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"}
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1
    matrix = np.array(m["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.dtype.kind == "i"
    assert m["test_acc"] == pytest.approx(np.trace(matrix) / matrix.sum())

    status, out, _ = main(evaluate_cli, [ckpt, "--device", "cpu"], capsys)  # on the dataset the checkpoint names
    assert status == 0
    assert "data: digits test images (as recorded in the checkpoint)" in out
    assert f"accuracy {m['test_acc']:.2%} on 360 images" in out


def test_applicable_settings_follow_dataset_and_optimizer():
    mnist = TrainConfig(optimizer="momentum").applicable()
    assert mnist["data_dir"] == "data/mnist" and mnist["download"] is False and mnist["momentum"] == 0.9
    assert mnist["weight_decay"] == 0.0 and mnist["warmup_epochs"] == 0
    assert "momentum" not in TrainConfig().applicable()
    assert TrainConfig(optimizer="nesterov", momentum=0.8).applicable()["momentum"] == 0.8
    assert TrainConfig(optimizer="adamw").applicable()["weight_decay"] == 0.01  # the effective value
    assert TrainConfig(optimizer="adamw", weight_decay=0.0).applicable()["weight_decay"] == 0.0
    assert "warmup_epochs" not in TrainConfig(schedule="onecycle").applicable()
    for dataset in ("digits", "my.npz"):
        assert not {"data_dir", "download"} & set(TrainConfig(dataset=dataset).applicable())


def test_download_is_off_unless_asked(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_load_mnist(data_dir, download=True):
        calls.append(download)
        raise DataError(f"MNIST files missing in {data_dir}")
    monkeypatch.setitem(gpucnn.data.datasets._FILE_LOADERS, "mnist", fake_load_mnist)
    for flags in ([], ["--download"]):
        status, _, err = main(train_cli, ["--data-dir", tmp_path, "--verbose", "0", *flags], capsys)
        assert status == 2 and error_lines(err) == [f"train.py: error: MNIST files missing in {tmp_path}"]
    assert calls == [False, True]


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    status, _, err = main(train_cli, ["--data-dir", tmp_path, "--verbose", "0"], capsys)
    assert status == 2 and len(err.splitlines()) == 1  # bad input: one line
    assert "MNIST files missing in" in err and "train-images-idx3-ubyte.gz" in err and "Traceback" not in err
    assert "put them there" in err and "--download" in err  # both remedies


# -- 13: evaluate.py uses the checkpoint's data ----------------------------------------------
def test_evaluate_uses_the_checkpoints_dataset_and_test_subset(digits_checkpoint, capsys):
    path, result = digits_checkpoint
    status, out, err = main(evaluate_cli, [path], capsys)
    assert status == 0, err
    assert "data: digits test images (as recorded in the checkpoint)" in out
    assert f"accuracy {result['test_acc']:.2%} on 100 images" in out  # the run's --limit-test 100

    status, out, err = main(evaluate_cli, [path, "--dataset", "mnist"], capsys)  # a wrong override
    assert status == 2 and len(err.splitlines()) == 1
    assert f"{path} does not take mnist images of shape (1, 28, 28)" in err


def test_evaluate_a_model_file_says_which_dataset_it_used(tmp_path, digits_checkpoint, capsys):
    model_file = tmp_path / "model.npz"
    digits_checkpoint[1]["model"].save(model_file)
    status, out, err = main(evaluate_cli, [model_file, "--dataset", "digits", "--limit-test", "100"], capsys)
    assert status == 0, err
    assert "model file" in out and "data: digits test images (chosen by --dataset)" in out
    assert "on 100 images" in out
    status, out, err = main(evaluate_cli, [model_file], capsys)  # defaults to mnist, says so
    assert "a model file records no dataset: mnist by default" in out
    assert status == 2 and "does not take mnist images" in err


# -- the GPU fallback and the plot ----------------------------------------------------------
def test_gpu_request_without_gpu_falls_back_and_says_so():
    from gpucnn.backends.backend import gpu_status
    if gpu_status()[0] is not None:
        pytest.skip("a GPU is present: nothing falls back")
    proc = subprocess.run(TRAIN + ["--device", "gpu", "--dataset", "digits", "--epochs", "1", "--verbose", "2"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "falling back to the CPU" in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [
        next(l for l in proc.stderr.splitlines() if l.startswith("warning: --device gpu asked for a GPU"))]
    assert "device: cpu (no usable GPU found" in proc.stdout


def test_plot_writes_the_format_its_extension_names(tmp_path, capsys):
    png, pdf = tmp_path / "run.png", tmp_path / "sub" / "run.pdf"
    for path in (png, pdf):
        status, _, err = main(train_cli, ["--dataset", "digits", "--epochs", "1", "--verbose", "0",
                                          "--plot", path], capsys)
        assert status == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"


# -- 15: the figure -----------------------------------------------------------------------
def test_kernel_mosaic_is_one_gap_free_image():
    from gpucnn.training.plot import kernel_mosaic

    kernels = np.arange(32 * 25, dtype=np.float32).reshape(32, 5, 5)
    mosaic = kernel_mosaic(kernels)
    assert mosaic.shape == (4 * 6 - 1, 8 * 6 - 1)  # 4 x 8 tiles, one-pixel lines between them
    np.testing.assert_array_equal(mosaic[:5, :5], kernels[0])
    np.testing.assert_array_equal(mosaic[:5, 6:11], kernels[1])  # row-major
    np.testing.assert_array_equal(mosaic[6:11, :5], kernels[8])
    assert np.isnan(mosaic[5]).all() and np.isnan(mosaic[:, 5]).all()
    assert np.isfinite(mosaic).sum() == kernels.size  # every kernel, no empty tiles


def test_figure_names_the_run_labels_every_axis_in_percent(digits_checkpoint):
    from gpucnn.training.plot import run_figure

    _, result = digits_checkpoint
    figure = run_figure(result)
    assert figure._suptitle.get_text() == f"simple on digits, 2 epochs: test accuracy {result['test_acc']:.2%}"
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    assert set(panels) == {"loss", "accuracy", "test confusion matrix (100 images)", "test accuracy per class",
                           "first-layer kernels: 32 of 5x5"}
    for title, ax in panels.items():
        if not title.startswith("first-layer"):
            assert ax.get_ylabel(), f"{title} has no y-axis label"
    for title in ("accuracy", "test accuracy per class"):
        ax = panels[title]
        assert ax.get_ylabel() == "accuracy (%)"
        assert 50 <= ax.get_ylim()[1] <= 110  # percent, not a fraction
        assert any(100 * result["test_acc"] == pytest.approx(line.get_ydata()[0]) for line in ax.get_lines())
    matrix = panels["test confusion matrix (100 images)"]
    numbers = [t for t in matrix.texts]
    assert len(numbers) == 100 and min(t.get_fontsize() for t in numbers) >= 10
    assert sum(int(t.get_text()) for t in numbers) == 100
    kernels = panels["first-layer kernels: 32 of 5x5"]
    assert len(kernels.images) == 1 and kernels.images[0].get_array().shape == (23, 47)


@pytest.mark.parametrize("script", ["train.py", "benchmark.py"])
@pytest.mark.parametrize("preset, expected", [(None, "4"), ("12", "12")])
def test_scripts_let_openblas_workers_sleep_unless_the_user_chose(script, preset, expected):
    """OPENBLAS_THREAD_TIMEOUT is set before NumPy (and so OpenBLAS) is loaded; a user's value
    wins. The benchmark times gpucnn as the training script runs it."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    probe = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
             f"sys.path.insert(0, {str(REPO / 'scripts')!r})  # as `python scripts/{script}` would\n"
             "import builtins; seen = {}; real_import = builtins.__import__\n"
             "def spy(name, *a, **k):\n"
             "    if name == 'numpy' and 'at_numpy' not in seen:\n"
             "        import os; seen['at_numpy'] = os.environ.get('OPENBLAS_THREAD_TIMEOUT')\n"
             "    return real_import(name, *a, **k)\n"
             "builtins.__import__ = spy\n"
             "try:\n"
             f"    runpy.run_path({str(REPO / 'scripts' / script)!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('at numpy import:', seen['at_numpy'])\n")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"at numpy import: {expected}"
