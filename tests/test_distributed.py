"""gpucnn.distributed: communicators on real mpiexec processes, NCCL through a recording fake
on the CuPy stand-in (and on real GPUs when present), the sharded sampler, the helpers."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import time

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from gpucnn.backends import cpu_threads as parallel
from gpucnn.backends.backend import get_backend, gpu_status
from gpucnn.data.batches import batch_slices
from gpucnn.distributed import (NCCLCommunicator, ShardedSampler, SingleProcess, StopSignal, _CupyNCCL,
                                allreduce_metrics, gradient_bytes, gradients_of, main_process_log,
                                parameters_of, ring_allreduce_seconds, shard_range, state_of,
                                step_generator, time_allreduce)
from gpucnn.training.run import build_model
from mpirun import PROGRAMS, run_job, run_mpi, subprocess_env
from standin import standin_backend

sys.path.insert(0, str(PROGRAMS))

from parity_train import train as parity_train  # noqa: E402

_CUPY, _NO_GPU_REASON = gpu_status()


def run_python(code: str, timeout: float = 60):
    return run_job([sys.executable, "-c", code], timeout)


# -- the MPI communicator, on real processes ------------------------------------------------
def test_mpi_collectives_on_three_ranks(tmp_path):
    """allreduce_mean_ (plain, weighted, empty shard), bcast_, scalars, metrics, barrier,
    device arrays, one collective per call: every rank checks (tests/mpi_programs/collectives.py)."""
    rc, out, err, _ = run_mpi(3, "collectives.py", tmp_path)
    assert rc == 0, f"collectives.py failed (rc {rc}):\n{out}\n{err[-4000:]}"
    # ranks' output lines may interleave: look for each rank's line anywhere
    assert sorted(re.findall(r"rank (\d): collectives ok", out)) == ["0", "1", "2"], out


@pytest.mark.parametrize("n_train, epochs, optimizer", [
    (1437, 5, "momentum"),  # 225 steps; the last global batch of 29 splits 15 / 14
    (1409, 4, "adam"),      # 180 steps; the last global batch of 1 leaves rank 1 an empty shard
])
def test_two_ranks_train_the_same_weights_as_one_process(tmp_path, n_train, epochs, optimizer):
    rc, out, err, _ = run_mpi(2, "parity_train.py", tmp_path, n_train, 32, epochs, optimizer)
    assert rc == 0, f"parity_train.py failed (rc {rc}):\n{out}\n{err[-4000:]}"
    reference, steps = parity_train(SingleProcess(), n_train, 32, epochs, optimizer)
    assert steps == epochs * len(batch_slices(n_train, 32))
    for rank in range(2):
        with np.load(tmp_path / f"weights_rank{rank}.npz") as saved:
            assert int(saved["steps"]) == steps
            for key, expected in reference.items():
                assert saved[key].dtype == np.float32
                assert_allclose(saved[key], expected, rtol=1e-5, atol=1e-5, err_msg=f"rank {rank} {key}")


def test_fit_on_two_ranks_keeps_weights_and_batchnorm_statistics_equal():
    """fit(comm=...) as a library call on lenet-bn: rank 0's BatchNorm statistics everywhere."""
    rc, out, err, _ = run_mpi(2, "fit_batchnorm.py")
    assert rc == 0, f"fit_batchnorm.py failed (rc {rc}):\n{out}\n{err[-4000:]}"
    assert sorted(re.findall(r"rank (\d): fit ok", out)) == ["0", "1"], out


@pytest.mark.parametrize("mode, code", [("raise", None), ("abort", 7)])
def test_a_failing_rank_ends_the_whole_job(mode, code):
    timeout = 60
    rc, out, err, seconds = run_mpi(2, "fail_one_rank.py", mode, timeout=timeout)
    assert rc != 0 and seconds < timeout
    if code is not None:
        assert rc == code
    else:
        assert "rank 1 failed on purpose" in err
    assert "finished an allreduce" not in out


def test_ranks_on_one_machine_split_its_cpus_between_their_blas_threads():
    """Without OMP_NUM_THREADS and the like, each of 2 ranks runs BLAS on its share of the
    CPUs, as gpucnn's own threads (oversubscribed, they trained 2-29x slower on 2 cores)."""
    env = {k: v for k, v in subprocess_env().items() if k not in parallel.BLAS_THREAD_VARIABLES}
    rc, out, err, _ = run_mpi(2, "blas_share.py", env=env, timeout=120)
    assert rc == 0, err
    # mpiexec merges the ranks' output, which may split a line: read the reports, not the lines
    reports = dict(re.findall(r"rank (\d+): cpus [\d,]+ (blas \[[\d, ]*\] gpucnn \d+)", out))
    cpus = {rank: set(map(int, re.search(rf"rank {rank}: cpus ([\d,]+)", out).group(1).split(",")))
            for rank in reports}
    assert sorted(cpus) == ["0", "1"], out
    # each rank's share: its CPUs (as the launcher bound it: MPICH binds no rank, Open MPI each
    # to a core of its own) over the ranks whose CPUs overlap its own
    for rank, mine in cpus.items():
        share = max(1, len(mine) // sum(1 for theirs in cpus.values() if mine & theirs))
        assert reports[rank] == f"blas [{share}] gpucnn {share}", out


def test_one_process_without_a_launcher_is_single_process():
    code = ("from gpucnn.backends.backend import get_backend\n"
            "from gpucnn.distributed import get_communicator\n"
            "c = get_communicator(get_backend('cpu'))\n"
            "print(type(c).__name__, c.rank, c.size, c.is_main)\n"
            "print(c.describe())\n")
    rc, out, err, _ = run_python(code)
    assert rc == 0, err
    first, second = out.splitlines()[:2]
    assert first == "SingleProcess 0 1 True"
    assert second.startswith("1 process") and "mpiexec -n N" in second


def test_mpi4py_is_never_imported_without_distributed():
    code = ("import sys, gpucnn, gpucnn.distributed, gpucnn.training.run\n"
            "from gpucnn.distributed import ShardedSampler, SingleProcess\n"
            "SingleProcess().allreduce_scalar(1)\n"
            "print('mpi4py' in sys.modules)\n")
    rc, out, err, _ = run_python(code)
    assert rc == 0, err
    assert out.strip() == "False"


def test_missing_mpi4py_gives_the_install_command():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from gpucnn.distributed import get_communicator\n"
            "try:\n    get_communicator()\n"
            "except ImportError as exc:\n    print(exc)\n")
    rc, out, err, _ = run_python(code)
    assert rc == 0, err
    assert out.strip() == "--distributed needs mpi4py: pip install 'gpucnn[mpi]'"


# -- the NCCL communicator through a recording fake, on the CuPy stand-in ----------------------
NCCL_FLOAT32, NCCL_SUM = 7, 0  # NCCL's enum values (ncclFloat32, ncclSum)


def device_memory(pointer: int, count: int) -> np.ndarray:
    """The float32 memory at ``pointer``, as NCCL sees it."""
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(count,))


class FakeMPI:
    """The host side NCCLCommunicator uses: rank, size, bcast of the NCCL id, allgather."""

    def __init__(self, rank, size):
        self.rank, self.size, self.root_unique_id = rank, size, tuple(range(128))

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def bcast(self, obj, root=0):
        return obj if self.rank == root else self.root_unique_id

    def allgather(self, obj):
        return [obj] * self.size


class FakeNcclComm:
    """Records every call with its pointers/count/dtype/op and performs it in numpy: the other
    ranks' packed buffers come from ``peers`` (one list of flat arrays per allReduce)."""

    def __init__(self, size, unique_id, rank):
        self.size, self.unique_id, self.rank = size, unique_id, rank
        self.calls, self.sent, self.peers, self.root_buffer = [], [], [], None

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self.calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))
        mine = device_memory(sendbuf, count).copy()
        self.sent.append(mine)
        device_memory(recvbuf, count)[:] = mine + sum(self.peers.pop(0))

    def bcast(self, buff, count, datatype, root, stream):
        self.calls.append(("bcast", buff, count, datatype, root, stream))
        if self.rank != root:
            device_memory(buff, count)[:] = self.root_buffer


class FakeNCCL:
    """The driver interface of gpucnn.distributed._CupyNCCL, on stand-in arrays."""

    FLOAT32, SUM = NCCL_FLOAT32, NCCL_SUM

    def __init__(self):
        self.comm = None

    def unique_id(self):
        return tuple(range(128))

    def communicator(self, size, unique_id, rank):
        self.comm = FakeNcclComm(size, unique_id, rank)
        return self.comm

    @staticmethod
    def pointer(array):
        host = array._a  # the stand-in's memory: what a device pointer would address
        assert host.flags.c_contiguous
        return host.ctypes.data

    @staticmethod
    def stream():
        return 4242


def make_grads(rng, backend):
    """Host and device copies of gradients of three shapes, the last one non-contiguous."""
    host = [rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (3,), (2, 1, 2, 2))]
    device = [backend.asarray(a) for a in host]
    device[2] = backend.asarray(host[2].transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)  # (2, 1, 2, 2) strided
    return host, device


def packed(arrays, weight):
    return np.concatenate([weight * a.ravel() for a in arrays] + [np.array([weight], np.float32)])


def test_nccl_allreduce_is_one_call_on_one_packed_device_buffer(rng):
    backend = standin_backend()
    nccl = FakeNCCL()
    comm = NCCLCommunicator(FakeMPI(rank=0, size=2), local_rank=0, driver=nccl)
    assert comm.name == "nccl" and (comm.rank, comm.size) == (0, 2)
    assert (nccl.comm.size, nccl.comm.rank, nccl.comm.unique_id) == (2, 0, tuple(range(128)))
    pointers = set()
    for step, (mine_w, peer_w) in enumerate([(16, 16), (3, 1), (0, 5)]):
        mine, grads = make_grads(rng, backend)
        peer = [rng.standard_normal(a.shape).astype(np.float32) for a in mine]
        nccl.comm.peers.append([packed(peer, peer_w)])
        backend.xp.reset_transfers()
        comm.allreduce_mean_(grads, weight=mine_w)
        assert backend.xp.transfers == {"to_device": 0, "to_host": 0}  # it all stays on the device
        name, send, recv, count, dtype, op, stream = nccl.comm.calls[-1]
        assert len(nccl.comm.calls) == step + 1  # one collective per step
        assert (name, count, dtype, op, stream) == ("allReduce", 4 * 3 + 3 + 8 + 1, NCCL_FLOAT32, NCCL_SUM, 4242)
        assert send == recv  # in place
        pointers.add(send)
        assert_allclose(nccl.comm.sent[-1], packed(mine, mine_w) if mine_w else 0)  # the packing layout
        for got, a, b in zip(grads, mine, peer):
            assert got.dtype == np.float32
            assert_allclose(backend.to_numpy(got), (mine_w * a + peer_w * b) / (mine_w + peer_w),
                            rtol=1e-6, atol=1e-6)
    assert len(pointers) == 1  # the pack buffer is reused


def test_nccl_bcast_overwrites_non_root_ranks(rng):
    backend = standin_backend()
    for rank in (0, 1):
        nccl = FakeNCCL()
        comm = NCCLCommunicator(FakeMPI(rank=rank, size=2), local_rank=rank, driver=nccl)
        mine, params = make_grads(rng, backend)
        root = [rng.standard_normal(a.shape).astype(np.float32) for a in mine]
        nccl.comm.root_buffer = packed(root, 1)
        comm.bcast_(params, root=0)
        (name, _, count, dtype, root_rank, stream), = nccl.comm.calls
        assert (name, count, dtype, root_rank, stream) == ("bcast", 24, NCCL_FLOAT32, 0, 4242)
        for got, before, sent in zip(params, mine, root):
            assert_array_equal(backend.to_numpy(got), sent if rank == 1 else before)


def test_nccl_refuses_host_arrays():
    comm = NCCLCommunicator(FakeMPI(0, 2), 0, FakeNCCL())
    with pytest.raises(TypeError, match="over NCCL expected GPU arrays, got numpy arrays"):
        comm.allreduce_mean_([np.zeros(3, dtype=np.float32)])


needs_gpu = pytest.mark.skipif(_CUPY is None, reason=f"needs a CUDA GPU: {_NO_GPU_REASON}")


def _cupy_nccl_or_skip():
    try:
        return _CupyNCCL(_CUPY)
    except ImportError as exc:
        pytest.skip(f"this GPU machine cannot load NCCL: {exc}")


@needs_gpu
def test_nccl_on_a_real_gpu_one_rank(rng):
    """The real CuPy NCCL binding (pointers, dtype, op, stream) on a one-rank communicator."""
    backend = get_backend("gpu")
    comm = NCCLCommunicator(FakeMPI(0, 1), 0, _cupy_nccl_or_skip())
    host = [rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (3,))]
    grads = [backend.asarray(a) for a in host]
    comm.allreduce_mean_(grads, weight=3)  # one rank: the mean is the rank's own gradients
    comm.bcast_(grads, root=0)
    for got, expected in zip(grads, host):
        assert_allclose(backend.to_numpy(got), expected, rtol=1e-6)


@pytest.mark.skipif(_CUPY is None or _CUPY.cuda.runtime.getDeviceCount() < 2,
                    reason=f"needs 2 CUDA GPUs: {_NO_GPU_REASON or 'fewer than 2 found'}")
def test_nccl_on_two_real_gpus():
    _cupy_nccl_or_skip()
    rc, out, err, _ = run_mpi(2, "gpu_collectives.py")
    assert rc == 0, f"gpu_collectives.py failed (rc {rc}):\n{out}\n{err[-4000:]}"
    assert out.count("nccl ok") == 2


# -- the sampler -----------------------------------------------------------------------------
@pytest.mark.parametrize("n, batch, size", [(103, 12, 3), (100, 20, 4), (50, 8, 1), (33, 8, 4), (7, 4, 2)])
def test_shards_partition_every_global_batch(n, batch, size):
    reference = ShardedSampler(n, batch, 0, 1, np.random.default_rng(5))
    samplers = [ShardedSampler(n, batch, r, size, np.random.default_rng(5)) for r in range(size)]
    for _ in range(2):  # two epochs: a fresh permutation each, the same on every rank
        order, single = reference.epoch()
        plans = [s.epoch() for s in samplers]
        assert len(single) == len(reference) == len(batch_slices(n, batch))
        for b, whole in enumerate(single):
            shards = [indices[shards[b]] for indices, shards in plans]
            # rank order, contiguous slices: concatenated they are the global batch itself
            assert_array_equal(np.concatenate(shards), order[whole])
            sizes = [len(s) for s in shards]
            m = whole.stop - whole.start
            if m == batch:
                assert sizes == [batch // size] * size
            else:  # the short last batch: as even as possible over ranks that get 2 or more
                used = [s for s in sizes if s]
                assert max(used) - min(used) <= 1 and (min(used) >= 2 or m == 1)
                assert len(used) == min(size, max(1, m // 2))
        for indices, _ in plans:
            assert indices.dtype == np.int64


def test_one_rank_visits_the_order_a_single_process_uses():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    indices, shards = ShardedSampler(50, 16, rng=rng_a).epoch()
    order = rng_b.permutation(50)  # what gpucnn.training.run.train_epoch draws
    assert_array_equal(indices, order)
    assert shards == batch_slices(50, 16)
    # one permutation per epoch whatever the number of ranks: checkpoints do not depend on it
    ShardedSampler(50, 16, 2, 4, rng_a).epoch()
    rng_b.permutation(50)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state


@pytest.mark.parametrize("n, batch, size, last", [
    (9, 8, 4, [1, 0, 0, 0]),      # one image: one rank takes it, as one process does
    (11, 8, 4, [3, 0, 0, 0]),
    (19, 16, 2, [3, 0]),          # not 2 / 1: BatchNorm cannot normalise one image
    (13, 8, 4, [3, 2, 0, 0]),
    (29, 16, 4, [4, 3, 3, 3]),    # 2 or more for every rank: all of them
])
def test_a_short_last_batch_leaves_no_rank_a_single_image(n, batch, size, last):
    plans = [ShardedSampler(n, batch, r, size, np.random.default_rng(0)).epoch() for r in range(size)]
    assert [shards[-1].stop - shards[-1].start for _, shards in plans] == last


def test_sampler_refuses_a_global_batch_not_divisible_by_the_ranks():
    with pytest.raises(ValueError, match="global batch size 10 is not divisible by the 4 processes; "
                                         "choose a batch size that is a multiple of 4, e.g. 12"):
        ShardedSampler(100, 10, 0, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expected rank in \[0, 2\), got 2"):
        ShardedSampler(100, 10, 2, 2, np.random.default_rng(0))


@pytest.mark.parametrize("n, size", [(10, 3), (2, 4), (0, 2), (12, 4)])
def test_shard_range_is_array_split(n, size):
    parts = np.array_split(np.arange(n), size)
    for rank in range(size):
        assert_array_equal(np.arange(n)[shard_range(n, rank, size)], parts[rank])


# -- one process, helpers ----------------------------------------------------------------------
def test_single_process_collectives_are_no_ops_that_still_validate():
    comm = SingleProcess()
    grads = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    assert comm.allreduce_mean_(grads, weight=5) is grads
    assert_array_equal(grads[0], np.arange(6).reshape(2, 3))
    assert comm.allreduce_scalar(3) == 3 and comm.allreduce_scalar(2.5, "max") == 2.5
    with pytest.raises(TypeError, match="expected float32 arrays, got float64 at position 0"):
        comm.allreduce_mean_([np.zeros(3)])
    with pytest.raises(TypeError, match="on one device"):
        comm.allreduce_mean_([np.zeros(3, np.float32), standin_backend().asarray(np.zeros(3, np.float32))])
    with pytest.raises(ValueError, match="non-empty list"):
        comm.bcast_([])
    with pytest.raises(ValueError, match=r"expected root in \[0, 1\), got 1"):
        comm.bcast_(grads, root=1)
    with pytest.raises(ValueError, match="weight >= 0"):
        comm.allreduce_mean_(grads, weight=-1)
    with pytest.raises(ValueError, match="expected op in"):
        comm.allreduce_scalar(1, "mean")
    with pytest.raises(SystemExit):
        comm.abort(2)


def test_allreduce_metrics_keeps_keys_shapes_and_integer_types():
    confusion = np.eye(3, dtype=np.int64)
    out = allreduce_metrics(SingleProcess(), {"loss_sum": 1.5, "correct": 7, "confusion": confusion})
    assert out["loss_sum"] == 1.5 and isinstance(out["loss_sum"], float)
    assert out["correct"] == 7 and isinstance(out["correct"], int)
    assert out["confusion"].dtype == np.int64 and out["confusion"].shape == (3, 3)
    assert_array_equal(out["confusion"], confusion)


def test_main_process_log_prints_on_rank_zero_only():
    lines = []

    class Rank1(SingleProcess):
        rank, size = 1, 2

    main_process_log(SingleProcess(), lines.append)("from rank 0")
    main_process_log(Rank1(), lines.append)("from rank 1")
    assert lines == ["from rank 0"]


def test_model_arrays_and_gradient_bytes():
    model = build_model("simple", (1, 8, 8), 10, np.random.default_rng(0))
    grads = gradients_of(model)  # before any backward: zeros, stored in the layers
    assert [g.shape for g in grads] == [p.shape for p in parameters_of(model)]
    assert all(g.dtype == np.float32 and not g.any() for g in grads)
    assert gradients_of(model)[0] is grads[0]
    assert state_of(model) == []
    running_mean = np.zeros(32, dtype=np.float32)  # what a BatchNorm layer would keep
    model.layers[0].state["running_mean"] = running_mean
    assert state_of(model) == [running_mean] and len(parameters_of(model)) == 4
    assert gradient_bytes(model) == 4 * model.num_params == 4 * (32 * 25 + 32 + 128 * 10 + 10)


def test_ring_allreduce_cost_model():
    assert ring_allreduce_seconds(1e9, 1, 1e10) == 0
    assert ring_allreduce_seconds(1e9, 4, 1e10) == pytest.approx(0.15)  # 2 * 3/4 * 0.1 s
    assert ring_allreduce_seconds(1e9, 2, 1e10, latency=1e-3) == pytest.approx(0.1 + 2e-3)
    with pytest.raises(ValueError, match="bandwidth > 0"):
        ring_allreduce_seconds(1e9, 2, 0)


def test_time_allreduce_returns_seconds():
    seconds = time_allreduce(SingleProcess(), get_backend("cpu"), 1000, repeats=2, warmup=1)
    assert isinstance(seconds, float) and seconds >= 0


# -- Ctrl-C and randomness with several ranks (a one-rank stand-in for rank r of 2) ------------
class RankOfTwo(SingleProcess):
    """Rank ``rank`` of 2 whose collectives see only itself: enough for what is local."""

    size = 2

    def __init__(self, rank=0):
        self.rank = rank


def deliver_sigint():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs on the main thread at the next bytecode


def test_stop_signal_defers_the_first_ctrl_c_with_several_ranks_only():
    before = signal.getsignal(signal.SIGINT)
    with StopSignal(SingleProcess()) as stop:  # one process: Ctrl-C raises where it lands
        assert signal.getsignal(signal.SIGINT) is before and stop.requested() is False
        with pytest.raises(KeyboardInterrupt):
            deliver_sigint()
    with StopSignal(RankOfTwo()) as stop:
        assert stop.requested() is False
        deliver_sigint()  # the first: a flag, taken after the step
        assert stop.flagged and stop.requested() is True
        with pytest.raises(KeyboardInterrupt):
            deliver_sigint()  # the second: at once
    assert signal.getsignal(signal.SIGINT) is before


def test_step_generator_keeps_the_shared_generator_in_lockstep():
    rng = np.random.default_rng(3)
    assert step_generator(rng, SingleProcess()) is rng  # one process: as without distribution
    shared = [np.random.default_rng(3) for _ in range(2)]  # rank 0's and rank 1's copy
    firsts = [step_generator(shared[r], RankOfTwo(r)).random(4) for r in (0, 1)]
    twin = np.random.default_rng(3)
    twin.integers(2**63 - 1)  # one draw, whatever the rank draws afterwards
    assert shared[0].bit_generator.state == shared[1].bit_generator.state == twin.bit_generator.state
    assert not np.array_equal(firsts[0], firsts[1])  # the ranks draw independently
    again = np.random.default_rng(3)
    assert_array_equal(step_generator(again, RankOfTwo(0)).random(4), firsts[0])  # reproducible


def test_one_process_exit_statuses_are_its_own():
    assert SingleProcess().exit_statuses(3, timeout=0) == (3, 3)
