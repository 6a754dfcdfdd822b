"""Gradients over NCCL between GPUs, one per rank (:class:`NCCLCommunicator`), through
CuPy's binding (:class:`_CupyNCCL`); host numbers and the NCCL id still travel over MPI."""
from __future__ import annotations

import warnings

from .communicator import _check_weight, _checked
from .mpi import MPICommunicator


class NCCLCommunicator(MPICommunicator):
    """NCCL for device arrays (one GPU per rank); MPI for host numbers and the NCCL id.

    ``driver`` holds what is CuPy-specific (:class:`_CupyNCCL`); the reduction runs on the
    packed device buffer in place, on the current stream, so packing, reducing and unpacking
    stay ordered on the device without a host synchronisation.
    """

    name = "nccl"

    def __init__(self, mpi_comm, local_rank: int, driver):
        super().__init__(mpi_comm, local_rank)
        self._driver = driver
        unique_id = driver.unique_id() if self.rank == 0 else None
        unique_id = mpi_comm.bcast(unique_id, root=0)
        self._nccl = driver.communicator(self.size, unique_id, self.rank)

    def allreduce_mean_(self, arrays, weight=None):
        arrays, xp = _checked(arrays, "allreduce_mean_", device_only=True)
        _check_weight(weight)
        buffer = self._pack(arrays, xp, weight)
        d = self._driver
        pointer = d.pointer(buffer)
        self._nccl.allReduce(pointer, pointer, buffer.size, d.FLOAT32, d.SUM, d.stream())
        self._unpack_mean(arrays, buffer)
        return arrays

    def bcast_(self, arrays, root=0):
        arrays, xp = _checked(arrays, "bcast_", device_only=True)
        self._check_root(root)
        buffer = self._pack(arrays, xp, None)
        d = self._driver
        self._nccl.bcast(d.pointer(buffer), buffer.size, d.FLOAT32, root, d.stream())
        if self.rank != root:
            self._unpack(arrays, buffer)
        return arrays


class _CupyNCCL:
    """CuPy's NCCL binding as :class:`NCCLCommunicator` uses it (tests pass a fake with the
    same attributes). The one place gpucnn touches ``cupy.cuda.nccl``."""

    def __init__(self, cupy):
        with warnings.catch_warnings():  # CuPy warns at import when libnccl is missing
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl
        if not nccl.available:
            raise ImportError("CuPy cannot load the NCCL library; install it with: "
                              "pip install 'nvidia-nccl-cu12>=2.18.1,<3'")
        self._cupy, self._lib = cupy, nccl
        self.FLOAT32, self.SUM = nccl.NCCL_FLOAT32, nccl.NCCL_SUM

    def unique_id(self):
        return self._lib.get_unique_id()

    def communicator(self, size, unique_id, rank):
        return self._lib.NcclCommunicator(size, unique_id, rank)

    @staticmethod
    def pointer(array) -> int:
        return array.data.ptr

    def stream(self) -> int:
        return self._cupy.cuda.get_current_stream().ptr
