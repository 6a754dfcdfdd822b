"""Ctrl-C taken at the same step on every rank: :class:`StopSignal`."""
from __future__ import annotations

import signal
import threading

from .communicator import Communicator


class StopSignal:
    """Ctrl-C in a data-parallel loop, taken at the same step on every rank.

        with StopSignal(comm) as stop:
            for step ...:
                ...
                if stop.requested():   # every rank, after every step: a collective
                    raise KeyboardInterrupt

    mpiexec passes Ctrl-C to every rank, but a rank that raised KeyboardInterrupt at once
    would leave the others waiting in the next collective forever (a rank blocked inside
    one never sees the signal). With several ranks, on the main thread, the first SIGINT
    only sets a flag; ``requested()`` is True on every rank as soon as one rank has it.
    A second SIGINT raises at once. One process: nothing is deferred and ``requested()``
    is False without a collective: Ctrl-C raises where it lands, as always.
    """

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.flagged = False
        self._installed, self._previous = False, None

    def __enter__(self) -> "StopSignal":
        if self.comm.size > 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:  # None: a handler not set from Python; Python's default then
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.default_int_handler)
            self._installed = False

    def _handle(self, signum, frame):
        if self.flagged:
            raise KeyboardInterrupt  # the second Ctrl-C: at once
        self.flagged = True

    def requested(self) -> bool:
        """Collective with several ranks: True on every rank when any rank got Ctrl-C."""
        if self.comm.size == 1:
            return False
        return self.comm.allreduce_scalar(int(self.flagged), "max") > 0
