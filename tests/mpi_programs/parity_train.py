"""A data-parallel training loop on the 8x8 digits with the ``simple`` net: the one the
tests run on N ranks (mpiexec -n N python -m mpi4py) and in one process, expecting the same
final weights.

argv: out_dir n_train global_batch epochs optimizer ("momentum" or "adam")
Every rank writes its final weights to out_dir/weights_rank{R}.npz.
"""
import os
import sys

import numpy as np

from gpucnn.backends.backend import get_backend
from gpucnn.data.batches import load_digits
from gpucnn.distributed import (ShardedSampler, SingleProcess, get_communicator, gradients_of,
                                parameters_of)
from gpucnn.nn.losses import SoftmaxCrossEntropy
from gpucnn.optim import SGD, Adam
from gpucnn.training.run import build_model


def train(comm, n_train, global_batch, epochs, optimizer, seed=0):
    """-> (final state_dict, optimizer steps). The same update on any number of ranks."""
    data = load_digits()
    x, y = data.train_x[:n_train], data.train_y[:n_train]
    model = build_model("simple", data.input_shape, data.num_classes, np.random.default_rng(seed))
    comm.bcast_(parameters_of(model))  # the same start everywhere (already true: same seed)
    opt = SGD(model, 0.05, momentum=0.9) if optimizer == "momentum" else Adam(model, 2e-3)
    sampler = ShardedSampler(len(y), global_batch, comm.rank, comm.size, np.random.default_rng([seed, 1]))
    loss_fn = SoftmaxCrossEntropy()
    for _ in range(epochs):
        indices, shards = sampler.epoch()
        for shard in shards:
            batch = indices[shard]
            if len(batch):  # the short last global batch may leave this rank nothing
                logits = model.forward(x[batch])
                loss_fn.forward(logits, y[batch])
                model.backward(loss_fn.backward(), need_input_grad=False)
            comm.allreduce_mean_(gradients_of(model), weight=len(batch))
            opt.step()
    return model.state_dict(), opt.steps


if __name__ == "__main__":
    out_dir, n_train, global_batch, epochs, optimizer = sys.argv[1:6]
    comm = get_communicator(get_backend("cpu"))
    if isinstance(comm, SingleProcess):
        raise SystemExit("parity_train.py expects to run on several ranks under mpiexec")
    state, steps = train(comm, int(n_train), int(global_batch), int(epochs), optimizer)
    np.savez(os.path.join(out_dir, f"weights_rank{comm.rank}.npz"), steps=steps, **state)
