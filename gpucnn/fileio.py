"""Atomic file output: a crash, NaN stop or Ctrl-C never leaves a half-written file."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_output(path, suffix: str = ""):
    """``with atomic_output(path) as f: f.write(...)``: ``f`` is a binary temporary file in
    ``path``'s folder (created if missing); when the block ends normally it is flushed to
    disk and renamed over ``path`` in one step, otherwise it is removed and ``path`` keeps
    its previous content. The file gets the permissions a plain ``open(path, "wb")`` would."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
