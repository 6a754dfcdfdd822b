"""Each rank prints the CPUs it may run on and its BLAS and gpucnn thread counts after get_communicator
(tests/test_distributed.py: ranks on one machine share its CPUs, BLAS included)."""
import sys

from threadpoolctl import threadpool_info

from gpucnn.backends.backend import get_backend
from gpucnn.distributed import get_communicator
from gpucnn.backends.cpu_threads import available_cpus, get_num_threads

comm = get_communicator(get_backend("cpu"))
blas = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
cpus = ",".join(map(str, available_cpus()))  # what the launcher bound this rank to (all CPUs if nothing)
sys.stdout.write(f"rank {comm.rank}: cpus {cpus} blas {blas} gpucnn {get_num_threads()}\n")  # one write: lines interleave
sys.stdout.flush()
