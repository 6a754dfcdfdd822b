"""Run under mpiexec -n 3 python -m mpi4py: the MPI communicator's collectives, checked on
every rank. Any failed check raises, which (with -m mpi4py) aborts the job with a non-zero
exit; success prints one "rank R: collectives ok" line per rank.

argv[1]: a scratch folder shared by the ranks (for the barrier check).
"""
import os
import sys

import numpy as np
from numpy.testing import assert_allclose, assert_array_equal

from gpucnn.backends.backend import get_backend
from gpucnn.distributed import (MPICommunicator, StopSignal, allreduce_metrics, check_lockstep,
                                get_communicator, step_generator, time_allreduce)
from standin import standin_backend

SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]


def arrays_of(rank):
    """Rank ``rank``'s arrays: rank-dependent values, the last one a non-contiguous view."""
    rng = np.random.default_rng(100 + rank)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    arrays[2] = np.ascontiguousarray(arrays[2].transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)  # (2, 3, 2, 2) F-order
    return arrays


class CountingComm:
    """Wraps the mpi4py communicator and records the name of every method called on it."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if callable(attr):
            self.calls.append(name)
        return attr


def main(scratch):
    comm = get_communicator(get_backend("cpu"))
    rank, size = comm.rank, comm.size
    if not isinstance(comm, MPICommunicator) or comm.name != "mpi" or size != 3:
        raise AssertionError(f"expected the MPI communicator on 3 ranks, got {comm!r} of size {size}")
    if comm.local_rank != rank:  # one machine: the shared-memory split holds every rank
        raise AssertionError(f"local_rank {comm.local_rank} != rank {rank} on one machine")
    assert comm.is_main == (rank == 0)
    counting = CountingComm(comm._mpi)
    comm._mpi = counting

    # allreduce_mean_: the plain mean over ranks, in place, one collective per call
    everyone = [arrays_of(r) for r in range(size)]
    mine = arrays_of(rank)
    ids = [id(a) for a in mine]
    comm.allreduce_mean_(mine)
    assert [id(a) for a in mine] == ids
    for i, a in enumerate(mine):
        assert a.dtype == np.float32
        assert_allclose(a, np.mean([e[i] for e in everyone], axis=0), rtol=1e-6, atol=1e-6)
    assert counting.calls == ["allgather", "Allreduce"], counting.calls  # size agreement on the first call only
    for step in range(3):
        counting.calls.clear()
        comm.allreduce_mean_(arrays_of(rank))
        assert counting.calls == ["Allreduce"], counting.calls

    # weighted: shard sizes 3, 0, 2; the empty shard's stale values (NaN) must not count
    weights = [3, 0, 2]
    mine = arrays_of(rank)
    if weights[rank] == 0:
        for a in mine:
            a[...] = np.nan
    counting.calls.clear()
    comm.allreduce_mean_(mine, weight=weights[rank])
    assert counting.calls == ["Allreduce"], counting.calls
    for i, a in enumerate(mine):
        expected = sum(w * e[i] for w, e in zip(weights, everyone)) / sum(weights)
        assert_allclose(a, expected, rtol=1e-6, atol=1e-6)

    # bcast_ from rank 2: every rank ends with rank 2's arrays, root's untouched
    mine = arrays_of(rank)
    counting.calls.clear()
    comm.bcast_(mine, root=2)
    assert counting.calls == ["Bcast"], counting.calls
    for a, expected in zip(mine, everyone[2]):
        assert_array_equal(a, expected)

    # host numbers
    total = comm.allreduce_scalar(rank + 1)
    assert total == 6 and isinstance(total, int), total
    assert comm.allreduce_scalar(rank * 0.5, "max") == 1.0
    assert comm.allreduce_scalar(rank - 0.25, "min") == -0.25
    confusion = np.zeros((3, 3), dtype=np.int64)
    confusion[rank, rank] = rank + 1
    summed = allreduce_metrics(comm, {"loss_sum": 0.5 * rank, "correct": 10 + rank, "confusion": confusion})
    assert summed["loss_sum"] == 1.5 and isinstance(summed["loss_sum"], float)
    assert summed["correct"] == 33 and isinstance(summed["correct"], int)
    assert_array_equal(summed["confusion"], np.diag([1, 2, 3]))

    # barrier: a file rank 0 writes before it is there for everyone after it
    flag = os.path.join(scratch, "before-barrier")
    if rank == 0:
        with open(flag, "w") as f:
            f.write("x")
    comm.barrier()
    assert os.path.exists(flag), "rank passed the barrier before rank 0 reached it"

    # device arrays (the CuPy stand-in): packed on the device, one download and one upload
    backend = standin_backend()
    device = backend.xp
    mine = [backend.asarray(a) for a in arrays_of(rank)]
    comm.allreduce_mean_(mine)  # first call: makes the device buffer
    mine = [backend.asarray(a) for a in arrays_of(rank)]
    device.reset_transfers()
    counting.calls.clear()
    comm.allreduce_mean_(mine, weight=1)
    assert counting.calls == ["Allreduce"], counting.calls
    assert device.transfers == {"to_device": 1, "to_host": 1}, device.transfers
    for i, a in enumerate(mine):
        assert_allclose(backend.to_numpy(a), np.mean([e[i] for e in everyone], axis=0), rtol=1e-6, atol=1e-6)
    mine = [backend.asarray(a) for a in arrays_of(rank)]
    comm.bcast_(mine, root=1)
    for a, expected in zip(mine, everyone[1]):
        assert_array_equal(backend.to_numpy(a), expected)

    # local errors raise before any collective (so no rank hangs)
    counting.calls.clear()
    for bad, error in (([np.zeros(3)], TypeError), ([], ValueError)):
        try:
            comm.allreduce_mean_(bad)
        except error:
            pass
        else:
            raise AssertionError(f"allreduce_mean_({bad!r}) did not raise {error.__name__}")
    assert counting.calls == [], counting.calls

    # ranks that disagree on the number of values all raise, none hangs
    try:
        comm.allreduce_mean_([np.ones(4 + rank, dtype=np.float32)])
    except ValueError as exc:
        assert "different numbers of values" in str(exc), exc
    else:
        raise AssertionError("mismatched sizes did not raise")

    seconds = time_allreduce(comm, get_backend("cpu"), 1000, repeats=3, warmup=1)
    assert isinstance(seconds, float) and seconds >= 0

    # Ctrl-C on one rank (here: rank 2's flag) is seen by every rank at the same step
    for flagged_rank, expected in ((None, False), (2, True)):
        with StopSignal(comm) as stop:
            stop.flagged = rank == flagged_rank
            assert stop.requested() is expected, (flagged_rank, rank)

    # per-rank generators: independent draws, the shared generator in lockstep
    shared = np.random.default_rng(7)
    draws = [step_generator(shared, comm).random() for _ in range(3)]  # (3,) this rank's
    after = int(shared.integers(2**31))  # the next draw of the shared generator: the same everywhere
    assert comm.allreduce_scalar(after, "max") == comm.allreduce_scalar(after, "min") == after
    everyone = comm.allreduce_host(np.eye(size)[rank] * draws[0], "sum")  # (size,) each rank's first draw
    assert len(set(everyone.tolist())) == size, everyone

    # generators that parted are found, on every rank at once
    shared = np.random.default_rng(9)
    check_lockstep(shared, comm)
    if rank == 1:
        shared.random()  # one draw too many on one rank
    try:
        check_lockstep(shared, comm, " in epoch 3")
    except RuntimeError as exc:
        assert "data generators have parted in epoch 3" in str(exc), exc
    else:
        raise AssertionError("generators that parted were not found")

    # ending together: every rank's status -> (highest, rank 0's)
    assert comm.exit_statuses(rank, timeout=60) == (size - 1, 0)
    sys.stdout.write(f"rank {rank}: collectives ok\n")  # one write: lines of ranks may interleave
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
