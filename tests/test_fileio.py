"""Atomic output: the previous file survives any failure mid-write, no temp file is left."""
from __future__ import annotations

import os
import stat

import pytest

from gpucnn.fileio import atomic_output


def test_writes_and_replaces_with_ordinary_permissions(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    old_umask = os.umask(0o022)
    try:
        with atomic_output(path) as f:
            f.write(b"first")
        with atomic_output(path) as f:
            f.write(b"second")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as open(path, "wb") makes it, not 0600
    assert os.listdir(path.parent) == ["out.bin"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError, ValueError])
def test_a_failure_mid_write_keeps_the_previous_file(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"good")
    with pytest.raises(error):
        with atomic_output(path) as f:
            f.write(b"half")
            raise error("stopped")
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["out.bin"]
