"""Optimizers: SGD (+ momentum) and Adam. State is kept per parameter under the
model's stable parameter keys ("0.weight", ...), never keyed by id()."""
from __future__ import annotations

import numpy as np

from .backend import array_module, to_host


class Optimizer:
    """Updates ``model``'s parameters in place from their ``grads``."""

    def __init__(self, model, lr):
        if not hasattr(model, "named_parameters"):
            raise TypeError(f"{type(self).__name__} expected a gpucnn Sequential, got {type(model).__name__}")
        if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
            raise ValueError(f"{type(self).__name__} expected lr > 0, got {lr!r}")
        self.model = model
        self.lr = float(lr)
        self.state: dict[str, dict] = {}  # parameter key -> {"buffer name": device array}
        self.steps = 0

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        self.steps += 1
        for key, layer, name in self.model.named_parameters():
            grad = layer.grads.get(name)
            if grad is None:
                raise RuntimeError(
                    f"{type(self).__name__}.step(): parameter {key} of {layer!r} has no gradient; "
                    "run model.backward(...) before step()"
                )
            self._update(key, layer.params[name], grad)

    def _update(self, key, param, grad):
        raise NotImplementedError

    def _buffer(self, key, name, like):
        """The named state buffer of one parameter, created as zeros on first use."""
        per_param = self.state.setdefault(key, {})
        if name not in per_param:
            per_param[name] = array_module(like).zeros_like(like)  # on like's device, in its dtype
        return per_param[name]

    def state_dict(self) -> dict:
        """Host copy of all state: {"type", "lr", "steps", "state": {key: {name: ndarray}}}."""
        return {
            "type": type(self).__name__,
            "hyper": self.hyperparameters(),
            "steps": self.steps,
            "state": {k: {n: to_host(v).copy() for n, v in bufs.items()} for k, bufs in self.state.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output, placing buffers on the model's device."""
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"optimizer state was saved from {state.get('type')!r}, cannot load it into "
                f"{type(self).__name__}; resume with the same --optimizer"
            )
        keys = {key for key, _, _ in self.model.named_parameters()}
        unknown = set(state["state"]) - keys
        if unknown:
            raise ValueError(f"optimizer state has parameters {sorted(unknown)} the model does not have")
        self.steps = int(state["steps"])
        asarray = self.model.backend.asarray
        self.state = {k: {n: asarray(np.asarray(v)) for n, v in bufs.items()} for k, bufs in state["state"].items()}

    def hyperparameters(self) -> dict:
        return {"lr": self.lr}


class SGD(Optimizer):
    """w -= lr * g (seed 000); with momentum (PyTorch's form): v = momentum*v + g; w -= lr*v."""

    def __init__(self, model, lr, momentum=0.0):
        super().__init__(model, lr)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"SGD expected 0 <= momentum < 1, got {momentum!r}")
        self.momentum = float(momentum)

    def _update(self, key, param, grad):
        lr = param.dtype.type(self.lr)
        if self.momentum == 0.0:
            param -= lr * grad
            return
        velocity = self._buffer(key, "velocity", param)
        velocity *= param.dtype.type(self.momentum)
        velocity += grad
        param -= lr * velocity

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam (no weight decay)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(model, lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"Adam expected betas in [0, 1), got {betas!r}")
        self.eps = float(eps)

    def _update(self, key, param, grad):
        t = param.dtype.type
        m = self._buffer(key, "m", param)
        v = self._buffer(key, "v", param)
        m *= t(self.beta1)
        m += t(1.0 - self.beta1) * grad
        v *= t(self.beta2)
        v += t(1.0 - self.beta2) * (grad * grad)
        step_size = self.lr / (1.0 - self.beta1 ** self.steps)
        denom_scale = 1.0 / np.sqrt(1.0 - self.beta2 ** self.steps)
        # param -= lr_t * m / (sqrt(v) / sqrt(1 - beta2^t) + eps), as torch computes it
        param -= t(step_size) * m / (v ** t(0.5) * t(denom_scale) + t(self.eps))

    def hyperparameters(self):
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps}
