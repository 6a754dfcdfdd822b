"""Atomic file output: a crash, NaN stop or Ctrl-C never leaves a half-written file; and
a full disk said in numbers (DiskFullError: the file, the space it needs, the space free)."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
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


# -- a full disk ---------------------------------------------------------------------------
class DiskFullError(OSError):
    """No room on the device for ``path`` (errno ENOSPC, so ``except OSError`` still
    catches it). Its message names the file, about how many bytes the write needs (an
    atomic write needs a whole new copy beside the old file), what is free, and
    ``kept``: what the old file still holds; ``before``: found by checking the free space
    before writing (nothing was written).

        no space left on device writing runs/x.npz (needs about 12.3 MiB, 1.1 MiB free);
        runs/x.npz still holds epoch 2"""

    def __init__(self, path, needed: int | None, free: int | None, kept: str = "", before: bool = False):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        self.path, self.needed, self.free, self.kept, self.before = os.fspath(path), needed, free, kept, before

    def __str__(self) -> str:
        head = f"not enough space on device for {self.path}" if self.before else \
            f"no space left on device writing {self.path}"
        sizes = [f"needs about {format_bytes(self.needed)}"] if self.needed is not None else []
        sizes += [f"{format_bytes(self.free)} free"] if self.free is not None else []
        return head + (f" ({', '.join(sizes)})" if sizes else "") + (f"; {self.kept}" if self.kept else "")


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError saying the device is full (ENOSPC, or EDQUOT: over a quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path) -> int | None:
    """Bytes free to this user on the device that holds ``path`` (or would: the nearest
    existing folder above it); None when that cannot be asked."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def check_free_space(path, needed: int, kept: str = "") -> None:
    """Raise DiskFullError unless the device of ``path`` has ``needed`` bytes free."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskFullError(path, needed, free, kept, before=True)


def format_bytes(n: int) -> str:
    """1536 -> "1.5 KiB", 12_900_000 -> "12.3 MiB": one decimal, binary units."""
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
