"""Your own images in, predictions out: a folder of PNG and JPEG files (two sizes, one
grayscale, one corrupt file) trained on through scripts/train.py, the decoded cache,
scripts/predict.py on a checkpoint, a model file and the ONNX export, the notes on
images unlike the training images, and TensorBoard event files read back by
TensorBoard's own reader."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from scripts_in_process import load_script, main  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import gpucnn  # noqa: E402
import gpucnn.data.images  # noqa: E402
from gpucnn.classify import classify_images  # noqa: E402
from gpucnn.data.datasets import DataError, load, load_image_folder  # noqa: E402
from gpucnn.data.images import parse_image_size  # noqa: E402
from gpucnn.training.report import format_confusion  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "square")


train_cli, predict_cli, export_cli, evaluate_cli = (load_script(n, "images_cli") for n in ("train", "predict", "export",
                                                                              "evaluate"))


def shape_image(kind: str, size: int, mode: str, offset: int, dark_on_light: bool = False) -> Image.Image:
    """A white circle or square on black (or the other way round), ``size`` pixels square."""
    background, ink = ("white", "black") if dark_on_light else ("black", "white")
    image = Image.new(mode, (size, size), background)
    box = [offset, offset, size - offset - 1, size - offset - 1]
    draw = ImageDraw.Draw(image)
    (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=ink)
    return image


def write_folder(root: Path, per_class: int = 10, corrupt: bool = True) -> Path:
    """root/circle, root/square: PNG grayscale and JPEG RGB files of 16x16 (most) and 20x20
    pixels, a hidden file, and one corrupt .png."""
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            size = 20 if i % 4 == 0 else 16
            if i % 2:
                shape_image(kind, size, "L", 1 + i % 3).save(root / kind / f"{i}.png")
            else:
                shape_image(kind, size, "RGB", 1 + i % 3).save(root / kind / f"{i}.jpg", quality=95)
    (root / "square" / ".DS_Store.png").write_bytes(b"not an image, and hidden")
    if corrupt:
        (root / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder trained on through the CLI (with --skip-bad-images, --log-dir), its
    checkpoint, model file and ONNX export; the outputs of each run."""
    base = tmp_path_factory.mktemp("images")
    folder = write_folder(base / "shapes")
    paths = {"folder": folder, "cache": base / "cache", "ckpt": base / "shapes.npz", "tb": base / "tb",
             "model": base / "model.npz", "onnx": base / "shapes.onnx"}
    common = ["--dataset", folder, "--cache-dir", paths["cache"], "--device", "cpu", "--epochs", "3",
              "--lr", "0.01", "--batch-size", "8", "--verbose", "2"]
    runs = {}  # capsys is function-scoped: a module fixture captures by hand
    # TensorBoard logging needs the optional tensorboardX (CI installs it; a GPU machine's own
    # image may lack it): without it the run trains without --log-dir and that test skips
    log_dir = ["--log-dir", paths["tb"]] if importlib.util.find_spec("tensorboardX") else []
    for name, extra in (("refused", []), ("trained", ["--skip-bad-images", "--checkpoint", paths["ckpt"],
                                                      *log_dir])):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = train_cli.main([str(a) for a in common + extra])
            except SystemExit as exc:
                status = exc.code
        runs[name] = (status, out.getvalue(), err.getvalue())
    gpucnn.load(paths["ckpt"]).save(paths["model"])
    with contextlib.redirect_stdout(io.StringIO()):
        assert export_cli.main([str(paths["ckpt"]), str(paths["onnx"])]) == 0
    return paths, runs


# -- the folder, through the CLI ------------------------------------------------------------
def test_a_corrupt_file_is_refused_before_training_naming_it(trained):
    paths, runs = trained
    status, out, err = runs["refused"]
    assert status == 2  # bad input
    line = err.splitlines()
    assert len(line) == 1 and line[0].startswith("train.py: error: 1 of 21 image files cannot be read"), err
    assert str(paths["folder"] / "square" / "broken.png") in line[0] and "--skip-bad-images" in line[0]
    assert "epoch 1" not in out and "data:" not in out  # nothing trained


def test_the_folder_trains_skipping_the_corrupt_file_from_the_cache_with_class_names(trained):
    paths, runs = trained
    status, out, err = runs["trained"]
    assert status == 0, err
    assert "read from the cache" in out and "decoded" not in out  # the refused run decoded and cached
    assert "skipped 1 unreadable file (--skip-bad-images)" in out
    assert "data: shapes: 14 train, 2 validation, 4 test images of shape (3, 16, 16)" in out  # 20 good: 16/4
    assert "circle" in out.split("confusion matrix")[1] and "square" in out.split("confusion matrix")[1]
    assert "epoch 3/3" in out
    assert not [p for p in paths["folder"].rglob("*") if p.suffix == ".npz"]  # no cache in the user's folder
    assert len(list(paths["cache"].glob("shapes-*.npz"))) == 1
    info = gpucnn.load(paths["ckpt"]).data_info
    assert info["class_names"] == list(CLASSES) and info["input_shape"] == [3, 16, 16]
    assert gpucnn.load(paths["model"]).class_names == list(CLASSES)


def test_a_second_load_decodes_nothing_and_a_changed_folder_is_decoded_again(trained, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "shapes", per_class=4, corrupt=False)
    lines = []
    first = load_image_folder(folder, cache_dir=tmp_path / "cache", log=lines.append)
    assert any("decoded" in l for l in lines) and any("most common size" in l for l in lines)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a file was decoded although the cache holds it")
    with monkeypatch.context() as patch:
        patch.setattr(gpucnn.data.images, "decode_image", no_decoding)
        again = load_image_folder(folder, cache_dir=tmp_path / "cache", log=lines.append)
    np.testing.assert_array_equal(first.train_x, again.train_x)
    assert first.train_x.dtype == np.uint8 and first.train_x.shape[1:] == (3, 16, 16)

    shape_image("circle", 16, "L", 5).save(folder / "circle" / "1.png")  # changed: new size on disk
    os.utime(folder / "circle" / "1.png", ns=(1, 1))
    lines.clear()
    load_image_folder(folder, cache_dir=tmp_path / "cache", log=lines.append)
    assert any("decoded" in l for l in lines)
    gray = load_image_folder(folder, channels=1, image_size=(12, 10), cache_dir=tmp_path / "cache", log=lines.append)
    assert gray.train_x.shape[1:] == (1, 12, 10)


def test_train_test_and_val_folders_are_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_folder(tmp_path / "data" / split, per_class=n, corrupt=False)
    data = load(tmp_path / "data", cache_dir=tmp_path / "cache", channels=1, log=lambda *a: None)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (12, 4, 6)
    assert data.class_names == CLASSES and data.train_x.shape[1:] == (1, 16, 16)
    from gpucnn.training.run import TrainConfig, run
    lines = []
    run(TrainConfig(dataset=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), device="cpu", epochs=1,
                    verbose=0), log=lines.append)
    assert any("12 train, 4 validation, 6 test images" in l for l in lines), lines


def test_folder_mistakes_are_one_clear_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "flat").mkdir()
    shape_image("circle", 8, "L", 1).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="expected one subfolder per class"):
        load_image_folder(tmp_path / "flat", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"expected HxW in pixels, e.g. 28x28"):
        parse_image_size("28 by 28")
    assert parse_image_size("28x20") == (28, 20) and parse_image_size("32") == (32, 32)
    status, _, err = main(train_cli, ["--dataset", tmp_path, "--image-size", "big"], capsys)
    assert status == 2 and "--image-size expected HxW" in err
    status, _, err = main(train_cli, ["--dataset", "digits", "--channels", "1"], capsys)
    assert status == 2 and "--channels: only used with --dataset FOLDER" in err
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow not installed
    status, _, err = main(train_cli, ["--dataset", tmp_path], capsys)
    assert status == 2 and [l for l in err.splitlines() if "error" in l][0].endswith(
        "pip install 'gpucnn[images]'")


def test_evaluate_names_the_classes_in_its_confusion_matrix(trained, capsys):
    paths, _ = trained
    status, out, err = main(evaluate_cli, [paths["ckpt"], "--device", "cpu"], capsys)
    assert status == 0, err
    header = out.split("confusion matrix (rows: true class, columns: predicted):\n")[1].splitlines()
    assert header[0].split() == list(CLASSES) and header[1].split()[0] == "circle"
    assert format_confusion(np.eye(2, dtype=int)).splitlines()[0].split() == ["0", "1"]


# -- predict ---------------------------------------------------------------------------------
def test_predict_agrees_from_checkpoint_model_file_and_onnx_with_class_names(trained, capsys):
    paths, _ = trained
    pytest.importorskip("onnxruntime")
    tops = {}
    for kind in ("ckpt", "model", "onnx"):
        status, out, err = main(predict_cli, [paths[kind], paths["folder"], "--json", "--device", "cpu"], capsys)
        assert status == 2  # the corrupt file failed, the others were classified
        broken = paths["folder"] / "square" / "broken.png"
        assert err.splitlines() == [f"predict.py: error: expected image files (.png .jpg .jpeg .bmp .gif .webp) "
                                    f"that can be read, got 1 of 21 that cannot: {broken} "
                                    f"({json.loads(out)['images'][-1]['error']}); the others were classified"]
        images = [r for r in json.loads(out)["images"] if r["error"] is None]
        assert len(images) == 20 and all(set(r["names"]) == set(CLASSES) for r in images)
        tops[kind] = [r["names"][0] for r in images]
        np.testing.assert_allclose([sum(r["probabilities"]) for r in images], 1, atol=1e-5)
    assert tops["ckpt"] == tops["model"] == tops["onnx"]
    correct = np.mean([top == Path(r).parent.name for top, r in
                       zip(tops["ckpt"], sorted(str(p) for p in paths["folder"].rglob("[0-9]*.*")))])
    assert correct >= 0.75  # an easy task: the network learned it


def test_predict_prints_top_k_and_notes_an_inverted_or_resized_image(trained, tmp_path, capsys):
    paths, _ = trained
    shape_image("square", 40, "RGB", 6, dark_on_light=True).save(tmp_path / "ink.png")
    status, out, _ = main(predict_cli, [paths["ckpt"], tmp_path / "ink.png", "--top-k", "1", "--device", "cpu"],
                          capsys)
    assert status == 0
    first, note = out.splitlines()
    assert first.startswith(f"{tmp_path / 'ink.png'}: ") and len(first.split(", ")) == 1
    assert note.startswith("  note: light background") and "try --invert" in note
    assert "40x40 pixels, resized to the 16x16 the model was trained on" in note
    status, out, _ = main(predict_cli, [paths["ckpt"], tmp_path / "ink.png", "--invert", "--device", "cpu"], capsys)
    assert status == 0 and "background" not in out and len(out.splitlines()[0].split(", ")) == 2


def test_classify_images_in_the_library_takes_a_model_in_memory_on_any_device(trained, device_backend):
    paths, _ = trained
    model = gpucnn.load(paths["model"])
    files = sorted(str(p) for p in (paths["folder"] / "circle").glob("*.png"))
    results = classify_images(model, files, top_k=2)
    from_file = classify_images(paths["ckpt"], files, top_k=2)
    on_device = classify_images(model.to(device_backend), files, top_k=2)  # the GPU path (or its stand-in)
    assert [r.names for r in results] == [r.names for r in from_file] == [r.names for r in on_device]
    np.testing.assert_allclose([r.probabilities for r in on_device], [r.probabilities for r in results],
                               atol=1e-5)
    assert all(r.error is None and len(r.classes) == 2 for r in results)


# -- TensorBoard -----------------------------------------------------------------------------
def test_tensorboard_reads_the_scalars_and_the_filter_image_back(trained):
    pytest.importorskip("tensorboardX", reason="needs tensorboardX: pip install 'gpucnn[tensorboard]'")
    paths, _ = trained
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = event_accumulator.EventAccumulator(str(paths["tb"]), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    steps_per_epoch = 2  # 14 training images in batches of 8
    losses = accumulator.Scalars("step/train_loss")
    assert [e.step for e in losses] == list(range(1, 3 * steps_per_epoch + 1))
    assert all(e.value == pytest.approx(0.01) for e in accumulator.Scalars("step/lr"))
    for tag in ("epoch/train_loss", "epoch/val_loss", "epoch/train_acc", "epoch/val_acc"):
        assert [e.step for e in accumulator.Scalars(tag)] == [2, 4, 6], tag
    assert "test/accuracy" in tags["scalars"]
    image, = accumulator.Images("filters/first_layer")
    assert image.step == 6 and image.width > 5 * 5 and image.height > 5
