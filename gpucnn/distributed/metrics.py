"""What rank 0 reports: metrics summed over ranks in one collective, and a log that only
rank 0 prints."""
from __future__ import annotations

import numpy as np

from ..backends.backend import to_host
from .communicator import Communicator


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
