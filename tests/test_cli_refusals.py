"""Every script refuses bad input with exit status 2 and at most two lines on stderr
(``<prog>: error: ...`` and ``try '<prog> --help'``), image folders and model files
included; a failure (a NaN loss, a failed download, a full disk) exits with 1, and a full
disk says which file, the space a save needs, the space free and the epoch kept; a closed
stdout (``| head -1``) ends evaluate.py and predict.py quietly with 0."""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import gpucnn.training.checkpoint
import gpucnn.data.datasets
import gpucnn.training.run
from gpucnn.training.checkpoint import DiskFullError, load_checkpoint, write_checkpoint
from gpucnn.data.batches import DataError
from gpucnn.fileio import atomic_output, format_bytes
from gpucnn.data.images import parse_image_size
from gpucnn.training.loops import NonFiniteLossError
from gpucnn.training.run import TrainConfig, run
from scripts_in_process import load_script, main

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {name: load_script(name, "refusals") for name in ("train", "evaluate", "predict", "export", "benchmark")}
TINY = ["--dataset", "digits", "--limit-train", "200", "--limit-test", "50", "--verbose", "0"]


def refusal(status, err, prog):
    """The one line of a refusal (exit 2, at most two lines: the error and the hint)."""
    lines = err.splitlines()
    assert status == 2, err
    assert 1 <= len(lines) <= 2 and lines[0].startswith(f"{prog}: error: "), err
    assert lines[1:] in ([], [f"try '{prog} --help'"]), err
    assert "usage:" not in err and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-epoch digits checkpoint (images (1, 8, 8))."""
    path = tmp_path_factory.mktemp("ckpt") / "digits.npz"
    run(TrainConfig(dataset="digits", epochs=1, limit_train=200, limit_test=50, checkpoint=str(path), verbose=0),
        log=lambda *a: None)
    return path


# -- a bad command line: two lines, not argparse's usage ---------------------------------------
@pytest.mark.parametrize("name, argv", [
    ("train", ["--bogus"]),
    ("evaluate", ["model.npz", "--bogus"]),
    ("predict", ["model.npz", "a.png", "--bogus"]),
    ("export", ["model.npz", "m.onnx", "--bogus"]),
    ("benchmark", ["--bogus"]),
])
def test_an_unknown_flag_is_two_lines_and_exit_2_in_every_script(name, argv, capsys):
    status, out, err = main(SCRIPTS[name], argv, capsys)
    assert refusal(status, err, f"{name}.py") == f"{name}.py: error: unrecognized arguments: --bogus"
    assert err.splitlines()[1] == f"try '{name}.py --help'" and out == ""


@pytest.mark.parametrize("name, argv, message", [
    ("train", ["--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
    ("evaluate", [], "the following arguments are required: model"),
    ("predict", ["model.npz", "a.png", "--top-k", "0"], "argument --top-k: expected a positive integer, got '0'"),
    ("export", ["model.npz"], "the following arguments are required: output"),
    ("benchmark", ["--threads", "0"], "expected positive --batch-sizes, --threads, --steps and --repeats"),
    ("benchmark", ["--json", "/proc/gpucnn/b.json"], "argument --json: cannot create files in /proc"),
])
def test_bad_values_and_missing_arguments_are_refused_in_two_lines(name, argv, message, capsys):
    status, _, err = main(SCRIPTS[name], argv, capsys)
    assert message in refusal(status, err, f"{name}.py")


# -- image folders: bad input, exit 2 and one line ------------------------------------------------
def write_images(folder: Path, classes=("a", "b"), per_class: int = 3, corrupt: bool = False) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), 40 * i + 100 * c).save(folder / name / f"{i}.png")
    if corrupt:
        (folder / classes[-1] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return folder


def folder_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "a").mkdir(parents=True)
    (tmp_path / "no_images" / "b").mkdir()
    return [
        (tmp_path / "empty", "got no subfolders; fix: add a folder per class"),
        (tmp_path / "no_images", "expected at least one image file"),
        (write_images(tmp_path / "one", classes=("cat",)), "expected at least 2 class folders, got 1 (cat); fix: "),
        (write_images(tmp_path / "bad", corrupt=True),
         "1 of 7 image files cannot be read: {folder}/b/broken.png (UnidentifiedImageError"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_an_unusable_image_folder_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # evaluate.py's default cache: not the user's
    folder, message = folder_cases(tmp_path)[case]
    status, out, err = main(SCRIPTS["train"], ["--dataset", folder, "--cache-dir", tmp_path / "cache"], capsys)
    line = refusal(status, err, "train.py")
    assert len(err.splitlines()) <= 2 and message.format(folder=folder) in line
    if "cannot be read" not in message:  # the folder's layout is checked before anything is printed
        assert out == "" and line.startswith(f"train.py: error: argument --dataset {folder}")
    assert "skip_bad" not in err and "=True" not in err  # a CLI user sees flags, not library keywords
    if "cannot be read" in message:
        assert line.endswith("fix: delete or replace them, or leave them out with --skip-bad-images")
    if "cannot be read" not in message:  # evaluate.py leaves unreadable files out, saying how many
        from gpucnn.nn.zoo import build_model
        build_model("simple", (1, 8, 8), 2, np.random.default_rng(0)).save(tmp_path / "model.npz")
        status, _, err = main(SCRIPTS["evaluate"], [tmp_path / "model.npz", "--dataset", folder], capsys)
        assert message in refusal(status, err, "evaluate.py") and len(err.splitlines()) == 1


def test_evaluate_on_a_folder_too_small_to_split_as_a_run_would_names_no_flag_it_lacks(tmp_path, capsys,
                                                                                       monkeypatch):
    """A model file records no run: evaluate.py draws its test images as a default run would,
    and when 4 training images cannot be split as that run would, it needs no split at all
    (it used to refuse, naming --val-fraction, which it has no flag for)."""
    pytest.importorskip("PIL")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default cache: not the user's
    from gpucnn.nn.zoo import build_model
    build_model("simple", (1, 8, 8), 2, np.random.default_rng(0)).save(tmp_path / "model.npz")
    folder = write_images(tmp_path / "tiny")  # 3 images per class: 4 train, 2 test
    status, out, err = main(SCRIPTS["evaluate"], [tmp_path / "model.npz", "--dataset", folder,
                                                  "--device", "cpu"], capsys)
    assert status == 0 and err == "" and "on 2 images" in out and "--val-fraction" not in out
    status, _, err = main(SCRIPTS["evaluate"], [tmp_path / "model.npz", "--dataset", folder, "--limit-test", "1"],
                          capsys)
    assert "--limit-test 1 cannot hold one image of each of the 2 classes" in refusal(status, err, "evaluate.py")


@pytest.mark.parametrize("size", ["0", "-3", "0x5", "28x0"])
def test_a_non_positive_image_size_says_it_must_be_positive(size, tmp_path, capsys):
    pytest.importorskip("PIL")
    folder = write_images(tmp_path / "shapes")
    status, _, err = main(SCRIPTS["train"], ["--dataset", folder, f"--image-size={size}"], capsys)
    line = refusal(status, err, "train.py")
    assert "--image-size" in line and "must be positive" in line and f"got '{size}'" in line
    with pytest.raises(ValueError, match="the height and width must be positive"):
        parse_image_size(size)
    with pytest.raises(ValueError, match=r"expected HxW in pixels, e.g. 28x28 \(or one number"):
        parse_image_size("big")


# -- data found bad after the flags: 2; a failure: 1 -----------------------------------------------
def test_missing_dataset_files_are_bad_input_but_a_failed_download_is_a_failure(tmp_path, capsys, monkeypatch):
    def missing(data_dir, download=False):
        if not download:
            raise DataError(f"MNIST files missing in {data_dir}. Either put them there, or allow the download "
                            "with --download")
        try:
            raise DataError("could not download train-images-idx3-ubyte.gz:\n  mirror: timed out")
        except DataError as exc:
            raise DataError(f"MNIST files missing in {data_dir}, and the download failed: {exc}") from exc
    monkeypatch.setitem(gpucnn.data.datasets._FILE_LOADERS, "mnist", missing)
    status, _, err = main(SCRIPTS["train"], ["--data-dir", tmp_path, "--verbose", "0"], capsys)
    assert refusal(status, err, "train.py").endswith("allow the download with --download")
    status, _, err = main(SCRIPTS["train"], ["--data-dir", tmp_path, "--download", "--verbose", "0"], capsys)
    assert status == 1 and err.startswith(f"error: MNIST files missing in {tmp_path}, and the download failed")


def test_a_nan_loss_is_a_failure_not_bad_input(tmp_path, capsys, monkeypatch):
    def diverged(*args, **kwargs):
        raise NonFiniteLossError("the loss became nan at epoch 1; lower --lr")
    monkeypatch.setattr(gpucnn.training.run, "fit", diverged)
    status, _, err = main(SCRIPTS["train"], TINY, capsys)
    assert status == 1 and err.splitlines() == ["error: the loss became nan at epoch 1; lower --lr"]


# -- evaluate, predict, export: a missing file, a file that is no model, the wrong images --------
def test_evaluate_refuses_a_missing_file_a_non_model_and_images_the_model_does_not_take(checkpoint, tmp_path,
                                                                                          capsys):
    (tmp_path / "notes.npz").write_text("not a model")
    other = tmp_path / "other.npz"  # 5x5 images: not what the digits model takes
    rng = np.random.default_rng(0)
    np.savez(other, x_train=rng.integers(0, 256, (20, 5, 5), dtype=np.uint8), y_train=np.arange(20) % 2,
             x_test=rng.integers(0, 256, (10, 5, 5), dtype=np.uint8), y_test=np.arange(10) % 2)
    for argv, message in (([tmp_path / "gone.npz"], f"argument model: {tmp_path / 'gone.npz'}: no such file"),
                          ([tmp_path / "notes.npz"], f"argument model: {tmp_path / 'notes.npz'}: not an .npz file"),
                          ([checkpoint, "--dataset", other],
                           f"{checkpoint} does not take {other} images of shape (1, 5, 5)")):
        status, _, err = main(SCRIPTS["evaluate"], argv, capsys)
        assert message in refusal(status, err, "evaluate.py") and len(err.splitlines()) == 1


def test_predict_refuses_a_missing_model_a_non_model_and_names_images_it_cannot_read(checkpoint, tmp_path,
                                                                                       capsys):
    pytest.importorskip("PIL")
    from PIL import Image
    Image.new("L", (8, 8), 128).save(tmp_path / "good.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "notes.npz").write_text("not a model")
    for model, message in ((tmp_path / "gone.npz", "argument model: no file at"),
                           (tmp_path / "notes.npz", "argument model: ")):
        status, _, err = main(SCRIPTS["predict"], [model, tmp_path / "good.png"], capsys)
        assert message in refusal(status, err, "predict.py") and len(err.splitlines()) == 1
    status, out, err = main(SCRIPTS["predict"], [checkpoint, tmp_path / "good.png", tmp_path / "notes.txt",
                                                 tmp_path / "broken.png", tmp_path / "gone.png"], capsys)
    line = refusal(status, err, "predict.py")
    assert len(err.splitlines()) == 1 and "got 3 of 4 that cannot: " in line
    assert f"{tmp_path / 'notes.txt'} (not an image file); {tmp_path / 'broken.png'} (" in line
    assert line.endswith(f"{tmp_path / 'gone.png'} (no such file); the others were classified")
    assert out.startswith(f"{tmp_path / 'good.png'}: ")  # the readable image was classified


def test_export_refuses_a_missing_file_a_non_model_a_folder_output_and_a_shape_it_cannot_take(checkpoint,
                                                                                               tmp_path, capsys):
    pytest.importorskip("onnx")
    (tmp_path / "notes.npz").write_text("not a model")
    for argv, message in (([tmp_path / "gone.npz", tmp_path / "a.onnx"], "argument model: no file at"),
                          ([tmp_path / "notes.npz", tmp_path / "a.onnx"], "not an .npz file"),
                          ([checkpoint, tmp_path], f"argument output: {tmp_path} is a folder"),
                          ([checkpoint, tmp_path / "a.onnx", "--input-shape", "3", "9", "9"],
                           "argument --input-shape: " + f"{checkpoint} cannot take --input-shape 3 9 9: ")):
        status, _, err = main(SCRIPTS["export"], argv, capsys)
        line = refusal(status, err, "export.py")
        assert message in line and len(err.splitlines()) == 1 and "input_shape=" not in line
    assert not (tmp_path / "a.onnx").exists()


# -- a closed stdout ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["evaluate", "predict"])
def test_a_closed_stdout_ends_quietly_with_status_0(name, checkpoint, tmp_path):
    """As `evaluate.py CKPT | head -1`, made certain: the pipe's reader is gone before the
    command writes. Before, Python printed a BrokenPipeError traceback or "Exception ignored"."""
    argv = [checkpoint]
    if name == "predict":
        pytest.importorskip("PIL")
        from PIL import Image
        for i in range(3):
            Image.new("L", (8, 8), 60 * i).save(tmp_path / f"{i}.png")
        argv.append(tmp_path)
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *map(str, argv)],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=300, cwd=tmp_path)
    finally:
        os.close(write)
    assert proc.returncode == 0 and proc.stderr == ""


# -- a full disk: exit 1, the numbers, the epoch kept -----------------------------------------------
Usage = namedtuple("Usage", "total used free")


def free_space(monkeypatch, free: int):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * free, 9 * free, free))


def test_a_disk_that_fills_mid_run_keeps_the_last_epoch_and_says_so(tmp_path, capsys, monkeypatch):
    ckpt, writes = tmp_path / "c.npz", []
    real_savez = gpucnn.training.checkpoint.atomic_savez

    def fills_at_the_third_save(path, arrays):
        writes.append(path)
        if len(writes) < 3:
            return real_savez(path, arrays)
        with atomic_output(path, suffix=".npz") as f:  # half a file, then the device is full
            f.write(b"PK" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(gpucnn.training.checkpoint, "atomic_savez", fills_at_the_third_save)
    free_space(monkeypatch, 1_150_000)
    status, out, err = main(SCRIPTS["train"], [*TINY, "--epochs", "4", "--checkpoint", ckpt], capsys)
    assert status == 1 and len(writes) == 3
    (line,) = err.splitlines()
    assert re.fullmatch(rf"error: no space left on device writing {re.escape(str(ckpt))} \(needs about "
                        rf"\d+\.\d KiB, 1\.1 MiB free\); {re.escape(str(ckpt))} still holds epoch 2", line), line
    assert load_checkpoint(ckpt)["meta"]["epoch"] == 2  # the last good checkpoint, whole
    assert not list(tmp_path.glob(".tmp-*")) and "Traceback" not in err


def test_a_disk_too_full_for_one_save_fails_before_training(tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although no checkpoint could be saved")
    monkeypatch.setattr(gpucnn.training.run, "fit", no_training)
    free_space(monkeypatch, 10_000)
    ckpt = tmp_path / "c.npz"
    status, _, err = main(SCRIPTS["train"], [*TINY, "--checkpoint", ckpt], capsys)
    assert status == 1
    assert re.fullmatch(rf"error: not enough space on device for {re.escape(str(ckpt))} \(needs about "
                        r"\d+\.\d KiB, 9\.8 KiB free\); nothing was trained", err.strip()), err
    assert not ckpt.exists()


def test_write_checkpoint_on_a_full_disk_raises_an_oserror_naming_the_path_sizes_and_epoch(checkpoint, tmp_path,
                                                                                            monkeypatch):
    path = tmp_path / "c.npz"
    shutil.copy(checkpoint, path)
    arrays = dict(np.load(path))
    before = path.read_bytes()

    def full(path, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(gpucnn.training.checkpoint, "atomic_savez", full)
    free_space(monkeypatch, 2048)
    with pytest.raises(OSError) as info:
        write_checkpoint(path, arrays)
    assert isinstance(info.value, DiskFullError) and info.value.errno == errno.ENOSPC
    needed = sum(a.nbytes for a in arrays.values())
    assert str(info.value) == (f"no space left on device writing {path} (needs about "
                               f"{format_bytes(needed + 320 * len(arrays))}, 2.0 KiB free); {path} still holds epoch 1")
    assert len(before) <= info.value.needed < 1.1 * len(before)  # the estimate: about the file's size
    assert path.read_bytes() == before
    with pytest.raises(DiskFullError, match=r"\); no epoch is saved there$"):
        write_checkpoint(tmp_path / "new.npz", arrays)


def test_a_full_disk_found_by_the_checkpoint_probe_is_a_failure_not_bad_input(tmp_path, capsys, monkeypatch):
    real_mkstemp = gpucnn.training.checkpoint.tempfile.mkstemp

    def full(*args, prefix="", **kwargs):
        if prefix == ".gpucnn-probe-":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*args, prefix=prefix, **kwargs)
    monkeypatch.setattr(gpucnn.training.checkpoint.tempfile, "mkstemp", full)
    free_space(monkeypatch, 0)
    status, _, err = main(SCRIPTS["train"], [*TINY, "--checkpoint", tmp_path / "c.npz"], capsys)
    assert status == 1 and err.splitlines() == [f"error: no space left on device writing {tmp_path / 'c.npz'} "
                                                "(0 B free)"]


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 12_900_000, 3 << 30)] == [
        "0 B", "1023 B", "1.5 KiB", "12.3 MiB", "3.0 GiB"]
