"""gpucnn.data.datasets: Fashion-MNIST and CIFAR-10 loaders on small files written here in the
official formats (with their checksums patched in), downloads from a local server, the
.npz loader's every check, channel_stats, and the load() entry point."""
from __future__ import annotations

import gzip
import hashlib
import io
import re
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from local_server import LocalServer, dead_url

from gpucnn.data import datasets
from gpucnn.data.datasets import DataError, cifar10, fashion_mnist, stats
from gpucnn.data.datasets.download import download_file

REPO_MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- MNIST through the entry point ---------------------------------------------------------
def test_load_mnist_by_name_from_the_committed_files():
    data = datasets.load("mnist", data_dir=REPO_MNIST)
    assert data.name == "mnist" and data.num_classes == 10 and data.class_names == tuple("0123456789")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == np.uint8 and data.train_y.dtype == np.int64  # pixels 0..255, as stored
    assert data.train_x.flags.writeable and data.train_x.flags.c_contiguous
    assert data.train_x.max() == 255 and data.test_x.max() == 255
    assert np.bincount(data.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    mean, std = datasets.channel_stats(data.train_x)  # the well-known MNIST normalisation, of [0, 1] images
    assert mean == pytest.approx([0.1307], abs=5e-5) and std == pytest.approx([0.3081], abs=5e-5)


# -- Fashion-MNIST -------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x00000801 if array.ndim == 1 else 0x00000803
    return struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def fashion_files(tmp_path, monkeypatch):
    """A small Fashion-MNIST in the official form (four IDX .gz files) whose SHA-256 and
    sizes replace the published ones; returns (folder, arrays)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(20, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "test_labels": rng.permutation(10).astype(np.uint8),
    }
    folder = tmp_path / "fashion"
    folder.mkdir()
    table = {}
    for key, (name, _, _) in fashion_mnist.FASHION_FILES.items():
        payload = gzip.compress(idx_bytes(arrays[key]))
        (folder / name).write_bytes(payload)
        table[key] = (name, sha256(payload), len(payload))
    monkeypatch.setattr(fashion_mnist, "FASHION_FILES", table)
    return folder, arrays


def test_fashion_mnist_reads_the_official_format(fashion_files):
    folder, arrays = fashion_files
    data = datasets.load("fashion-mnist", data_dir=folder)
    assert data.name == "fashion-mnist" and data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.train_x.shape == (20, 1, 28, 28) and data.train_x.dtype == np.uint8
    np.testing.assert_array_equal(data.train_x[:, 0], arrays["train_images"])
    np.testing.assert_array_equal(data.test_x[:, 0], arrays["test_images"])
    np.testing.assert_array_equal(data.test_y, arrays["test_labels"])
    assert data.test_y.dtype == np.int64


def test_fashion_mnist_refuses_a_corrupt_archive(fashion_files):
    folder, _ = fashion_files
    name, sha, size = fashion_mnist.FASHION_FILES["test_images"]
    payload = bytearray((folder / name).read_bytes())
    payload[-20] ^= 0xFF
    (folder / name).write_bytes(bytes(payload))
    with pytest.raises(DataError, match=rf"{name}: checksum mismatch, expected SHA-256 {sha}.*delete it and download"):
        datasets.load("fashion-mnist", data_dir=folder)
    (folder / name).write_bytes(bytes(payload[:100]))
    with pytest.raises(DataError, match=rf"{name}: expected {size} bytes, got 100"):
        datasets.load("fashion-mnist", data_dir=folder)


def test_fashion_mnist_missing_files_name_the_files_and_both_remedies(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"decompressed")
    with pytest.raises(DataError) as caught:
        datasets.load("fashion-mnist", data_dir=tmp_path)
    message = str(caught.value)
    for name, _, _ in fashion_mnist.FASHION_FILES.values():
        assert name in message
    assert "put them there" in message and "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in message
    assert "--download" in message and "download=True" not in message and "--data-dir" not in message
    assert "decompressed train-images-idx3-ubyte" in message  # why the unpacked file is not enough


def test_fashion_mnist_download_falls_through_a_dead_mirror(fashion_files, tmp_path, capsys):
    served, arrays = fashion_files
    target = tmp_path / "target"
    with LocalServer(served) as server:
        data = datasets.fashion_mnist.load_fashion_mnist(target, download=True,
                                                         mirrors=(dead_url(tmp_path), server.url))
    np.testing.assert_array_equal(data.train_y, arrays["train_labels"])
    assert sorted(p.name for p in target.iterdir()) == sorted(n for n, _, _ in fashion_mnist.FASHION_FILES.values())
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest: no progress bar


# -- downloads: verified, atomic, quiet off a terminal ----------------------------------------
def served_file(tmp_path, payload: bytes = b"x" * 5000) -> Path:
    folder = tmp_path / "served"
    folder.mkdir(exist_ok=True)
    (folder / "blob.bin").write_bytes(payload)
    return folder


def check_sha(expected: str):
    def verify(path):
        digest = sha256(Path(path).read_bytes())
        if digest != expected:
            raise DataError(f"{path}: checksum mismatch, expected SHA-256 {expected}, got {digest}")
    return verify


def test_download_refuses_bad_bytes_and_leaves_nothing(tmp_path):
    served = served_file(tmp_path)
    target = tmp_path / "data" / "blob.bin"
    with LocalServer(served) as server, pytest.raises(DataError, match=r"could not download blob.bin:\n.*checksum mismatch"):
        download_file([server.url + "blob.bin"], target, check_sha("0" * 64))
    assert list(target.parent.iterdir()) == []


def test_a_cut_connection_never_becomes_the_file(tmp_path):
    payload = bytes(range(256)) * 40
    served = served_file(tmp_path, payload)
    target = tmp_path / "data" / "blob.bin"
    with LocalServer(served, truncate={"blob.bin"}) as server, \
            pytest.raises(DataError, match=rf"connection closed after {len(payload) // 2} of {len(payload)} bytes"):
        download_file([server.url + "blob.bin"], target, check_sha(sha256(payload)))
    assert list(target.parent.iterdir()) == []
    with LocalServer(served) as server:  # the same file, whole, from a mirror that works
        download_file([server.url + "blob.bin"], target, check_sha(sha256(payload)))
    assert target.read_bytes() == payload and list(target.parent.iterdir()) == [target]


def test_an_interrupted_download_leaves_no_temporary_file(tmp_path):
    served = served_file(tmp_path)
    target = tmp_path / "data" / "blob.bin"

    def interrupted(path):
        assert Path(path).parent == target.parent and Path(path).stat().st_size == 5000  # written beside the target
        raise KeyboardInterrupt

    with LocalServer(served) as server, pytest.raises(KeyboardInterrupt):
        download_file([server.url + "blob.bin"], target, interrupted)
    assert list(target.parent.iterdir()) == []


def test_dead_mirrors_are_all_reported(tmp_path):
    with pytest.raises(DataError, match=r"could not download blob.bin:\n  http://127.0.0.1:\d+/blob.bin: .*\n  "
                                        r"http://127.0.0.1:\d+/blob.bin: .*HTTP Error 404"):
        with LocalServer(tmp_path) as server:
            download_file([dead_url(tmp_path) + "blob.bin", server.url + "blob.bin"], tmp_path / "x" / "blob.bin",
                          check_sha("0" * 64))


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    served = served_file(tmp_path)
    with LocalServer(served) as server:
        download_file([server.url + "blob.bin"], tmp_path / "a" / "blob.bin", check_sha(sha256(b"x" * 5000)))
        assert capsys.readouterr().err == ""
        terminal = FakeTerminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        download_file([server.url + "blob.bin"], tmp_path / "b" / "blob.bin", check_sha(sha256(b"x" * 5000)))
    bar = terminal.getvalue()
    assert bar.startswith("\rblob.bin:") and "100%" in bar and "4.88k/4.88k" in bar  # 5000 bytes in KiB
    assert capsys.readouterr().err == ""


# -- CIFAR-10 ------------------------------------------------------------------------------
def cifar_records(labels: np.ndarray, pixels: np.ndarray) -> bytes:
    """The binary version's records: 1 label byte + 3072 channel-major pixel bytes each."""
    return np.concatenate([labels[:, None], pixels.reshape(len(labels), 3072)], axis=1).astype(np.uint8).tobytes()


@pytest.fixture
def cifar_archive(tmp_path, monkeypatch):
    """A cifar-10-binary.tar.gz with a few records per batch file, its checksums patched
    in; returns (folder holding the archive, pixels (N, 3, 32, 32) uint8 by split, labels)."""
    rng = np.random.default_rng(1)
    counts = {name: 3 for name in cifar10.TRAIN_BATCHES} | {"test_batch.bin": 4}
    labels = {"train": np.arange(15) % 10, "test": np.array([9, 0, 5, 3])}
    pixels = {"train": rng.integers(0, 256, (15, 3, 32, 32)), "test": rng.integers(0, 256, (4, 3, 32, 32))}
    table, start = {}, 0
    folder = tmp_path / "cifar"
    folder.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, n in counts.items():
            split, first = ("test", 0) if name.startswith("test") else ("train", start)
            payload = cifar_records(labels[split][first:first + n], pixels[split][first:first + n])
            start += n if split == "train" else 0
            table[name] = (sha256(payload), len(payload))
            member = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        meta = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        meta.size = len(b"airplane\n")
        tar.addfile(meta, io.BytesIO(b"airplane\n"))
    archive = buffer.getvalue()
    (folder / "cifar-10-binary.tar.gz").write_bytes(archive)
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", ("cifar-10-binary.tar.gz", sha256(archive), len(archive)))
    monkeypatch.setattr(cifar10, "CIFAR10_BATCHES", table)
    return folder, pixels, labels


def test_cifar10_from_the_archive_then_from_the_extracted_files(cifar_archive):
    folder, pixels, labels = cifar_archive
    data = datasets.load("cifar10", data_dir=folder)
    assert data.name == "cifar10" and data.num_classes == 10 and data.class_names[:2] == ("airplane", "automobile")
    assert data.train_x.shape == (15, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_x.dtype == np.uint8 and data.train_y.dtype == np.int64
    np.testing.assert_array_equal(data.train_x, pixels["train"])
    np.testing.assert_array_equal(data.test_x, pixels["test"])
    np.testing.assert_array_equal(data.train_y, labels["train"])  # data_batch_1 .. 5 in order
    np.testing.assert_array_equal(data.test_y, labels["test"])
    extracted = sorted(p.name for p in (folder / "cifar-10-batches-bin").iterdir())
    assert extracted == sorted(cifar10.CIFAR10_BATCHES)  # only the batch files, no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    (folder / "cifar-10-binary.tar.gz").unlink()
    again = datasets.load("cifar10", data_dir=folder)  # the extracted files suffice
    np.testing.assert_array_equal(again.train_x, data.train_x)


def test_cifar10_refuses_corrupt_or_truncated_batches(cifar_archive):
    folder, _, _ = cifar_archive
    datasets.load("cifar10", data_dir=folder)
    batch = folder / "cifar-10-batches-bin" / "data_batch_3.bin"
    content = bytearray(batch.read_bytes())
    content[500] ^= 0xFF
    batch.write_bytes(bytes(content))
    sha = cifar10.CIFAR10_BATCHES["data_batch_3.bin"][0]
    with pytest.raises(DataError, match=rf"data_batch_3.bin: checksum mismatch, expected SHA-256 {sha}.*delete it"):
        datasets.load("cifar10", data_dir=folder)
    batch.write_bytes(bytes(content[:3073]))
    with pytest.raises(DataError, match=rf"data_batch_3.bin: expected {3 * 3073} bytes, got 3073"):
        datasets.load("cifar10", data_dir=folder)
    batch.unlink()  # deleted: extracted again from the archive
    assert datasets.load("cifar10", data_dir=folder).train_x.shape == (15, 3, 32, 32)


def test_cifar10_refuses_a_corrupt_archive_before_extracting(cifar_archive):
    folder, _, _ = cifar_archive
    archive = folder / "cifar-10-binary.tar.gz"
    content = bytearray(archive.read_bytes())
    content[len(content) // 2] ^= 0xFF
    archive.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"cifar-10-binary.tar.gz: checksum mismatch.*delete it and download it again"):
        datasets.load("cifar10", data_dir=folder)
    assert not (folder / "cifar-10-batches-bin").exists()


def test_cifar10_extracts_only_regular_batch_files(tmp_path, monkeypatch):
    """An archive whose batch 'file' is a link, plus a member aimed outside the folder:
    nothing is written outside, and the error says what is wrong."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        escape = tarfile.TarInfo("../escaped.txt")
        escape.size = 2
        tar.addfile(escape, io.BytesIO(b"hi"))
    archive = buffer.getvalue()
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "cifar-10-binary.tar.gz").write_bytes(archive)
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE", ("cifar-10-binary.tar.gz", sha256(archive), len(archive)))
    with pytest.raises(DataError, match=r"expected cifar-10-batches-bin/data_batch_1.bin.* inside, found no regular file"):
        datasets.load("cifar10", data_dir=folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar"]
    assert [p.name for p in folder.iterdir()] == ["cifar-10-binary.tar.gz"]


def test_cifar10_missing_files_name_the_files_and_both_remedies(tmp_path):
    with pytest.raises(DataError) as caught:
        datasets.load("cifar10", data_dir=tmp_path)
    message = str(caught.value)
    assert f"CIFAR-10 files missing in {tmp_path}: cifar-10-binary.tar.gz" in message
    assert "cifar-10-batches-bin/" in message and "data_batch_1.bin" in message and "test_batch.bin" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message
    assert "put them there" in message and "--download" in message and "download=True" not in message
    assert "--data-dir" not in message


def test_cifar10_download(cifar_archive, tmp_path, capsys):
    served, pixels, _ = cifar_archive
    target = tmp_path / "target"
    with LocalServer(served) as server:
        data = cifar10.load_cifar10(target, download=True, mirrors=(dead_url(tmp_path), server.url))
    np.testing.assert_array_equal(data.test_x, pixels["test"])
    assert server.requests == ["/cifar-10-binary.tar.gz"]
    assert capsys.readouterr().err == ""
    (served / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    with LocalServer(served) as server, pytest.raises(DataError, match=r"CIFAR-10 files missing(.|\n)*download "
                                                                       r"failed(.|\n)*expected \d+ bytes, got 15"):
        cifar10.load_cifar10(tmp_path / "other", download=True, mirrors=(server.url,))
    assert list((tmp_path / "other").iterdir()) == []


# -- your own .npz ----------------------------------------------------------------------------
def npz_arrays(rng, n_train=20, n_test=6, shape=(8, 8), classes=3):
    return dict(x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
                y_train=np.arange(n_train) % classes,
                x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
                y_test=np.arange(n_test) % classes)


def write_npz(tmp_path, name="mine.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_grayscale_uint8(tmp_path, rng):
    arrays = npz_arrays(rng)
    data = datasets.load(write_npz(tmp_path, **arrays))
    assert data.name == "mine" and data.num_classes == 3 and data.class_names is None
    assert data.train_x.shape == (20, 1, 8, 8) and data.train_x.dtype == np.uint8
    np.testing.assert_array_equal(data.train_x[:, 0], arrays["x_train"])
    assert data.train_y.dtype == np.int64 and data.test_y.tolist() == arrays["y_test"].tolist()


def test_npz_integer_pixels_become_uint8_channels_first(tmp_path, rng):
    """Colour pixels of any integer dtype (checked 0..255) are kept as uint8 (N, C, H, W),
    contiguous: the values unchanged, a quarter of a float32 copy."""
    x_train = rng.integers(0, 256, (12, 5, 7, 3))  # int64 (N, H, W, C)
    x_test = rng.integers(0, 256, (4, 5, 7, 3), dtype=np.uint8)
    data = datasets.load(write_npz(tmp_path, x_train=x_train, y_train=np.arange(12) % 2,
                                   x_test=x_test, y_test=np.array([1, 0, 1, 1])))
    for got, want in ((data.train_x, x_train), (data.test_x, x_test)):
        assert got.dtype == np.uint8 and got.shape == (len(want), 3, 5, 7) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want.transpose(0, 3, 1, 2))


def test_npz_color_float_channels_last_with_keras_labels_and_names(tmp_path, rng):
    x_train = rng.random((12, 5, 7, 3)).astype(np.float64)
    x_test = rng.random((4, 5, 7, 3)).astype(np.float32)
    path = write_npz(tmp_path, x_train=x_train, y_train=(np.arange(12) % 2)[:, None],  # Keras: (N, 1)
                     x_test=x_test, y_test=np.array([1, 0, 1, 1]), class_names=np.array(["cat", "dog"]))
    data = datasets.load(str(path))
    assert data.class_names == ("cat", "dog") and data.num_classes == 2
    assert data.train_x.shape == (12, 3, 5, 7) and data.train_x.dtype == np.float32 and data.train_x.flags.c_contiguous
    np.testing.assert_array_equal(data.train_x, x_train.transpose(0, 3, 1, 2).astype(np.float32))
    np.testing.assert_array_equal(data.test_x, x_test.transpose(0, 3, 1, 2))
    assert data.train_y.shape == (12,)


class PickleTrap:
    """Unpickling this object creates a file: proof of whether anything was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path, rng):
    sentinel = tmp_path / "unpickled"
    arrays = npz_arrays(rng)
    arrays["x_train"] = np.array([PickleTrap(sentinel)] * 20, dtype=object)
    path = write_npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=r"x_train: expected a numeric array, got an object array \(dtype=object\)"
                                        r".*never unpickles"):
        datasets.load(path)
    assert not sentinel.exists()
    np.load(path, allow_pickle=True)["x_train"]  # the trap works: loading it with pickle springs it
    assert sentinel.exists()


def npz_error(tmp_path, rng, **changes) -> str:
    arrays = npz_arrays(rng)
    arrays.update(changes)
    path = write_npz(tmp_path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DataError) as caught:
        datasets.load(path)
    assert str(caught.value).startswith(str(path))
    return str(caught.value)


@pytest.mark.parametrize("changes, expected", [
    ({"y_test": None}, r"expected arrays x_train, y_train, x_test, y_test, missing y_test \(it holds: x_train, "
                       r"y_train, x_test\); fix: np.savez"),
    ({"x_train": np.zeros((20, 8, 8), bool)}, r"x_train: expected uint8 pixels 0-255 or float pixels in \[0, 1\], "
                                              r"got dtype bool; fix"),
    ({"x_train": np.zeros((20, 64), np.uint8)}, r"x_train: expected images of shape \(N, H, W\) or \(N, H, W, C\), "
                                                r"got \(20, 64\); fix"),
    ({"x_train": np.zeros((20, 3, 8, 8), np.uint8)}, r"x_train: expected channels-last images \(N, H, W, C\).*got "
                                                     r"\(20, 3, 8, 8\).*channels-first.*fix: x.transpose\(0, 2, 3, 1\)"),
    ({"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, int)},
     r"x_test: expected at least one image of at least 1x1 pixels, got shape \(0, 8, 8, 1\)"),
    ({"x_train": np.full((20, 8, 8), np.nan, np.float32)}, r"x_train: expected finite pixel values, got 1280 NaN or "
                                                            r"infinite values; fix"),
    ({"x_test": np.where(np.eye(8) > 0, np.inf, 0.5)[None].repeat(6, 0)},
     r"x_test: expected finite pixel values, got 48 NaN or infinite values"),
    ({"x_train": np.full((20, 8, 8), 255.0)}, r"x_train: expected float pixels in \[0, 1\], got values in \[255, 255\]; "
                                              r"fix: save uint8 0-255 pixels, or divide by 255"),
    ({"x_train": np.full((20, 8, 8), 300, np.int16)}, r"x_train: expected integer pixels in 0..255, got values in "
                                                      r"\[300, 300\]; fix"),
    ({"x_test": np.zeros((6, 8, 8, 3), np.uint8)}, r"x_test: expected images of the training shape \(H, W, C\) = "
                                                   r"\(8, 8, 1\), got \(8, 8, 3\); fix"),
    ({"y_train": np.eye(3)[np.arange(20) % 3].astype(int)}, r"y_train: expected labels of shape \(N,\), got \(20, 3\); "
                                                            r"fix: y.argmax\(axis=1\)"),
    ({"y_train": np.zeros((20, 1, 1), int)}, r"y_train: expected labels of shape \(N,\), got \(20, 1, 1\); "
                                             r"fix: y.reshape\(-1\)"),
    ({"y_train": np.arange(20) % 3 * 1.0}, r"y_train: expected integer class indices 0..K-1, got dtype float64; "
                                           r"fix: y.astype\(np.int64\)"),
    ({"y_train": np.arange(19) % 3}, r"y_train: expected 20 labels \(one per image in x_train\), got 19"),
    ({"y_test": np.array([0, 1, 2, 0, -1, 1])}, r"y_test: expected class indices 0..K-1, got a minimum of -1; "
                                                r"fix: re-number"),
    ({"y_train": np.arange(20) % 2 * 3}, r"y_train: expected every class 0..3 to have training images, got none for "
                                         r"class 1, 2; fix: re-number the classes consecutively"),
    ({"y_test": np.array([0, 1, 2, 3, 0, 1])}, r"y_test: expected labels 0..2 \(the classes of y_train\), got a maximum "
                                               r"of 3; fix"),
    ({"y_train": np.zeros(20, int), "y_test": np.zeros(6, int)}, r"y_train: expected at least 2 classes, got 1"),
    ({"class_names": np.arange(3)}, r"class_names: expected a 1-D array of strings, got dtype int64 shape \(3,\); fix"),
    ({"class_names": np.array(["a", "b"])}, r"y_train: expected labels 0..1 \(one per entry of class_names\), got a "
                                            r"maximum of 2; fix"),
    ({"class_names": np.array(["a", "b", "c", "d"])}, r"y_train: expected every class 0..3 to have training images, "
                                                      r"got none for class 3"),
])
def test_npz_every_check_says_expected_got_fix(tmp_path, rng, changes, expected):
    message = npz_error(tmp_path, rng, **changes)
    assert re.search(expected, message), message


def test_npz_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=r"absent.npz: no such file; expected a .npz file written by np.savez"):
        datasets.load(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataError, match=r"junk.npz: cannot read it as a .npz file"):
        datasets.load(tmp_path / "junk.npz")
    with open(tmp_path / "single.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match=r"single.npz: expected a .npz file of named arrays, got a single .npy array"):
        datasets.load(tmp_path / "single.npz")


# -- the entry point ---------------------------------------------------------------------------
def test_load_names_and_refusals(tmp_path):
    assert datasets.DATASETS == ("mnist", "fashion-mnist", "cifar10", "digits")
    digits = datasets.load("digits")
    assert digits.name == "digits" and digits.train_x.shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar100': expected one of mnist, fashion-mnist, cifar10, "
                                         r"digits, the path of a .npz file .*, or a folder of images"):
        datasets.load("cifar100")
    with pytest.raises(ValueError, match=r"data_dir='x' is not used by digits"):
        datasets.load("digits", data_dir="x")
    with pytest.raises(ValueError, match=r"data_dir='x' is not used by a .npz file"):
        datasets.load(tmp_path / "a.npz", data_dir="x")


def test_the_default_data_dir_is_relative_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"CIFAR-10 files missing in data/cifar10: "):
        datasets.load("cifar10")


# -- channel statistics ------------------------------------------------------------------------
def test_channel_stats_match_numpy(rng, monkeypatch):
    monkeypatch.setattr(stats, "CHUNK_VALUES", 3 * 5 * 7 * 4)  # 4 images per chunk: several chunks and a short one
    scale, offset = np.array([1.0, 20.0, 300.0])[:, None, None], np.array([0.0, 5.0, -2.0])[:, None, None]
    x = (rng.random((37, 3, 5, 7)) * scale + offset).astype(np.float32)  # (N, C, H, W), channels on other scales
    mean, std = datasets.channel_stats(x)
    assert isinstance(mean, list) and isinstance(std[0], float) and len(mean) == len(std) == 3
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("chunk_images", [4, 1000])
def test_channel_stats_of_uint8_pixels_are_those_of_the_float_images(rng, monkeypatch, chunk_images):
    """uint8 pixels give the statistics of the [0, 1] float32 images the model sees (what
    a saved Normalize layer expects), equal to the float path up to float64 rounding."""
    monkeypatch.setattr(stats, "CHUNK_VALUES", 3 * 5 * 7 * chunk_images)
    x = rng.integers(0, 256, (37, 3, 5, 7), dtype=np.uint8)  # (N, C, H, W)
    x[:, 1] //= 7  # channels with different histograms
    x[:, 2] = 255 - x[:, 2] // 3
    as_floats = x.astype(np.float32) / np.float32(255)  # the old loaders' float images
    mean, std = datasets.channel_stats(x)
    float_mean, float_std = datasets.channel_stats(as_floats)
    assert isinstance(mean[0], float) and isinstance(std[0], float) and len(mean) == len(std) == 3
    np.testing.assert_allclose(mean, float_mean, rtol=1e-14)
    np.testing.assert_allclose(std, float_std, rtol=1e-14)
    np.testing.assert_allclose(mean, as_floats.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-14)
    assert not np.allclose(mean, x.astype(np.float64).mean(axis=(0, 2, 3)))  # not in 0..255 units
    assert datasets.channel_stats(np.full((2, 1, 3, 3), 255, np.uint8)) == ([1.0], [0.0])


def test_channel_stats_refuses_integer_images_other_than_uint8():
    with pytest.raises(ValueError, match=r"channel_stats expected host images \(N, C, H, W\) as a NumPy array of uint8 "
                                         r"pixels 0..255 or float pixels in \[0, 1\], got ndarray int64"):
        datasets.channel_stats(np.zeros((4, 1, 8, 8), np.int64))


def test_channel_stats_refuses_the_wrong_layout():
    with pytest.raises(ValueError, match=r"channel_stats expected host images \(N, C, H, W\).*got ndarray float32 \(4, 8, 8\)"):
        datasets.channel_stats(np.zeros((4, 8, 8), np.float32))
