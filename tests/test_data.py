"""MNIST IDX loading (through gpucnn.data.batches, the old import path): checksums, truncation,
magic numbers, downloads from a local server only when allowed."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from local_server import LocalServer, dead_url

from gpucnn.data.batches import (MNIST_FILES, DataError, download_mnist, load_digits, load_mnist, read_idx,
                                 stratified_split)

REPO_MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"
TEST_LABELS, TEST_LABELS_SHA = MNIST_FILES["test_labels"]


def test_committed_mnist_loads_with_the_documented_counts():
    data = load_mnist(REPO_MNIST, download=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == np.uint8 and data.train_y.dtype == np.int64  # pixels as stored
    assert 0 == data.train_x.min() and data.train_x.max() == 255
    # class counts from data/mnist/README.md
    assert np.bincount(data.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(data.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def raw_labels() -> bytes:
    return gzip.decompress((REPO_MNIST / f"{TEST_LABELS}.gz").read_bytes())


def test_read_idx_accepts_raw_and_gzip(tmp_path):
    raw = tmp_path / TEST_LABELS
    raw.write_bytes(raw_labels())
    from_raw = read_idx(raw, TEST_LABELS_SHA)
    assert from_raw.shape == (10000,)
    np.testing.assert_array_equal(from_raw, read_idx(REPO_MNIST / f"{TEST_LABELS}.gz", TEST_LABELS_SHA))


def test_corrupted_file_names_file_and_expected_checksum(tmp_path):
    content = bytearray(raw_labels())
    content[100] ^= 0xFF
    bad = tmp_path / f"{TEST_LABELS}.gz"
    bad.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match=rf"{TEST_LABELS}.gz: checksum mismatch, expected SHA-256 {TEST_LABELS_SHA}"):
        read_idx(bad, TEST_LABELS_SHA)


def test_truncated_files(tmp_path):
    truncated = tmp_path / TEST_LABELS
    truncated.write_bytes(raw_labels()[:5000])
    with pytest.raises(DataError, match=r"expected 10008 bytes for dimensions \(10000,\), got 5000; the file is truncated"):
        read_idx(truncated)
    with pytest.raises(DataError, match=r"checksum mismatch"):
        read_idx(truncated, TEST_LABELS_SHA)
    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes((REPO_MNIST / f"{TEST_LABELS}.gz").read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cut.gz: cannot read it"):
        read_idx(cut_gzip)


def test_wrong_magic(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x08\x02" + raw_labels()[4:])
    with pytest.raises(DataError, match=r"wrong magic number 0x00000802"):
        read_idx(bad)


def test_download_from_a_local_mirror(tmp_path):
    served = tmp_path / "mirror"
    shutil.copytree(REPO_MNIST, served)
    target = tmp_path / "data"
    with LocalServer(served) as server:
        data = load_mnist(target, download=True, mirrors=(dead_url(tmp_path), server.url))
    assert data.test_x.shape == (10000, 1, 28, 28) and data.name == "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n, _ in MNIST_FILES.values())


def test_nothing_is_downloaded_unless_allowed(tmp_path):
    served = tmp_path / "mirror"
    shutil.copytree(REPO_MNIST, served)
    with LocalServer(served) as server, pytest.raises(DataError, match=r"MNIST files missing"):
        load_mnist(tmp_path / "data", mirrors=(server.url,))  # download=False is the default
    assert server.requests == [] and not (tmp_path / "data").exists()


def test_download_refuses_a_corrupted_mirror_file(tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    (served / f"{TEST_LABELS}.gz").write_bytes(gzip.compress(raw_labels()[:-10]))
    target = tmp_path / "data"
    with LocalServer(served) as server, pytest.raises(DataError, match=r"checksum mismatch"):
        download_mnist(target, mirrors=(server.url,), names=["test_labels"])
    assert list(target.iterdir()) == []  # nothing half-written is left behind


def test_missing_files_name_both_remedies(tmp_path):
    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path / "empty")
    message = str(caught.value)
    assert "MNIST files missing in" in message and "train-images-idx3-ubyte.gz" in message
    assert "t10k-labels-idx1-ubyte.gz" in message and "put them there" in message
    assert "--download" in message and "download=True" not in message and "--data-dir" not in message
    with pytest.raises(DataError, match=r"MNIST files missing in .*train-images-idx3-ubyte.gz.*t10k-labels-idx1-ubyte.gz"
                                        r"(.|\n)*download failed"):
        load_mnist(tmp_path / "empty", download=True, mirrors=(dead_url(tmp_path),))


def test_digits_and_stratified_split():
    data = load_digits()
    assert data.train_x.shape[1:] == (1, 8, 8) and data.train_x.dtype == np.float32
    assert data.train_x.max() <= 1.0
    tx, ty, vx, vy = stratified_split(data.train_x, data.train_y, 0.2, np.random.default_rng(0))
    assert len(vy) == pytest.approx(0.2 * len(data.train_y), abs=1)
    # stratified: every class's share in the validation split is within one sample of the training share
    for c in range(10):
        assert abs(np.sum(vy == c) - 0.2 * np.sum(data.train_y == c)) <= 1
