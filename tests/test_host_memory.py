"""gpucnn.backends.host_memory: the CPU backend keeps a step's large buffers mapped (glibc only)."""
import os
import subprocess
import sys

import pytest

# Three lenet training steps at batch 128 after three warm-up steps; prints whether the
# allocator was tuned and the minor page faults per measured step.
PROBE = """
import resource, numpy as np
from gpucnn.backends import host_memory
from gpucnn.nn.losses import SoftmaxCrossEntropy
from gpucnn.optim import SGD
from gpucnn.nn.zoo import build_model
model = build_model("lenet", (1, 28, 28), 10, np.random.default_rng(0))
optimizer, loss = SGD(model, 0.01, momentum=0.9), SoftmaxCrossEntropy()
x = np.random.default_rng(1).random((128, 1, 28, 28), dtype=np.float32)
y = np.arange(128) % 10
def step():
    optimizer.zero_grad()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    optimizer.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(host_memory.tune_host_allocator(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                                reason="the allocator tuning applies to glibc (Linux) only")


def run_probe(tune: str):
    env = dict(os.environ, GPUCNN_TUNE_MALLOC=tune, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


@glibc_only
def test_training_steps_reuse_their_buffers_without_page_faults():
    tuned, faults = run_probe("1")
    assert tuned
    assert faults < 50  # the same heap blocks every step (measured: 0)


@glibc_only
def test_the_tuning_can_be_declined_and_then_steps_fault_pages_in_again():
    tuned, faults = run_probe("0")
    assert not tuned
    assert faults > 60  # glibc's defaults map some buffers anew every step (measured: 133 on one thread)
