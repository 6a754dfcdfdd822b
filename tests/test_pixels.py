"""The one rule for images (gpucnn.data.pixels): uint8 pixels 0..255 stay uint8 until a batch is
formed, then become float32 in [0, 1] by astype(float32) / float32(255), on the batch's
device. Training on uint8 images is bit for bit training on their float32 / 255 copy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpucnn.data.augment import parse_augment
from gpucnn.backends.backend import array_module, get_backend
from gpucnn.data.batches import MNIST_FILES, load_mnist, read_idx
from gpucnn.data.datasets import to_float_images
from gpucnn.data.pixels import check_image_dtype, float_batch
from gpucnn.training.run import evaluate, fit, make_optimizer
from gpucnn.nn.zoo import build_model
from standin import standin_backend

REPO_MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"


def old_loader_floats(images: np.ndarray) -> np.ndarray:
    """What the loaders returned before they kept uint8 (to_float_images as it was)."""
    out = images.astype(np.float32)[:, None]  # (N, 1, H, W)
    np.divide(out, np.float32(255.0), out=out)
    return out


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(REPO_MNIST)


def test_per_batch_conversion_equals_the_old_float_loader_on_real_mnist(mnist):
    name, sha = MNIST_FILES["train_images"]
    raw = read_idx(REPO_MNIST / f"{name}.gz", sha)  # (60000, 28, 28) uint8
    gather = np.random.default_rng(0).permutation(60000)[:4096]
    for images, pixels in ((raw[:3000], mnist.train_x[:3000]), (raw[-1000:], mnist.train_x[-1000:]),
                           (raw[gather], mnist.train_x[gather])):
        batch = float_batch(pixels)
        assert batch.dtype == np.float32 and batch.shape == (len(images), 1, 28, 28)
        assert np.array_equal(batch, old_loader_floats(images))  # every bit
    assert batch.min() == 0.0 and batch.max() == 1.0
    assert np.array_equal(to_float_images(raw[:500]), old_loader_floats(raw[:500]))


def test_float_batch_leaves_float_images_alone_and_refuses_nothing_else_silently():
    x = np.random.default_rng(0).random((3, 1, 4, 4), dtype=np.float32)
    assert float_batch(x) is x
    every = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    converted = float_batch(every)
    assert every.dtype == np.uint8  # a new array: the stored pixels are untouched
    np.testing.assert_array_equal(converted.ravel(), np.arange(256, dtype=np.float32) / np.float32(255))
    for dtype in (np.float32, np.float64, np.float16, np.uint8):
        check_image_dtype(np.zeros(2, dtype), "f")
    for dtype, name in ((np.int64, "int64"), (np.uint16, "uint16"), (bool, "bool"), (np.int8, "int8")):
        with pytest.raises(TypeError, match=rf"^fit expected images of uint8 pixels 0..255 or float pixels in "
                                            rf"\[0, 1\], got dtype {name}; convert with x.astype\(numpy.uint8\)"):
            check_image_dtype(np.zeros(2, dtype), "fit")


def test_float_batch_runs_on_the_device_without_transfers():
    backend = standin_backend()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 3, 5, 5), dtype=np.uint8)
    device_pixels = backend.asarray(pixels)
    assert device_pixels.dtype == np.uint8
    backend.xp.reset_transfers()
    batch = float_batch(device_pixels)
    assert backend.xp.transfers == {"to_device": 0, "to_host": 0}  # converted where it lies
    assert array_module(batch) is backend.xp and batch.dtype == np.float32
    assert np.array_equal(backend.to_numpy(batch), float_batch(pixels))


def _small_mnist(mnist, n=256):
    return mnist.train_x[:n], mnist.train_y[:n], mnist.test_x[:200], mnist.test_y[:200]


@pytest.mark.parametrize("arch, options", [("lenet", {}), ("simple", {"augment": "shift:2"})],
                         ids=["lenet", "simple-augmented"])
def test_fit_on_uint8_equals_fit_on_the_float_images_bit_for_bit(mnist, arch, options):
    """Same seed, same weights after an epoch (and the same history), whether fit gets
    the uint8 pixels or their float32 / 255 copy: the model sees the same numbers."""
    train_x, train_y, val_x, val_y = _small_mnist(mnist)
    augment = parse_augment(options["augment"]) if options else None
    results = []
    for as_floats in (False, True):
        convert = float_batch if as_floats else (lambda x: x)
        model = build_model(arch, (1, 28, 28), 10, np.random.default_rng(5))
        opt = make_optimizer("adam", model, 1e-3)
        history = fit(model, opt, (convert(train_x), train_y), (convert(val_x), val_y), epochs=1, batch_size=32,
                      rng=np.random.default_rng(6), verbose=0, augment=augment)
        results.append((model.state_dict(), [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")}
                                             for h in history]))
    (pixel_weights, pixel_history), (float_weights, float_history) = results
    assert pixel_history == float_history
    for key, value in float_weights.items():
        assert np.array_equal(pixel_weights[key], value), key


def test_fit_keeps_host_uint8_images_uint8_on_the_device_and_refuses_other_integers(mnist):
    train_x, train_y, _, _ = _small_mnist(mnist, 64)
    backend = standin_backend()
    model = build_model("simple", (1, 28, 28), 10, np.random.default_rng(0)).to(backend)
    uploaded = []
    upload = backend._to_device
    backend._to_device = lambda a, dtype=None: uploaded.append((np.dtype(a.dtype), dtype)) or upload(a, dtype)
    fit(model, make_optimizer("sgd", model, 0.1), (train_x, train_y), epochs=1, batch_size=32, verbose=0,
        rng=np.random.default_rng(0))
    assert (np.dtype(np.uint8), None) in uploaded  # the images: uint8, no cast on the way up
    assert all(dtype == np.int64 for dtype, _ in uploaded if dtype != np.uint8)  # labels and orders
    with pytest.raises(TypeError, match=r"fit: train images expected images of uint8 pixels 0..255 or float pixels "
                                        r"in \[0, 1\], got dtype int64"):
        fit(model, make_optimizer("sgd", model, 0.1), (train_x.astype(np.int64), train_y), epochs=1, verbose=0)
    with pytest.raises(TypeError, match=r"evaluate expected images of uint8 pixels .*got dtype int16"):
        evaluate(model, backend.asarray(train_x.astype(np.int16)), backend.asarray(train_y))


def test_validation_runs_in_batches_of_the_training_batch_size(mnist, monkeypatch):
    """An evaluation batch holds no more memory than a training step: fit validates in
    batches of its batch_size (as Keras' validation_batch_size defaults to batch_size);
    evaluate() alone uses EVAL_BATCH_SIZE, Sequential.predict's 256."""
    import gpucnn.training.run as train

    train_x, train_y, val_x, val_y = _small_mnist(mnist, 96)
    model = build_model("simple", (1, 28, 28), 10, np.random.default_rng(0))
    seen = []  # (training?, batch size) of every forward
    forward = model.forward
    model.forward = lambda x: seen.append((model.training, len(x))) or forward(x)
    fit(model, make_optimizer("sgd", model, 0.1), (train_x, train_y), (val_x, val_y), epochs=1, batch_size=48,
        verbose=0, rng=np.random.default_rng(0))
    assert {size for training, size in seen if training} == {48}
    assert [size for training, size in seen if not training] == [48, 48, 48, 48, 8]  # 200 validation images
    seen.clear()
    evaluate(model, get_backend("cpu").asarray(mnist.test_x[:600]), mnist.test_y[:600])
    assert [size for _, size in seen] == [256, 256, 88] and train.EVAL_BATCH_SIZE == 256


def test_run_trains_on_uint8_without_the_full_training_images(tmp_path, monkeypatch):
    """run() on a uint8 .npz: the full training images are released once split, before the
    normalisation statistics and the model (only the splits are held from then on), the
    device gets uint8, and validation and test run in batches of --batch-size."""
    import gc
    import weakref

    import gpucnn.training.run as train
    from gpucnn.data.datasets import load
    from gpucnn.training.run import TrainConfig, run

    rng = np.random.default_rng(0)
    path = tmp_path / "pixels.npz"
    np.savez(path, x_train=rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8), y_train=np.arange(120) % 3,
             x_test=rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), y_test=np.arange(30) % 3)
    loaded = []  # a weak reference to the full training images

    def loading(config):
        data = load(config.dataset)
        loaded.append(weakref.ref(data.train_x))
        return data

    monkeypatch.setattr(train, "load_dataset", loading)
    seen = {}
    fit, held_out_report, channel_stats = train.fit, train.held_out_report, train.channel_stats

    def watching_stats(x):
        gc.collect()
        seen.update(full_alive_at_stats=loaded[0]() is not None, stats_of=x.shape)
        return channel_stats(x)

    def watching_fit(model, optimizer, train_set, val_set, **options):
        gc.collect()
        seen.update(full_alive=loaded[0]() is not None, train=train_set[0].dtype, val=val_set[0].dtype,
                    batch_size=options["batch_size"])
        return fit(model, optimizer, train_set, val_set, **options)

    def watching_report(model, x, y, num_classes, batch_size, comm=None):
        seen.update(test=x.dtype, test_batch_size=batch_size)
        return held_out_report(model, x, y, num_classes, batch_size, comm)

    monkeypatch.setattr(train, "channel_stats", watching_stats)
    monkeypatch.setattr(train, "fit", watching_fit)
    monkeypatch.setattr(train, "held_out_report", watching_report)
    result = run(TrainConfig(dataset=str(path), arch="simple", epochs=1, batch_size=16, verbose=0),
                 log=lambda *a, **k: None)
    assert seen == {"full_alive_at_stats": False, "stats_of": (108, 3, 8, 8), "full_alive": False,
                    "train": np.uint8, "val": np.uint8, "batch_size": 16, "test": np.uint8, "test_batch_size": 16}
    assert len(result["predictions"]) == 30
