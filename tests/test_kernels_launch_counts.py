"""Kernel launches per training step on the GPU path, counted by the CuPy stand-in: what one
batch of gpucnn.training.run.train_epoch queues (the gather, forward, loss, backward, optimizer),
with the default fused kernels and with none (issue 21's targets: simple <= 25, lenet <= 40).
On an H200 each launch costs 10-30 us of host time, which bounds small-batch speed.
Device: the CuPy stand-in."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.optim import SGD
from gpucnn.training.run import train_epoch
from gpucnn.nn.zoo import build_model
from standin import standin_backend

TARGETS = {"simple": 25, "lenet": 40}


def launches_per_step(arch: str, kernels, batch: int = 64) -> float:
    """Launches of one steady-state batch: an epoch of 6 batches minus one of 3, over 3
    (the per-epoch work, the shuffled order and the totals, cancels out)."""
    backend = standin_backend(kernels=kernels)
    model = build_model(arch, (1, 28, 28), 10, np.random.default_rng(0)).to(backend)
    optimizer = SGD(model, 0.01, momentum=0.9)
    data = np.random.default_rng(1)
    counts = {}
    for batches in (1, 3, 6):  # the first epoch makes the buffers and the optimizer's table
        x = backend.asarray(data.integers(0, 256, (batch * batches, 1, 28, 28)).astype(np.uint8))
        y = backend.asarray(data.integers(0, 10, batch * batches))
        before = backend.xp.work.launches
        train_epoch(model, optimizer, x, y, batch, np.random.default_rng(2))
        counts[batches] = backend.xp.work.launches - before
    return (counts[6] - counts[3]) / 3


@pytest.mark.parametrize("arch", list(TARGETS))
def test_a_training_step_makes_at_most_its_target_launches(arch):
    fused, generic = launches_per_step(arch, None), launches_per_step(arch, "none")
    assert fused == int(fused)  # every batch the same
    assert fused <= TARGETS[arch], (arch, fused)
    assert generic > 4 * fused, (arch, fused, generic)  # what the kernels saved


def test_the_counts_the_readme_gives():
    """README's and docs/gpu.md's figures: keep them in step with the code."""
    assert [launches_per_step(a, None) for a in ("simple", "lenet")] == [16, 33]
    assert [launches_per_step(a, "none") for a in ("simple", "lenet")] == [78, 154]
