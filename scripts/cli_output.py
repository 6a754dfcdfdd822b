"""Output that survives a closed pipe, shared by the scripts.

``train.py | tee log`` after Ctrl-C (SIGINT stops tee too), ``evaluate.py CKPT | head -1``:
the reader of stdout is gone, and Python raises BrokenPipeError at the next write, or at
the flush when the interpreter exits ("Exception ignored ... BrokenPipeError"). A stream
whose reader has gone is pointed at os.devnull, so later writes and that last flush go
nowhere; the command ends quietly.
"""
from __future__ import annotations

import functools
import os
import sys

_gone = set()  # names of the standard streams whose reader has gone


def reset() -> None:
    """Forget which streams were gone: each main() starts afresh (tests call several in
    one process)."""
    _gone.clear()


def _silence(name: str) -> None:
    """Point sys.<name>'s file descriptor at os.devnull: later writes (and the flush at
    exit) go nowhere instead of raising BrokenPipeError."""
    _gone.add(name)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, getattr(sys, name).fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # not a real file (captured in tests): nothing to redirect
        pass


def say(*parts, stream: str = "stdout") -> bool:
    """print() + flush to sys.<stream>; False (and the stream silenced) when its reader has
    gone, as after Ctrl-C in `train.py | tee log`."""
    if stream in _gone:
        return False
    try:
        print(*parts, file=getattr(sys, stream), flush=True)
        return True
    except (BrokenPipeError, ValueError):
        _silence(stream)
        return False


def tell_user(text: str) -> None:
    """A message the user must see: stderr, else the terminal itself when stderr went
    into a pipe that is gone (`2>&1 | tee log` after Ctrl-C)."""
    if say(text, stream="stderr"):
        return
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(text + "\n")
    except OSError:
        pass


def quiet_when_stdout_closes(main):
    """``main(argv) -> status``, stopping with status 0 and nothing on stderr when the
    reader of stdout goes away while it writes (``| head -1``): the reader has what it
    wanted. (These commands write to no pipe or socket but the standard streams.)"""
    @functools.wraps(main)
    def wrapped(argv=None):
        reset()
        try:
            status = main(argv)
        except BrokenPipeError:  # main stops where the reader stopped
            _silence("stdout")
            return 0
        try:
            sys.stdout.flush()  # what is still buffered, before the interpreter's own flush at exit
        except (BrokenPipeError, ValueError):  # ValueError: stdout closed
            _silence("stdout")
        return status
    return wrapped
