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

from gpucnn.backend import get_backend
from gpucnn.data import load_digits
from gpucnn.distributed import get_communicator, parameters_of, state_of
from gpucnn.optim import Adam
from gpucnn.train import fit
from gpucnn.zoo import build_model

backend = get_backend("cpu")
comm = get_communicator(backend)
data = load_digits()
x, y = data.train_x[:300], data.train_y[:300]
# dropout masks from a generator of this rank's own; the shuffling generator is shared
model = build_model("lenet-bn", data.input_shape, 10, np.random.default_rng(0),
                    dropout_rng=np.random.default_rng([5, comm.rank])).to(backend)
comm.bcast_(parameters_of(model) + state_of(model))
# no validation: on this branch fit validates in training mode, where BatchNorm would update
# its running statistics from each rank's validation shard again
history = fit(model, Adam(model, 1e-3), (x, y), None, epochs=2, batch_size=32,
              rng=np.random.default_rng(1), verbose=0, comm=comm)

for name, arrays in (("weights", parameters_of(model)), ("BatchNorm statistics", state_of(model))):
    assert arrays, name
    for a in arrays:  # equal on every rank: the largest value of each entry is everyone's
        highest = comm.allreduce_host(a, "max")
        assert_array_equal(highest, a, err_msg=f"rank {comm.rank}: {name} differ between ranks")
record = np.array([[h["train_loss"], h["train_acc"]] for h in history])  # (2, 2)
assert_array_equal(comm.allreduce_host(record, "max"), record)
# Dropout drawing from the shuffling generator itself: the last global batch of 291 images
# (3 images, all on rank 0) leaves rank 1 an empty shard, no forward pass, fewer draws: found,
# on every rank
shared = np.random.default_rng(1)
model = build_model("lenet-bn", data.input_shape, 10, np.random.default_rng(0), dropout_rng=shared).to(backend)
try:
    fit(model, Adam(model, 1e-3), (x[:291], y[:291]), None, epochs=1, batch_size=32, rng=shared, verbose=0,
        comm=comm)
except RuntimeError as exc:
    assert "data generators have parted in epoch 1" in str(exc), exc
else:
    raise AssertionError("Dropout drawing from the shuffling generator went unnoticed")
sys.stdout.write(f"rank {comm.rank}: fit ok\n")
sys.stdout.flush()
