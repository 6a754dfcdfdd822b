"""What a training loop needs from its peers (:class:`Communicator`), and one process alone
(:class:`SingleProcess`), where every collective is a no-op. The MPI and NCCL communicators
(gpucnn/distributed/mpi.py, nccl.py) derive from it and share its argument checks."""
from __future__ import annotations

import numpy as np

from ..backends.backend import array_module

REDUCE_OPS = ("sum", "max", "min")


class Communicator:
    """What a training loop needs from its peers. This base class is one process alone.

    ``allreduce_mean_(arrays, weight=None)``: every array becomes the mean over ranks, in
    place, in one collective; with ``weight`` (this rank's shard size, 0 for an empty shard,
    given on every rank or on none) the weighted mean sum(w * a) / sum(w), the total weight
    travelling in the same buffer.
    ``bcast_(arrays, root=0)``: every array becomes root's, in place, in one collective.
    ``allreduce_scalar(value, op)`` / ``allreduce_host(values, op)``: host numbers, op in
    "sum", "max", "min". ``barrier()``, ``abort(code)``; ``exit_statuses(code, timeout)`` and
    ``finalize()`` to end a job together.
    """

    name = "single"
    rank, size, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one rank that prints and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        return ("1 process (for N processes launch with: mpiexec -n N python -m mpi4py "
                "scripts/train.py --distributed ...)")

    def allreduce_mean_(self, arrays, weight=None):
        """float32 arrays on one device -> the same arrays holding the (weighted) mean over ranks."""
        _checked(arrays, "allreduce_mean_")
        _check_weight(weight)
        return arrays

    def bcast_(self, arrays, root=0):
        """float32 arrays on one device -> the same arrays holding rank ``root``'s values."""
        _checked(arrays, "bcast_")
        self._check_root(root)
        return arrays

    def allreduce_host(self, values, op="sum") -> np.ndarray:
        """Host numbers (any shape) -> float64 array reduced elementwise over ranks."""
        _check_op(op)
        return np.array(values, dtype=np.float64)

    def allreduce_scalar(self, value, op="sum"):
        """A host int or float -> its reduction over ranks (an int stays an int)."""
        result = self.allreduce_host([value], op)[0]
        return int(result) if isinstance(value, (int, np.integer)) else float(result)

    def barrier(self) -> None:
        """Wait for every rank (host side only: device work is not synchronised)."""

    def abort(self, code: int = 1) -> None:
        """End every rank of the job with exit status ``code``."""
        raise SystemExit(code)

    def exit_statuses(self, code: int, timeout: float | None = None):
        """Every rank calls this once, at its end, with its exit status: -> (the highest
        status, rank 0's status), or None when some rank did not arrive within ``timeout``
        seconds (None: wait as long as it takes). A rank that does not arrive is waiting in
        a collective that a failed rank left: the caller should abort. Call it on a
        communicator that nothing else uses, so that it never meets such a collective."""
        return int(code), int(code)

    def finalize(self) -> None:
        """End this process's MPI cleanly (after exit_statuses, on every rank), so that a
        non-zero exit under ``python -m mpi4py`` is not turned into an MPI_Abort."""

    def _check_root(self, root):
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < self.size:
            raise ValueError(f"bcast_ expected root in [0, {self.size}), got {root!r}")


class SingleProcess(Communicator):
    """One process alone (plain ``python``, or ``mpiexec -n 1``): every collective is a no-op."""


def _checked(arrays, caller, device_only=False):
    """-> (list of arrays, their array module); float32, one device, non-empty."""
    if not isinstance(arrays, (list, tuple)) or not arrays:
        raise ValueError(f"{caller} expected a non-empty list of arrays, got {arrays!r:.80}")
    for i, a in enumerate(arrays):
        dtype = getattr(a, "dtype", None)
        if dtype != np.float32:
            raise TypeError(f"{caller} expected float32 arrays, got {dtype or type(a).__name__} at position {i}; "
                            "cast once with a.astype(numpy.float32)")
    xp = array_module(arrays[0])
    if any(array_module(a) is not xp for a in arrays):
        raise TypeError(f"{caller} expected arrays on one device, got a mix of host and device arrays; "
                        "move the model with model.to(backend) first")
    if device_only and xp is np:
        raise TypeError(f"{caller} over NCCL expected GPU arrays, got numpy arrays; "
                        "move the model with model.to(backend) first")
    return list(arrays), xp


def _check_weight(weight):
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float, np.number))
                               or not weight >= 0):
        raise ValueError(f"allreduce_mean_ expected weight >= 0 (this rank's shard size) or None, got {weight!r}")


def _check_op(op):
    if op not in REDUCE_OPS:
        raise ValueError(f"expected op in {REDUCE_OPS}, got {op!r}")
