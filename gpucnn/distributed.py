"""Data-parallel training across processes, GPUs and machines, on MPI and NCCL.

Launch the same script N times; every process (a *rank*) trains its own copy of the model:

    mpiexec -n 4 python -m mpi4py scripts/train.py --distributed ...

(``-m mpi4py`` makes an exception in one rank abort the whole job instead of hanging it.)
On the CPU, gradients travel over MPI (mpi4py); on GPUs, rank r uses GPU
``local_rank % device_count`` and gradients travel over NCCL (CuPy's binding). One process,
or no ``--distributed``, uses :class:`SingleProcess`: every collective is a no-op and mpi4py
is never imported.

Semantics (those of PyTorch DDP, Horovod and ChainerMN, stated in global batches):

* **Global batch.** The batch size is the *global* batch B. Every step the N ranks each take
  B/N samples of the same B, compute the mean gradient of their shard, and
  ``allreduce_mean_`` replaces every rank's gradients by the shard-size-weighted mean over
  ranks: the gradient of the mean loss over the B samples. Every rank then applies the same
  optimizer step to the same weights, so the weights stay identical without being sent
  again, and N ranks compute the update one process computes on the same global batch, up to
  float32 summation order. B must be divisible by N.
* **Sharding.** Every rank draws the same permutation per epoch from the same seeded host
  generator (one ``rng.permutation`` per epoch, exactly as a single process does), walks it
  in global batches and takes its contiguous slice of each (:class:`ShardedSampler`).
  The last global batch of an epoch may be short (m < B samples). It is split as evenly as
  possible over as many ranks as can each take two samples or more (all N when m >= 2N;
  the others get empty shards), since BatchNorm cannot normalise a single sample, and every
  rank passes its shard size as ``weight``: the update is still the mean over the m samples.
  No sample is dropped or duplicated. A rank with an empty shard skips forward and backward
  and still calls ``allreduce_mean_(grads, weight=0)``.
* **Evaluation** is split the same way (:func:`shard_range`); per-rank sums (loss sum,
  correct count, sample count, confusion matrix) are added with :func:`allreduce_metrics`.
* **BatchNorm statistics stay per rank**, as in PyTorch DDP without SyncBatchNorm: each rank
  normalises with its own shard's batch statistics and updates its own running statistics.
  Before evaluating or saving, the loop broadcasts rank 0's (``bcast_(state_of(model))``,
  as DDP's ``broadcast_buffers``): every rank evaluates the model that is saved.
* **Checkpoints do not depend on the number of ranks.** Weights and optimizer state are the
  same on every rank, rank 0 writes them, and the host generator advances one permutation per
  epoch whatever N is: a run saved by 4 ranks resumes on 1 or 8 with the same global batch.
* **Only rank 0 prints or writes files**: ``comm.is_main`` and :func:`main_process_log`.
* **Randomness drawn per sample** (augmentation, dropout masks) must not come from the
  generator that draws the permutation: a rank with an empty shard, or with a shard of
  another size, would draw a different amount from it, and the ranks' next permutations
  (and rank 0's saved generator state) would part. :func:`step_generator` gives each step
  one generator per rank, seeded by one draw from the shared generator that every rank
  makes (empty shard or not): the shared generator stays in lockstep, the ranks' draws
  are independent (as PyTorch DDP users seed each rank differently), and one process
  keeps drawing from the shared generator itself, exactly as without this module.
* **Ending together.** A rank that stops on its own leaves the others waiting in a
  collective forever. Ctrl-C is taken at the same step on every rank (:class:`StopSignal`);
  scripts/train.py ends every rank with :meth:`Communicator.exit_statuses` on a
  communicator that nothing else uses, and aborts the job when a rank does not arrive.
"""
from __future__ import annotations

import json
import signal
import threading
import time
import warnings
import zlib

import numpy as np

from .backend import array_module, to_host
from .data import batch_slices
from .parallel import available_cpus, ranks_sharing_cpus, share_cpus_with
from .random import default_generator

__all__ = [
    "Communicator", "SingleProcess", "MPICommunicator", "NCCLCommunicator", "get_communicator",
    "ShardedSampler", "shard_range", "short_batch_ranks", "allreduce_metrics", "main_process_log", "gradients_of",
    "parameters_of", "state_of", "step_generator", "check_lockstep", "StopSignal", "gradient_bytes",
    "ring_allreduce_seconds", "time_allreduce",
]

MPI_MISSING = "--distributed needs mpi4py: pip install 'gpucnn[mpi]'"
REDUCE_OPS = ("sum", "max", "min")


# -- the communicators ---------------------------------------------------------------------
class Communicator:
    """What a training loop needs from its peers. This base class is one process alone.

    ``allreduce_mean_(arrays, weight=None)``: every array becomes the mean over ranks, in
    place, in one collective; with ``weight`` (this rank's shard size, 0 for an empty shard,
    given on every rank or on none) the weighted mean sum(w * a) / sum(w), the total weight
    travelling in the same buffer.
    ``bcast_(arrays, root=0)``: every array becomes root's, in place, in one collective.
    ``allreduce_scalar(value, op)`` / ``allreduce_host(values, op)``: host numbers, op in
    "sum", "max", "min". ``barrier()``, ``abort(code)``; ``exit_statuses(code, timeout)`` and
    ``finalize()`` to end a job together.
    """

    name = "single"
    rank, size, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one rank that prints and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        return ("1 process (for N processes launch with: mpiexec -n N python -m mpi4py "
                "scripts/train.py --distributed ...)")

    def allreduce_mean_(self, arrays, weight=None):
        """float32 arrays on one device -> the same arrays holding the (weighted) mean over ranks."""
        _checked(arrays, "allreduce_mean_")
        _check_weight(weight)
        return arrays

    def bcast_(self, arrays, root=0):
        """float32 arrays on one device -> the same arrays holding rank ``root``'s values."""
        _checked(arrays, "bcast_")
        self._check_root(root)
        return arrays

    def allreduce_host(self, values, op="sum") -> np.ndarray:
        """Host numbers (any shape) -> float64 array reduced elementwise over ranks."""
        _check_op(op)
        return np.array(values, dtype=np.float64)

    def allreduce_scalar(self, value, op="sum"):
        """A host int or float -> its reduction over ranks (an int stays an int)."""
        result = self.allreduce_host([value], op)[0]
        return int(result) if isinstance(value, (int, np.integer)) else float(result)

    def barrier(self) -> None:
        """Wait for every rank (host side only: device work is not synchronised)."""

    def abort(self, code: int = 1) -> None:
        """End every rank of the job with exit status ``code``."""
        raise SystemExit(code)

    def exit_statuses(self, code: int, timeout: float | None = None):
        """Every rank calls this once, at its end, with its exit status: -> (the highest
        status, rank 0's status), or None when some rank did not arrive within ``timeout``
        seconds (None: wait as long as it takes). A rank that does not arrive is waiting in
        a collective that a failed rank left: the caller should abort. Call it on a
        communicator that nothing else uses, so that it never meets such a collective."""
        return int(code), int(code)

    def finalize(self) -> None:
        """End this process's MPI cleanly (after exit_statuses, on every rank), so that a
        non-zero exit under ``python -m mpi4py`` is not turned into an MPI_Abort."""

    def _check_root(self, root):
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < self.size:
            raise ValueError(f"bcast_ expected root in [0, {self.size}), got {root!r}")


class SingleProcess(Communicator):
    """One process alone (plain ``python``, or ``mpiexec -n 1``): every collective is a no-op."""


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


def _checked(arrays, caller, device_only=False):
    """-> (list of arrays, their array module); float32, one device, non-empty."""
    if not isinstance(arrays, (list, tuple)) or not arrays:
        raise ValueError(f"{caller} expected a non-empty list of arrays, got {arrays!r:.80}")
    for i, a in enumerate(arrays):
        dtype = getattr(a, "dtype", None)
        if dtype != np.float32:
            raise TypeError(f"{caller} expected float32 arrays, got {dtype or type(a).__name__} at position {i}; "
                            "cast once with a.astype(numpy.float32)")
    xp = array_module(arrays[0])
    if any(array_module(a) is not xp for a in arrays):
        raise TypeError(f"{caller} expected arrays on one device, got a mix of host and device arrays; "
                        "move the model with model.to(backend) first")
    if device_only and xp is np:
        raise TypeError(f"{caller} over NCCL expected GPU arrays, got numpy arrays; "
                        "move the model with model.to(backend) first")
    return list(arrays), xp


def _check_weight(weight):
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float, np.number))
                               or not weight >= 0):
        raise ValueError(f"allreduce_mean_ expected weight >= 0 (this rank's shard size) or None, got {weight!r}")


def _check_op(op):
    if op not in REDUCE_OPS:
        raise ValueError(f"expected op in {REDUCE_OPS}, got {op!r}")


# -- what each rank trains and evaluates on ------------------------------------------------
def shard_range(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``range(n)`` split into ``size`` parts as evenly as
    possible: the first ``n % size`` parts hold one more item (as numpy.array_split)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def short_batch_ranks(m: int, size: int) -> int:
    """How many of ``size`` ranks share a short global batch of ``m`` samples: all of them when
    each gets two or more, else as many as can (a shard of one sample would stop BatchNorm,
    which one process training on the m samples does not meet), at least one."""
    return max(1, min(size, m // 2))


class ShardedSampler:
    """Which samples rank ``rank`` of ``size`` trains on, global batch by global batch.

        sampler = ShardedSampler(len(y), 64, comm.rank, comm.size, rng)
        indices, shards = sampler.epoch()  # host int64 (n_rank,), one slice per global batch
        for shard in shards:
            batch = indices[shard]         # this rank's part of the global batch (maybe empty)

    ``epoch()`` draws ONE permutation from ``rng`` (same seed, same draw on every rank; with
    ``size=1`` the very order a single process uses), cuts it into global batches of
    ``global_batch_size`` and keeps this rank's contiguous slice of each (:func:`shard_range`:
    full batches split exactly, the last short one as evenly as possible over
    :func:`short_batch_ranks` ranks).
    """

    def __init__(self, num_samples: int, global_batch_size: int, rank: int = 0, size: int = 1, rng=None):
        for name, value in (("num_samples", num_samples), ("global_batch_size", global_batch_size),
                            ("size", size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ShardedSampler expected {name} to be a positive int, got {value!r}")
        if not 0 <= rank < size:
            raise ValueError(f"ShardedSampler expected rank in [0, {size}), got {rank!r}")
        if global_batch_size % size:
            raise ValueError(
                f"the global batch size {global_batch_size} is not divisible by the {size} processes; "
                f"choose a batch size that is a multiple of {size}, e.g. {(global_batch_size // size + 1) * size}")
        self.num_samples, self.global_batch_size = int(num_samples), int(global_batch_size)
        self.rank, self.size = int(rank), int(size)
        self.rng = default_generator() if rng is None else rng

    def __len__(self) -> int:
        """Global batches (optimizer steps) per epoch."""
        return len(batch_slices(self.num_samples, self.global_batch_size))

    def epoch(self):
        """-> (indices, shards): this rank's sample indices (host int64) in visiting order, and
        one slice into them per global batch; draws this epoch's permutation from ``rng``."""
        order = self.rng.permutation(self.num_samples)  # (N,) the same on every rank
        pieces, shards, offset = [], [], 0
        for batch in batch_slices(self.num_samples, self.global_batch_size):
            m = batch.stop - batch.start
            ranks = self.size if m == self.global_batch_size else short_batch_ranks(m, self.size)
            mine = shard_range(m, self.rank, ranks) if self.rank < ranks else slice(0, 0)
            piece = order[batch][mine]
            pieces.append(piece)
            shards.append(slice(offset, offset + len(piece)))
            offset += len(piece)
        return np.concatenate(pieces).astype(np.int64), shards


# -- metrics, logging, the model's arrays ---------------------------------------------------
def allreduce_metrics(comm: Communicator, metrics: dict) -> dict:
    """Per-rank sums -> sums over all ranks, in one collective. Values are host numbers or
    arrays, e.g. {"loss_sum": 12.5, "correct": 80, "count": 100, "confusion": (10, 10) ints};
    integer values come back as integers, scalars as Python numbers."""
    host = {k: np.asarray(to_host(v)) for k, v in metrics.items()}
    if not host:
        return {}
    flat = np.concatenate([v.astype(np.float64).ravel() for v in host.values()])  # (total,)
    summed = comm.allreduce_host(flat, "sum")
    out, offset = {}, 0
    for key, value in host.items():
        piece = summed[offset:offset + value.size].reshape(value.shape)  # (value.shape)
        offset += value.size
        if value.dtype.kind in "iub":
            piece = np.rint(piece).astype(np.int64)
        out[key] = piece.item() if piece.ndim == 0 else piece
    return out


def main_process_log(comm: Communicator, log=print):
    """``log`` on rank 0, a no-op elsewhere: every rank calls it, one line appears."""
    return log if comm.is_main else (lambda *args, **kwargs: None)


def gradients_of(model) -> list:
    """The model's gradient arrays in parameter order (zeros for a parameter that has none
    yet, e.g. on a rank whose first shard was empty): what ``allreduce_mean_`` takes."""
    grads = []
    for _, layer, name in model.named_parameters():
        if layer.grads.get(name) is None:
            param = layer.params[name]
            layer.grads[name] = array_module(param).zeros_like(param)
        grads.append(layer.grads[name])
    return grads


def parameters_of(model) -> list:
    """The model's parameters in a fixed order: ``bcast_`` them to start from rank 0's weights."""
    return [layer.params[name] for _, layer, name in model.named_parameters()]


def state_of(model) -> list:
    """The model's saved-but-not-trained arrays (BatchNorm running statistics) in a fixed
    order, possibly none: ``bcast_`` them before evaluating or saving, so that every rank
    holds rank 0's, as PyTorch DDP's ``broadcast_buffers`` does."""
    return [layer.state[name] for _, layer, name in model.named_state()]


# -- randomness per rank, Ctrl-C on every rank ----------------------------------------------
def step_generator(rng: np.random.Generator, comm: Communicator) -> np.random.Generator:
    """The generator this rank's per-sample draws (augmentation, dropout masks) use for one
    step. One process: ``rng`` itself, as without distribution. N ranks: a fresh generator
    seeded by one draw from ``rng`` (the same draw on every rank, whatever its shard, so
    ``rng`` stays in lockstep) and the rank (so the ranks' draws are independent).
    Call it once per step on every rank, an empty shard included."""
    if comm.size == 1:
        return rng
    return np.random.default_rng([int(rng.integers(2**63 - 1)), comm.rank])


def check_lockstep(rng: np.random.Generator, comm: Communicator, when: str = "") -> None:
    """Collective: RuntimeError on every rank unless ``rng`` (the generator that draws the
    permutation) is in the same state on every rank. A rank that drew from it more or less
    than the others (per-sample randomness not taken from :func:`step_generator`) would
    train on another permutation from then on, silently."""
    if comm.size == 1:
        return
    digest = zlib.crc32(json.dumps(rng.bit_generator.state, sort_keys=True).encode())
    highest, lowest = comm.allreduce_host([digest, -digest], "max")
    if highest != -lowest:
        raise RuntimeError(
            f"the ranks' data generators have parted{when}: some code drew from the generator that "
            "shuffles a different number of times on different ranks, so they would now train on "
            "different permutations; draw per-sample randomness (dropout masks, augmentation) from "
            "gpucnn.distributed.step_generator(rng, comm)")


class StopSignal:
    """Ctrl-C in a data-parallel loop, taken at the same step on every rank.

        with StopSignal(comm) as stop:
            for step ...:
                ...
                if stop.requested():   # every rank, after every step: a collective
                    raise KeyboardInterrupt

    mpiexec passes Ctrl-C to every rank, but a rank that raised KeyboardInterrupt at once
    would leave the others waiting in the next collective forever (a rank blocked inside
    one never sees the signal). With several ranks, on the main thread, the first SIGINT
    only sets a flag; ``requested()`` is True on every rank as soon as one rank has it.
    A second SIGINT raises at once. One process: nothing is deferred and ``requested()``
    is False without a collective: Ctrl-C raises where it lands, as always.
    """

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.flagged = False
        self._installed, self._previous = False, None

    def __enter__(self) -> "StopSignal":
        if self.comm.size > 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:  # None: a handler not set from Python; Python's default then
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.default_int_handler)
            self._installed = False

    def _handle(self, signum, frame):
        if self.flagged:
            raise KeyboardInterrupt  # the second Ctrl-C: at once
        self.flagged = True

    def requested(self) -> bool:
        """Collective with several ranks: True on every rank when any rank got Ctrl-C."""
        if self.comm.size == 1:
            return False
        return self.comm.allreduce_scalar(int(self.flagged), "max") > 0


# -- cost of the gradient exchange (for scripts/benchmark.py) --------------------------------
def gradient_bytes(model) -> int:
    """Bytes of float32 gradients one step exchanges: 4 per parameter."""
    return 4 * sum(int(layer.params[name].size) for _, layer, name in model.named_parameters())


def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float = 0.0) -> float:
    """Ring allreduce cost model: each rank sends and receives 2(N-1)/N of the buffer,
    in 2(N-1) messages: 2(N-1)/N * bytes / bandwidth (bytes/s) + 2(N-1) * latency (s)."""
    if ranks < 1 or bandwidth <= 0:
        raise ValueError(f"expected ranks >= 1 and bandwidth > 0, got ranks={ranks!r}, bandwidth={bandwidth!r}")
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def time_allreduce(comm: Communicator, backend, num_values: int, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one ``allreduce_mean_`` of ``num_values`` float32 on ``backend``,
    the slowest rank's (every rank must call it: it is collective)."""
    arrays = [backend.xp.ones(int(num_values), dtype=np.float32)]
    for _ in range(warmup):
        comm.allreduce_mean_(arrays)
    times = []
    for _ in range(repeats):
        comm.barrier()
        backend.synchronize()
        start = time.perf_counter()
        comm.allreduce_mean_(arrays)
        backend.synchronize()
        times.append(time.perf_counter() - start)
    return comm.allreduce_scalar(float(np.median(times)), "max")
