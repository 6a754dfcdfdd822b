"""Each rank prints its BLAS and gpucnn thread counts after get_communicator
(tests/test_distributed.py: ranks on one machine share its CPUs, BLAS included)."""
import sys

from threadpoolctl import threadpool_info

from gpucnn.backend import get_backend
from gpucnn.distributed import get_communicator
from gpucnn.parallel import get_num_threads

comm = get_communicator(get_backend("cpu"))
blas = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
sys.stdout.write(f"rank {comm.rank}: blas {blas} gpucnn {get_num_threads()}\n")  # one write: ranks' lines interleave
sys.stdout.flush()
