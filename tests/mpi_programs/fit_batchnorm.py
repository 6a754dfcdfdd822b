"""Run under mpiexec -n 2 python -m mpi4py: fit(..., comm=comm) as a library call, on the zoo's
lenet-bn (BatchNorm and Dropout) with the 8x8 digits. Every rank checks that after training
the weights and the BatchNorm running statistics are the same on every rank (rank 0's
statistics, broadcast after each epoch), that the history is the same, and (fit's lockstep
check) that Dropout drawing from a generator of each rank's own leaves the shuffling generator
alone, while Dropout drawing from the shuffling generator itself is caught. Prints
"rank R: fit ok".
"""
import sys

import numpy as np
from numpy.testing import assert_array_equal

from gpucnn.backends.backend import get_backend, to_host
from gpucnn.data.batches import load_digits
from gpucnn.distributed import check_lockstep, get_communicator, parameters_of, state_of
from gpucnn.optim import Adam
from gpucnn.training.run import fit
from gpucnn.nn.zoo import build_model

backend = get_backend("cpu")
comm = get_communicator(backend)
data = load_digits()
x, y = data.train_x[:300], data.train_y[:300]
# dropout masks from a generator of this rank's own; the shuffling generator is shared
model = build_model("lenet-bn", data.input_shape, 10, np.random.default_rng(0),
                    dropout_rng=np.random.default_rng([5, comm.rank])).to(backend)
comm.bcast_(parameters_of(model) + state_of(model))
# no validation: this checks what training alone leaves on each rank (fit validates in eval
# mode, which leaves the running statistics alone)
history = fit(model, Adam(model, 1e-3), (x, y), None, epochs=2, batch_size=32,
              rng=np.random.default_rng(1), verbose=0, comm=comm)

for name, arrays in (("weights", parameters_of(model)), ("BatchNorm statistics", state_of(model))):
    assert arrays, name
    for a in arrays:  # equal on every rank: the largest value of each entry is everyone's
        highest = comm.allreduce_host(a, "max")
        assert_array_equal(highest, a, err_msg=f"rank {comm.rank}: {name} differ between ranks")
record = np.array([[h["train_loss"], h["train_acc"]] for h in history])  # (2, 2)
assert_array_equal(comm.allreduce_host(record, "max"), record)
# Dropout built on the shuffling generator itself: fit gives every Dropout layer a per-rank
# generator for each step (one draw from the shared one, on every rank), so even the last
# global batch of 291 images (3 images, all on rank 0, an empty shard on rank 1) keeps the
# ranks' shuffling generators in lockstep and the weights equal
shared = np.random.default_rng(1)
model = build_model("lenet-bn", data.input_shape, 10, np.random.default_rng(0), dropout_rng=shared).to(backend)
fit(model, Adam(model, 1e-3), (x[:291], y[:291]), None, epochs=1, batch_size=32, rng=shared, verbose=0,
    comm=comm)
for a in parameters_of(model):
    assert_array_equal(comm.allreduce_host(to_host(a), "max"), to_host(a), err_msg="weights differ")
# ... and a draw on one rank only is found, on every rank
if comm.rank == 0:
    shared.integers(10)
try:
    check_lockstep(shared, comm, " in the test")
except RuntimeError as exc:
    assert "data generators have parted in the test" in str(exc), exc
else:
    raise AssertionError("a rank drawing from the shuffling generator alone went unnoticed")
sys.stdout.write(f"rank {comm.rank}: fit ok\n")
sys.stdout.flush()
