"""The model's arrays that the ranks exchange, each in a fixed order: gradients (averaged),
parameters and saved state (broadcast from rank 0)."""
from __future__ import annotations

from ..backends.backend import array_module


def gradients_of(model) -> list:
    """The model's gradient arrays in parameter order (zeros for a parameter that has none
    yet, e.g. on a rank whose first shard was empty): what ``allreduce_mean_`` takes."""
    grads = []
    for _, layer, name in model.named_parameters():
        if layer.grads.get(name) is None:
            param = layer.params[name]
            layer.grads[name] = array_module(param).zeros_like(param)
        grads.append(layer.grads[name])
    return grads


def parameters_of(model) -> list:
    """The model's parameters in a fixed order: ``bcast_`` them to start from rank 0's weights."""
    return [layer.params[name] for _, layer, name in model.named_parameters()]


def state_of(model) -> list:
    """The model's saved-but-not-trained arrays (BatchNorm running statistics) in a fixed
    order, possibly none: ``bcast_`` them before evaluating or saving, so that every rank
    holds rank 0's, as PyTorch DDP's ``broadcast_buffers`` does."""
    return [layer.state[name] for _, layer, name in model.named_state()]
