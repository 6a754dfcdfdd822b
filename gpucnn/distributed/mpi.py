"""Gradients over MPI (mpi4py), through host memory: :class:`MPICommunicator`.

mpi4py is imported at the first collective (:func:`_mpi_module`), never at import: one
process, or no ``--distributed``, never loads it."""
from __future__ import annotations

import time

import numpy as np

from ..backends.backend import array_module, to_host
from .communicator import Communicator, _check_op, _check_weight, _checked

MPI_MISSING = "--distributed needs mpi4py: pip install 'gpucnn[mpi]'"


class MPICommunicator(Communicator):
    """MPI through mpi4py, on host buffers. Device arrays are packed on their device, copied
    to the host once, reduced, copied back once (pip MPI builds are not CUDA-aware)."""

    name = "mpi"

    def __init__(self, mpi_comm, local_rank: int = 0):
        self._mpi = mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        self.local_rank = int(local_rank)
        self._buffer = None  # the flat float32 pack buffer, on the arrays' device, reused

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size} (local rank {self.local_rank}), gradients over {self.name.upper()}"

    def allreduce_mean_(self, arrays, weight=None):
        arrays, xp = _checked(arrays, "allreduce_mean_")
        _check_weight(weight)
        buffer = self._pack(arrays, xp, weight)
        host = to_host(buffer)  # on the CPU this is the buffer itself: no copy
        self._mpi.Allreduce(_mpi_module().IN_PLACE, host, op=_mpi_module().SUM)
        if host is not buffer:
            buffer[...] = xp.asarray(host)  # (total + 1,) one upload
        self._unpack_mean(arrays, buffer)
        return arrays

    def bcast_(self, arrays, root=0):
        arrays, xp = _checked(arrays, "bcast_")
        self._check_root(root)
        buffer = self._pack(arrays, xp, None)
        host = to_host(buffer)
        self._mpi.Bcast(host, root=root)
        if self.rank != root:
            if host is not buffer:
                buffer[...] = xp.asarray(host)
            self._unpack(arrays, buffer)
        return arrays

    def allreduce_host(self, values, op="sum") -> np.ndarray:
        _check_op(op)
        values = np.array(values, dtype=np.float64)
        self._mpi.Allreduce(_mpi_module().IN_PLACE, values, op=getattr(_mpi_module(), op.upper()))
        return values

    def barrier(self) -> None:
        self._mpi.Barrier()

    def abort(self, code: int = 1) -> None:
        self._mpi.Abort(code)

    def exit_statuses(self, code: int, timeout: float | None = None):
        mine = np.array([code, code if self.rank == 0 else 0], dtype=np.int64)  # (2,)
        result = np.empty_like(mine)
        # non-blocking, so that a rank can give up waiting for ranks stuck elsewhere
        request = self._mpi.Iallreduce(mine, result, op=_mpi_module().MAX)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not request.Test():
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.005)
        return int(result[0]), int(result[1])

    def finalize(self) -> None:
        MPI = _mpi_module()
        if not MPI.Is_finalized():
            MPI.Finalize()

    # -- one flat buffer per step: [w * a0.ravel(), w * a1.ravel(), ..., w] ----------------
    def _pack(self, arrays, xp, weight):
        total = sum(a.size for a in arrays)
        if self._buffer is None or self._buffer.size != total + 1 or array_module(self._buffer) is not xp:
            # new sizes: make sure every rank packs the same number of values (else MPI
            # truncates and NCCL hangs); a collective only when the buffer is (re)made
            sizes = self._mpi.allgather(total)
            if len(set(sizes)) != 1:
                raise ValueError(f"ranks hold different numbers of values to combine: {sizes} (one per rank); "
                                 "every rank must build the same model")
            self._buffer = xp.empty(total + 1, dtype=np.float32)
        buffer = self._buffer
        if weight == 0:
            buffer.fill(0)  # an empty shard: contributes nothing, whatever its stale gradients hold
            return buffer
        xp.concatenate([a.reshape(-1) for a in arrays], out=buffer[:total])  # (total,)
        if weight is not None and weight != 1:
            buffer[:total] *= np.float32(weight)
        buffer[total] = 1.0 if weight is None else float(weight)
        return buffer

    def _unpack_mean(self, arrays, buffer):
        total = buffer.size - 1
        buffer[:total] /= buffer[total]  # sum of w * a over ranks / sum of w
        self._unpack(arrays, buffer)

    @staticmethod
    def _unpack(arrays, buffer):
        offset = 0
        for a in arrays:
            a[...] = buffer[offset:offset + a.size].reshape(a.shape)  # (a.shape) any strides
            offset += a.size


def _mpi_module():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        from importlib.util import find_spec
        if find_spec("mpi4py") is None:
            raise ImportError(MPI_MISSING) from None
        raise ImportError(f"mpi4py is installed but cannot load an MPI library ({exc}); "
                          "reinstall it with: pip install --force-reinstall 'gpucnn[mpi]'") from None
    return MPI
