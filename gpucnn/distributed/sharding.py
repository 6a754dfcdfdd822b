"""What each rank trains and evaluates on: its contiguous part of every global batch
(:class:`ShardedSampler`) and of the evaluation data (:func:`shard_range`)."""
from __future__ import annotations

import numpy as np

from ..data.batches import batch_slices
from ..random import default_generator


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
