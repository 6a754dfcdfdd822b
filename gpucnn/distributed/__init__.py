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

The package, one idea per module (imports flow top to bottom):

    communicator.py   Communicator (the interface) and SingleProcess; argument checks
    mpi.py            MPICommunicator: gradients through host memory over mpi4py
    nccl.py           NCCLCommunicator: device buffers over NCCL (CuPy's binding)
    launch.py         get_communicator: single process, NCCL or MPI; this rank's GPU and CPUs
    sharding.py       shard_range, short_batch_ranks, ShardedSampler
    metrics.py        allreduce_metrics, main_process_log
    model_arrays.py   gradients_of, parameters_of, state_of
    randomness.py     step_generator, check_lockstep
    stop_signal.py    StopSignal
    exchange_cost.py  gradient_bytes, ring_allreduce_seconds, time_allreduce (scripts/benchmark.py)
"""
from __future__ import annotations

from .communicator import REDUCE_OPS, Communicator, SingleProcess  # noqa: F401  (REDUCE_OPS: as before)
from .exchange_cost import gradient_bytes, ring_allreduce_seconds, time_allreduce
from .launch import get_communicator
from .metrics import allreduce_metrics, main_process_log
from .model_arrays import gradients_of, parameters_of, state_of
from .mpi import MPI_MISSING, MPICommunicator, _mpi_module  # noqa: F401  (MPI_MISSING: scripts/train.py)
from .nccl import NCCLCommunicator, _CupyNCCL  # noqa: F401  (_CupyNCCL: tests/test_distributed.py)
from .randomness import check_lockstep, step_generator
from .sharding import ShardedSampler, shard_range, short_batch_ranks
from .stop_signal import StopSignal

__all__ = [
    "Communicator", "SingleProcess", "MPICommunicator", "NCCLCommunicator", "get_communicator",
    "ShardedSampler", "shard_range", "short_batch_ranks", "allreduce_metrics", "main_process_log", "gradients_of",
    "parameters_of", "state_of", "step_generator", "check_lockstep", "StopSignal", "gradient_bytes",
    "ring_allreduce_seconds", "time_allreduce",
]
