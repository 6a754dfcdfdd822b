"""Randomness per rank: per-sample draws from a generator of each rank's own per step
(:func:`step_generator`), while the generator that draws the permutation stays in lockstep
on every rank (:func:`check_lockstep` checks it)."""
from __future__ import annotations

import json
import zlib

import numpy as np

from .communicator import Communicator


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
