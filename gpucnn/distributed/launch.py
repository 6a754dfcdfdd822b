"""The communicator of a process that mpiexec launched: :func:`get_communicator` picks
single process, NCCL or MPI, selects this rank's GPU and gives it its share of the CPUs."""
from __future__ import annotations

import warnings

from ..backends.cpu_threads import available_cpus, ranks_sharing_cpus, share_cpus_with
from .communicator import Communicator, SingleProcess
from .mpi import MPICommunicator, _mpi_module
from .nccl import NCCLCommunicator, _CupyNCCL


def get_communicator(backend=None) -> Communicator:
    """The communicator of this process, for a model on ``backend``.

    One process (plain ``python``, or ``mpiexec -n 1``): :class:`SingleProcess`. Several: NCCL
    when every rank is on a GPU of its own and CuPy can load NCCL, MPI otherwise (with a
    warning on rank 0 saying why a GPU run goes over MPI). On a GPU this also selects the
    device ``local_rank % device_count``: call it before moving the model or data to the GPU.
    Raises ImportError naming the pip extra when mpi4py is missing.
    """
    MPI = _mpi_module()
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        return SingleProcess()
    comm = world.Dup()  # our collectives never mix with the caller's own use of COMM_WORLD
    shared = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
    local_rank = shared.Get_rank()
    # chunked layer work and BLAS: each rank takes its share of the CPUs it may run on, shared
    # with the ranks on this machine whose CPU sets overlap its own (all of them when the
    # launcher binds none; none when it binds each rank to cores of its own, as Open MPI does)
    mine = available_cpus()
    share_cpus_with(ranks_sharing_cpus(mine, shared.allgather(mine)))
    shared.Free()
    reason, driver, device = "cpu", None, None
    if backend is not None and backend.name == "gpu":
        cupy = backend.xp  # the GPU backend's array module is cupy: no import here
        device = local_rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(device).use()
        try:
            driver, reason = _CupyNCCL(cupy), ""
        except ImportError as exc:
            reason = str(exc)
    # one collective, the same on every rank, so that all ranks take the same decision
    ranks = comm.allgather((reason, MPI.Get_processor_name(), device))
    reasons = [r for r, _, _ in ranks]
    gpus = [(host, d) for _, host, d in ranks if d is not None]
    if len(set(gpus)) < len(gpus):
        reasons.append("more ranks than GPUs on one machine (NCCL needs a GPU per rank); "
                       "launch at most one rank per GPU")
    if not any(reasons):
        return NCCLCommunicator(comm, local_rank, driver)
    if comm.Get_rank() == 0 and any(r != "cpu" for r in reasons):
        why = next((r for r in reversed(reasons) if r and r != "cpu"), "some ranks have no GPU")
        warnings.warn(f"distributed: gradients go over MPI through host memory, not NCCL: {why}",
                      RuntimeWarning, stacklevel=2)
    return MPICommunicator(comm, local_rank)
