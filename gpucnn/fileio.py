"""Atomic file output: a crash, NaN stop or Ctrl-C never leaves a half-written file."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading


@contextlib.contextmanager
def atomic_output(path, suffix: str = ""):
    """``with atomic_output(path) as f: f.write(...)``: ``f`` is a binary temporary file in
    ``path``'s folder (created if missing); when the block ends normally it is flushed to
    disk and renamed over ``path`` in one step, otherwise it is removed and ``path`` keeps
    its previous content. The file gets the permissions a plain ``open(path, "wb")`` would.

    A Ctrl-C during the write takes effect when the write is done (renamed into place, or
    removed): raised at an unlucky moment, between the temporary file's creation and the
    clean-up that knows its name, it left a ``.tmp-*`` file behind once in CI."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with _interrupts_deferred():
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


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold Python's Ctrl-C (KeyboardInterrupt) until the block ends, then raise it. Only in
    the main thread and only over Python's default handler: a program's own SIGINT handler
    (gpucnn.distributed's stop signal, say) is left alone."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt
