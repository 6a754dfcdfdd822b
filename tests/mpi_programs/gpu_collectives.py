"""Run under mpiexec -n 2 python -m mpi4py on a machine with 2+ GPUs: get_communicator picks
NCCL, each rank its own GPU, and the weighted allreduce and bcast are right on real devices."""
import numpy as np
from numpy.testing import assert_allclose, assert_array_equal

from gpucnn.backends.backend import get_backend
from gpucnn.distributed import NCCLCommunicator, get_communicator

backend = get_backend("gpu")
comm = get_communicator(backend)
if not isinstance(comm, NCCLCommunicator):
    raise AssertionError(f"expected NCCL on 2 GPUs, got {comm.describe()}")
device = backend.xp.cuda.Device().id
if device != comm.local_rank:
    raise AssertionError(f"rank {comm.rank} (local rank {comm.local_rank}) runs on GPU {device}")
everyone = [[np.full((3, 4), r + 1, np.float32), np.arange(5, dtype=np.float32) * (r + 1)] for r in range(2)]
mine = [backend.asarray(a) for a in everyone[comm.rank]]
comm.allreduce_mean_(mine, weight=comm.rank + 1)  # weights 1 and 2
for i, a in enumerate(mine):
    assert_allclose(backend.to_numpy(a), (everyone[0][i] + 2 * everyone[1][i]) / 3, rtol=1e-6)
mine = [backend.asarray(a) for a in everyone[comm.rank]]
comm.bcast_(mine, root=1)
for a, expected in zip(mine, everyone[1]):
    assert_array_equal(backend.to_numpy(a), expected)
print(f"rank {comm.rank}: nccl ok", flush=True)
