"""Channel chunks: a layer's per-channel work, one cache-sized group of channels at a time.

NumPy runs every ufunc and reduction as its own pass over memory, on one core. A layer
that needs several passes over a large activation (BatchNorm2D: statistics, then the
normalised output) can instead hand :func:`over_channel_chunks` a function of a channel
slice. On the CPU, an activation larger than ``CHUNK_BYTES`` is cut into groups of whole
channels of about that size, and the groups are spread over a few threads (NumPy's
loops release the GIL): each group's passes after the first find it in the core's cache,
so the activation crosses the memory bus once per direction, on every core. A small
activation, or any array of another module (CuPy: one kernel per pass over the whole
array is the cheap way there), is handed over in one piece, so one function body is the
only code path on both backends.

Channels are independent, so where the chunks fall changes no result beyond the order
in which NumPy adds up each channel's values.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .backend import array_module

CHUNK_BYTES = 1 << 20  # per group of channels: about one core's L2 (1 MiB here); measured best of 0.5-4 MiB
_num_threads: int | None = None  # None: the CPUs this process may run on
_processes_sharing_cpus = 1  # ranks of a distributed run on this machine (share_cpus_with)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def set_num_threads(count: int) -> None:
    """Threads for chunked layer work on the CPU (as torch.set_num_threads); BLAS keeps its own
    setting (threadpoolctl or OPENBLAS_NUM_THREADS). 1 runs every chunk on the calling thread."""
    global _num_threads, _pool
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"set_num_threads expected a positive int, got {count!r}")
    with _pool_lock:
        _num_threads = int(count)
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


# Variables through which a user chooses BLAS's thread count; when one is set, it stands.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def share_cpus_with(processes: int) -> None:
    """``processes`` ranks of a distributed run share this process's CPUs: the default
    thread count (no set_num_threads, no OMP_NUM_THREADS) becomes their share of them, and
    so does BLAS's, unless the user chose it (BLAS_THREAD_VARIABLES). Left alone, every rank's
    BLAS starts a thread per core: 2 ranks on the 2-core development VM trained 2-29x slower
    than with one BLAS thread each (docs/distributed.md).
    gpucnn.distributed.get_communicator calls it with the ranks on the machine whose CPU
    sets overlap this one's (a launcher that binds each rank to its own cores leaves 1)."""
    global _processes_sharing_cpus
    _processes_sharing_cpus = max(1, int(processes))
    if _processes_sharing_cpus > 1 and not any(os.environ.get(v) for v in BLAS_THREAD_VARIABLES):
        _limit_blas_threads(get_num_threads())


def _limit_blas_threads(count: int) -> None:
    """Set NumPy's BLAS (OpenBLAS, MKL, BLIS) to ``count`` threads for the rest of the process."""
    from threadpoolctl import threadpool_limits  # scikit-learn requires it (and the mpi extra lists it)

    threadpool_limits(count, user_api="blas")


def get_num_threads() -> int:
    """The threads chunked layer work uses: set_num_threads's value, else OMP_NUM_THREADS
    (as PyTorch and OpenBLAS read it), else the CPUs this process may run on (divided by
    the ranks of a distributed run on this machine)."""
    if _num_threads is not None:
        return _num_threads
    from_env = os.environ.get("OMP_NUM_THREADS", "")
    if from_env.isdigit() and int(from_env) > 0:
        return int(from_env)
    return max(1, len(available_cpus()) // _processes_sharing_cpus)


def ranks_sharing_cpus(mine, every_rank) -> int:
    """How many of the CPU sets in ``every_rank`` (one per rank on this machine, this one's
    included) overlap ``mine``: the ranks this one shares its CPUs with, itself counted.
    All of them when the launcher binds no rank (MPICH's default); 1 when it binds each
    rank to cores of its own (Open MPI's default for a few ranks)."""
    mine = set(mine)
    return max(1, sum(1 for cpus in every_rank if mine & set(cpus)))


def available_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity; all of them where the OS has none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def channel_chunks(x, axis: int = 1) -> list[slice]:
    """Slices of ``axis`` (the channels) covering ``x`` in groups of about CHUNK_BYTES;
    ``[slice(None)]`` for an array that is small or not a NumPy array."""
    channels = x.shape[axis]
    if array_module(x) is not np or x.nbytes <= 2 * CHUNK_BYTES or channels < 2:
        return [slice(None)]
    count = min(channels, -(-x.nbytes // CHUNK_BYTES))  # ceil: chunks of at most CHUNK_BYTES
    bounds = [channels * i // count for i in range(count + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def over_channel_chunks(x, work, axis: int = 1) -> list:
    """``[work(channels) for channels in channel_chunks(x, axis)]``, the calls spread over
    get_num_threads() threads when there are several chunks. Returns when all are done,
    and raises the first exception any of them raised."""
    chunks = channel_chunks(x, axis)
    threads = min(get_num_threads(), len(chunks))
    if threads == 1:
        return [work(channels) for channels in chunks]
    # thread t takes chunks t, t + threads, ...: neighbours in memory run side by side
    futures = [_executor().submit(_run_each, work, chunks[t::threads]) for t in range(1, threads)]
    try:
        mine = _run_each(work, chunks[0::threads])
    finally:
        wait(futures)  # also after an exception here: no thread is left writing
    per_thread = [mine] + [future.result() for future in futures]
    return [per_thread[i % threads][i // threads] for i in range(len(chunks))]  # chunk order


def joined(results: list) -> tuple:
    """Per-chunk tuples of per-channel arrays (c,) -> one tuple of (C,) arrays; a single
    chunk's arrays as they are (no copy, no kernel on a GPU)."""
    if len(results) == 1:
        return tuple(results[0])
    xp = array_module(results[0][0])
    return tuple(xp.concatenate(parts) for parts in zip(*results))


def _run_each(work, chunks) -> list:
    return [work(channels) for channels in chunks]


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, get_num_threads() - 1), thread_name_prefix="gpucnn")
        return _pool
