"""MNIST IDX loading: checksums, truncation, magic numbers, downloads from a local server."""
from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from gpucnn.data import (MNIST_FILES, DataError, download_mnist, load_digits, load_mnist, read_idx,
                         stratified_split)

REPO_MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"
TEST_LABELS, TEST_LABELS_SHA = MNIST_FILES["test_labels"]


def test_committed_mnist_loads_with_the_documented_counts():
    data = load_mnist(REPO_MNIST, download=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    assert 0.0 == data.train_x.min() and data.train_x.max() == 1.0
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


class _Server:
    """A static file server on 127.0.0.1 (an ephemeral port), for the download path."""

    def __init__(self, folder):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_from_a_local_mirror(tmp_path):
    served = tmp_path / "mirror"
    shutil.copytree(REPO_MNIST, served)
    target = tmp_path / "data"
    with _Server(served) as server:
        data = load_mnist(target, mirrors=(server.url,))
    assert data.test_x.shape == (10000, 1, 28, 28)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n, _ in MNIST_FILES.values())


def test_download_refuses_a_corrupted_mirror_file(tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    (served / f"{TEST_LABELS}.gz").write_bytes(gzip.compress(raw_labels()[:-10]))
    target = tmp_path / "data"
    with _Server(served) as server, pytest.raises(DataError, match=r"checksum mismatch"):
        download_mnist(target, mirrors=(server.url,), names=["test_labels"])
    assert list(target.iterdir()) == []  # nothing half-written is left behind


def test_offline_error_lists_missing_files(tmp_path):
    with _Server(tmp_path) as server:
        dead_url = server.url
    with pytest.raises(DataError, match=r"MNIST files missing in .*train-images-idx3-ubyte.gz.*t10k-labels-idx1-ubyte.gz"
                                        r"(.|\n)*download failed"):
        load_mnist(tmp_path / "empty", mirrors=(dead_url,))
    with pytest.raises(DataError, match=r"MNIST files missing"):
        load_mnist(tmp_path / "empty", download=False)


def test_digits_and_stratified_split():
    data = load_digits()
    assert data.train_x.shape[1:] == (1, 8, 8) and data.train_x.dtype == np.float32
    assert data.train_x.max() <= 1.0
    tx, ty, vx, vy = stratified_split(data.train_x, data.train_y, 0.2, np.random.default_rng(0))
    assert len(vy) == pytest.approx(0.2 * len(data.train_y), abs=1)
    # stratified: every class's share in the validation split is within one sample of the training share
    for c in range(10):
        assert abs(np.sum(vy == c) - 0.2 * np.sum(data.train_y == c)) <= 1
