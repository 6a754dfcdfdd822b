"""The cost of the gradient exchange (for scripts/benchmark.py --ranks): gradient bytes per
step, the ring-allreduce cost model, and one allreduce timed on the ranks."""
from __future__ import annotations

import time

import numpy as np

from .communicator import Communicator


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
