"""One layer's forward + backward, gpucnn against its PyTorch CPU equivalent (benchmark.py --layers).

Each case runs the layer in training mode on an activation of the shape it meets in the zoo's
networks (lenet-bn's first BatchNorm, and cifar-small's first stage at two image sizes), forward
then backward with a fixed upstream gradient. gpucnn's layer gets x and dy in the batch-innermost
layout that Conv2D hands on and the layers after it hand back; torch's gets contiguous tensors.
Repeats are interleaved and the median kept, as in the network benchmark.
"""
from __future__ import annotations

import numpy as np

from gpucnn.nn.layers import BatchNorm2D, Dropout

# name -> (gpucnn layer factory, torch module factory, activation shape (N, C, H, W))
CASES = {
    "BatchNorm2D 32ch 14x14": (lambda: BatchNorm2D(32), lambda nn: nn.BatchNorm2d(32), (128, 32, 14, 14)),
    "BatchNorm2D 64ch 16x16": (lambda: BatchNorm2D(64), lambda nn: nn.BatchNorm2d(64), (64, 64, 16, 16)),
    "BatchNorm2D 64ch 32x32": (lambda: BatchNorm2D(64), lambda nn: nn.BatchNorm2d(64), (64, 64, 32, 32)),
    "Dropout 0.25 (N, 3136)": (lambda: Dropout(0.25, rng=np.random.default_rng(0)),
                               lambda nn: nn.Dropout(0.25), (128, 3136)),
}


class _Gpucnn:
    def __init__(self, make, shape):
        data = np.random.default_rng(1)
        x = data.standard_normal(shape).astype(np.float32)
        dy = data.standard_normal(shape).astype(np.float32)
        if len(shape) == 4:  # the layout Conv2D hands on: (C, H, W, N) memory behind an NCHW view;
            # dy comes back in it too (the next layer writes its dx like its input, this output)
            x, dy = (np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2) for a in (x, dy))
        self.layer, self.x, self.dy = make(), x, dy

    def train_steps(self, n):
        for _ in range(n):
            self.layer.forward(self.x)
            self.layer.backward(self.dy)


class _Torch:
    def __init__(self, make, shape, torch):
        data = np.random.default_rng(1)
        self.layer = make(torch.nn).train()
        self.x = torch.from_numpy(data.standard_normal(shape).astype(np.float32)).requires_grad_()
        self.dy = torch.from_numpy(data.standard_normal(shape).astype(np.float32))

    def train_steps(self, n):
        for _ in range(n):
            self.x.grad = None
            self.layer(self.x).backward(self.dy)


def layer_table(torch, measure, steps: int, warmup: int, repeats: int, clock) -> list[dict]:
    """Rows: layer case, gpucnn and torch forward+backward per second, their ratio."""
    rows = []
    for name, (make_ours, make_theirs, shape) in CASES.items():
        cases = {"gpucnn": _Gpucnn(make_ours, shape), "torch": _Torch(make_theirs, shape, torch)}
        per_s = measure(cases, "train", 1, steps, warmup, repeats, clock)
        rows.append({"layer": name, "shape": list(shape), "gpucnn_per_s": per_s["gpucnn"],
                     "torch_per_s": per_s["torch"], "ratio": per_s["gpucnn"] / per_s["torch"]})
        print(f"{name:<24} {str(shape):<18} gpucnn {1e3 / per_s['gpucnn']:7.2f} ms   "
              f"torch {1e3 / per_s['torch']:7.2f} ms   ratio {rows[-1]['ratio']:.2f}", flush=True)
    return rows
