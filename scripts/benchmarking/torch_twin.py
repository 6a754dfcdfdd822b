"""The PyTorch twin of a gpucnn network, for the benchmark's side-by-side timing.

:func:`torch_twin` writes the network layer by layer as a PyTorch user would (same
sizes, same padding, the layers in the order given: PyTorch has no ReLU/max-pool
swap), and :func:`check_same_network` compares the parameter counts. BatchNorm and
Dropout run in training mode in both, with the same eps, momentum and p.
:class:`TorchCase` runs the twin on the CPU or, beside a GPU row, on CUDA (its batch
uploaded once, every timed call ending in ``torch.cuda.synchronize()``).
"""
from __future__ import annotations

from gpucnn.nn.layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                              GlobalAvgPool2D, MaxPool2D, ReLU)


def _conv(nn, layer: Conv2D):
    top, bottom, left, right = layer.pads
    conv_args = dict(kernel_size=layer.kernel_size, stride=layer.stride)
    if top == bottom and left == right:
        return [nn.Conv2d(layer.in_channels, layer.out_channels, padding=(top, left), **conv_args)]
    # uneven padding ("same" with an even kernel): PyTorch needs an explicit pad layer
    return [nn.ZeroPad2d((left, right, top, bottom)),
            nn.Conv2d(layer.in_channels, layer.out_channels, **conv_args)]


def torch_twin(model, torch):
    """A torch.nn.Sequential computing what the gpucnn ``model`` computes."""
    nn = torch.nn
    to_torch = {
        Conv2D: lambda l: _conv(nn, l),
        ReLU: lambda l: [nn.ReLU()],
        MaxPool2D: lambda l: [nn.MaxPool2d(l.kernel_size, l.stride, l.padding)],
        AvgPool2D: lambda l: [nn.AvgPool2d(l.kernel_size, l.stride, l.padding)],
        Flatten: lambda l: [nn.Flatten()],
        Dense: lambda l: [nn.Linear(l.in_features, l.out_features)],
        BatchNorm2D: lambda l: [nn.BatchNorm2d(l.num_features, eps=l.eps, momentum=l.momentum)],
        BatchNorm1D: lambda l: [nn.BatchNorm1d(l.num_features, eps=l.eps, momentum=l.momentum)],
        Dropout: lambda l: [nn.Dropout(l.p)],
        GlobalAvgPool2D: lambda l: [nn.AdaptiveAvgPool2d(1), nn.Flatten()],
    }
    layers = []
    for layer in model.layers:
        if type(layer) not in to_torch:
            raise ValueError(f"no PyTorch twin for {layer!r}")
        layers += to_torch[type(layer)](layer)
    return nn.Sequential(*layers)


def copy_weights(model, twin, torch) -> None:
    """Give the twin the gpucnn model's parameters and running statistics (host copies)."""
    from gpucnn.backends.backend import to_host
    ours = [layer for layer in model.layers if layer.params or layer.state]
    theirs = [m for m in twin if any(True for _ in m.parameters()) or hasattr(m, "running_mean")]
    with torch.no_grad():
        for layer, module in zip(ours, theirs, strict=True):
            weight = to_host(layer.params["weight"])
            module.weight.copy_(torch.from_numpy(weight.T.copy() if isinstance(layer, Dense) else weight))
            module.bias.copy_(torch.from_numpy(to_host(layer.params["bias"])))
            for name in ("running_mean", "running_var"):
                if name in layer.state:
                    getattr(module, name).copy_(torch.from_numpy(to_host(layer.state[name])))


def check_same_network(model, twin) -> None:
    ours, theirs = model.num_params, sum(p.numel() for p in twin.parameters())
    if ours != theirs:
        raise RuntimeError(f"gpucnn has {ours} parameters, the PyTorch twin {theirs}")


class TorchCase:
    """The PyTorch twin training (cross-entropy, the same optimizer) and evaluating
    on the same batch as the gpucnn case, on ``device`` ("cpu" or "cuda"): the batch
    lives there before any step, and each call waits for the device's work to finish."""

    def __init__(self, model, torch, x, y, optimizer: str, lr: float, device: str = "cpu"):
        self.torch, self.device = torch, device
        self.model = torch_twin(model, torch).to(device)
        check_same_network(model, self.model)
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr, momentum=0.9)
        self.x, self.y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        self.synchronize()

    def synchronize(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def train_steps(self, steps):
        F = self.torch.nn.functional
        self.model.train()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(self.x), self.y).backward()
            self.optimizer.step()
        self.synchronize()

    def eval_steps(self, steps):
        self.model.eval()
        with self.torch.inference_mode():
            for _ in range(steps):
                self.model(self.x).argmax(dim=1)
        self.synchronize()
