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


def test_a_ctrl_c_during_the_write_waits_for_it_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """Ctrl-C right after the temporary file exists but before its name is known (a CI run
    once left a .tmp-*.npz that way): the interrupt is held until the write is done, then
    raised; no temporary file is left."""
    import signal
    import tempfile

    target = tmp_path / "c.npz"
    target.write_bytes(b"old")
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_ctrl_c(*args, **kwargs):
        made = real_mkstemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Python's handler runs before this returns
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as f:
            f.write(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
    assert target.read_bytes() == b"new"  # the write finished, then the interrupt took effect
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
