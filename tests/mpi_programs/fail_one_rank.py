"""Run under mpiexec -n 2 python -m mpi4py: rank 1 fails while rank 0 waits in a gradient
allreduce that can never complete. The job must end, non-zero, in seconds.

argv[1]: "raise" (an uncaught exception on rank 1) or "abort" (comm.abort(7) on rank 1).
"""
import sys

import numpy as np

from gpucnn.backends.backend import get_backend
from gpucnn.distributed import get_communicator

comm = get_communicator(get_backend("cpu"))
comm.barrier()
if comm.rank == 1:
    if sys.argv[1] == "abort":
        comm.abort(7)
    raise RuntimeError("rank 1 failed on purpose")
comm.allreduce_mean_([np.ones(10, dtype=np.float32)])  # rank 1 never joins
print("rank 0 finished an allreduce without rank 1", flush=True)
