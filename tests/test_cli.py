"""scripts/train.py and scripts/evaluate.py as a user runs them: exit codes, messages, JSON."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, str(REPO / "scripts" / "train.py")]
EVALUATE = [sys.executable, str(REPO / "scripts" / "evaluate.py")]


def run_cli(args, cmd=TRAIN, **kwargs):
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=300, cwd=kwargs.pop("cwd", REPO),
                          **kwargs)


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--batch-size", "-8"], "argument --batch-size: expected a positive integer, got '-8'"),
    (["--lr", "0"], "argument --lr: expected a positive number, got '0'"),
    (["--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--arch", "resnet"], "argument --arch: invalid choice: 'resnet'"),
    (["--limit-train", "-5"], "argument --limit-train: expected a positive integer, got '-5'"),
    (["--val-fraction", "1.5"], "argument --val-fraction: expected a fraction in (0, 1), got '1.5'"),
    (["--val-fraction", "0"], "argument --val-fraction: expected a fraction in (0, 1), got '0'"),
    (["--resume", "no/such/file.npz"], "argument --resume: no checkpoint file at no/such/file.npz"),
    (["--epochs", "2", "--bogus"], "unrecognized arguments: --bogus"),
    (["--momentum", "1.2", "--optimizer", "momentum"], "argument --momentum: expected a number in [0, 1), got '1.2'"),
    (["--momentum", "0.5"], "argument --momentum: only used with --optimizer momentum, got --optimizer adam"),
    (["--dataset", "digits", "--data-dir", "x"], "argument --data-dir: only used with --dataset mnist"),
])
def test_bad_flags_exit_2_with_one_line_before_loading_data(flags, message, tmp_path):
    # --data-dir points at an empty folder: had any data been loaded, the error would differ
    proc = run_cli(flags + ([] if "--dataset" in flags else ["--data-dir", str(tmp_path)]))
    assert proc.returncode == 2
    error_lines = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(error_lines) == 1 and message in error_lines[0], proc.stderr
    assert proc.stdout == ""


def test_missing_data_is_a_clear_error(tmp_path):
    proc = run_cli(["--data-dir", str(tmp_path), "--verbose", "0"],
                   env={**os.environ, "no_proxy": "*", "https_proxy": "http://127.0.0.1:9"})
    assert proc.returncode == 1
    assert "MNIST files missing in" in proc.stderr and "train-images-idx3-ubyte.gz" in proc.stderr


def test_digits_run_writes_the_metrics_json(tmp_path):
    metrics = tmp_path / "metrics.json"
    ckpt = tmp_path / "ckpt.npz"
    proc = run_cli(["--dataset", "digits", "--epochs", "3", "--lr", "0.01", "--verbose", "2",
                    "--metrics-json", str(metrics), "--checkpoint", str(ckpt)])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "device: cpu" in out and "Total" in out and "confusion matrix" in out
    assert sum(line.startswith("epoch ") for line in out.splitlines()) == 3
    m = json.loads(metrics.read_text())
    assert set(m) == {"device", "config", "history", "test_loss", "test_acc", "confusion_matrix"}
    assert m["device"] == "cpu" and m["config"]["epochs"] == 3 and m["config"]["dataset"] == "digits"
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    for h in m["history"]:
        assert set(h) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s"}
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1
    matrix = np.array(m["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.dtype.kind == "i"
    assert m["test_acc"] == pytest.approx(np.trace(matrix) / matrix.sum())

    evaluated = run_cli([str(ckpt), "--dataset", "digits"], cmd=EVALUATE)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"accuracy {m['test_acc']:.2%}" in evaluated.stdout


def test_gpu_request_without_gpu_falls_back_and_says_so():
    pytest.importorskip("numpy")
    from gpucnn.backend import gpu_status
    if gpu_status()[0] is not None:
        pytest.skip("a GPU is present: nothing falls back")
    proc = run_cli(["--device", "gpu", "--dataset", "digits", "--epochs", "1", "--verbose", "2"])
    assert proc.returncode == 0, proc.stderr
    assert "falling back to the CPU" in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [
        next(l for l in proc.stderr.splitlines() if l.startswith("warning: --device gpu asked for a GPU"))]
    assert "device: cpu (no usable GPU found" in proc.stdout


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs the optional matplotlib")
    png = tmp_path / "run.png"
    proc = run_cli(["--dataset", "digits", "--epochs", "1", "--verbose", "0", "--plot", str(png)])
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    proc = subprocess.Popen(TRAIN + ["--limit-train", "3000", "--limit-test", "100", "--epochs", "200",
                                     "--verbose", "2", "--checkpoint", str(ckpt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint was written after the first epoch"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint after epoch" in out and "--resume" in out
    from gpucnn.train import load_checkpoint
    assert load_checkpoint(ckpt)["meta"]["epoch"] >= 1
