"""Optimizers: SGD (+ momentum, Nesterov, weight decay), Adam and AdamW, as torch.optim
computes them. State is kept per parameter under the model's stable parameter keys
("0.weight", ...), never keyed by id(). The updates, side by side: docs/math.md, "Optimizers".

Every update runs in place on the parameter's device, once per batch: a few array
operations per parameter, scalars cast to the parameter's dtype (float32 stays float32),
no Python decisions on device values. With the "optimizer" kernel group active (GPU),
every parameter takes its step in ONE launch (gpucnn.backends.kernels.optim: multi-tensor, the same
float32 operations in the same order, so the same numbers bit for bit). ``lr`` is a plain
attribute: a learning-rate schedule (gpucnn.optim.schedules) sets it between steps.
"""
from __future__ import annotations

import math

import numpy as np

from ..backends import kernels
from ..backends.backend import array_module, to_host
from ..backends.kernels.optim import BiasCorrections, TensorTable, adam_update, sgd_update


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


class Optimizer:
    """Updates ``model``'s parameters in place from their ``grads``.

    Subclasses list their hyperparameters in ``HYPER`` and check them in ``_check``;
    ``state_dict()`` saves them with the buffers and ``load_state_dict()`` restores both,
    as torch.optim does, so a resumed run continues exactly.
    """

    HYPER: tuple[str, ...] = ("lr",)
    # whether a step's device work depends on nothing but the hyperparameters and the arrays,
    # so a CUDA graph may replay it (gpucnn.backends.cuda_graphs; torch.optim's ``capturable``)
    capturable = False

    def __init__(self, model, **hyper):
        if not hasattr(model, "named_parameters"):
            raise TypeError(f"{type(self).__name__} expected a gpucnn Sequential, got {type(model).__name__}")
        self.model = model
        self.state: dict[str, dict] = {}  # parameter key -> {"buffer name": device array}
        self.steps = 0
        self._table = TensorTable()  # the multi-tensor launch's device table (fused path only)
        self.graph_step = None  # gpucnn.backends.cuda_graphs' recorded training step with this optimizer, if any
        self._configure(hyper)

    # -- hyperparameters ---------------------------------------------------------------
    def _configure(self, hyper: dict) -> None:
        """Check and set hyperparameters (constructor and load_state_dict)."""
        self._check(hyper)
        for name in self.HYPER:
            setattr(self, name, hyper[name])

    def _check(self, hyper: dict) -> None:
        lr = hyper["lr"]
        if not (_is_number(lr) and lr > 0):
            raise ValueError(f"{type(self).__name__} expected lr > 0, got {lr!r}; try lr=1e-3 (Adam) or 0.01 (SGD)")
        hyper["lr"] = float(lr)
        if "weight_decay" in hyper:
            wd = hyper["weight_decay"]
            if not (_is_number(wd) and wd >= 0):
                raise ValueError(
                    f"{type(self).__name__} expected weight_decay >= 0, got {wd!r}; "
                    "typical values are 5e-4 (SGD) or 0.01 (AdamW), 0 turns it off"
                )
            hyper["weight_decay"] = float(wd)

    def hyperparameters(self) -> dict:
        """JSON-able {name: value} of this optimizer's hyperparameters."""
        return {name: (list(v) if isinstance(v, tuple) else v)
                for name in self.HYPER for v in [getattr(self, name)]}

    # -- the update ----------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Set every parameter's gradient to None (torch's ``set_to_none=True`` default):
        a ``step()`` before the next ``model.backward`` then fails clearly instead of
        reusing stale gradients."""
        for _, layer, name in self.model.named_parameters():
            layer.grads[name] = None

    def step(self) -> None:
        """Apply one update to every parameter from its gradient."""
        params = self.model.named_parameters()
        for key, layer, name in params:
            if layer.grads.get(name) is None:
                raise RuntimeError(
                    f"{type(self).__name__}.step(): parameter {key} of {layer!r} has no gradient; "
                    "run model.backward(...) before step()"
                )
        self.steps += 1
        if params and self._fused_step(params):
            return
        for key, layer, name in params:
            self._update(key, layer.params[name], layer.grads[name])

    def _update(self, key, param, grad):
        raise NotImplementedError

    def _fused_step(self, params) -> bool:
        """Every parameter's update in one launch (gpucnn.backends.kernels.optim) when the "optimizer"
        group is active for their device and every parameter is float32 and C-contiguous;
        returns False (nothing done) otherwise."""
        xp = array_module(params[0][1].params[params[0][2]])
        if xp is np or not kernels.active("optimizer", xp):  # NumPy never runs kernel groups
            return False
        keys, weights, grads = [], [], []
        for key, layer, name in params:
            w, g = layer.params[name], layer.grads[name]
            if w.dtype != np.float32 or g.dtype != w.dtype or g.shape != w.shape or not w.flags.c_contiguous:
                return False
            keys.append(key)  # gradients in any layout: the kernel reads strided ones in place
            weights.append(w)
            grads.append(g)
        self._multi_update(keys, weights, grads)
        return True

    def _multi_update(self, keys, weights, grads):
        raise NotImplementedError

    def release_device_table(self) -> None:
        """Forget the fused update's device table of addresses; the next step uploads it again
        (gpucnn.backends.cuda_graphs does this before recording a step, so the table lies in the graph's pool)."""
        self._table = TensorTable()

    # -- CUDA graphs (gpucnn.backends.cuda_graphs) ---------------------------------------------------------
    def graph_key(self) -> tuple:
        """What else a recorded step bakes in besides the hyperparameters and the buffers: the
        device tables the optimizer renews on its own as training goes (arrays compared by
        identity). A change records the step again without counting toward
        gpucnn.backends.cuda_graphs.MAX_CAPTURES."""
        return ()

    def before_recording(self) -> None:
        """Make now (the recording may not upload) what the next step will read on the device."""

    def _buffer(self, key, name, like):
        """The named state buffer of one parameter, created as zeros on first use."""
        per_param = self.state.setdefault(key, {})
        if name not in per_param:
            per_param[name] = array_module(like).zeros_like(like)  # on like's device, in its dtype
        return per_param[name]

    def _buffers(self, keys, name, weights):
        """The named state buffer of every parameter, C-contiguous (the multi-tensor kernel
        reads raw memory). Missing ones start as zeros: views of one new flat buffer, one fill."""
        xp = array_module(weights[0])
        missing = [i for i, key in enumerate(keys) if name not in self.state.get(key, {})]
        if missing:
            flat = xp.zeros(sum(weights[i].size for i in missing), dtype=weights[0].dtype)  # (total,)
            offset = 0
            for i in missing:
                size = weights[i].size
                view = flat[offset:offset + size].reshape(weights[i].shape)  # (*parameter shape)
                self.state.setdefault(keys[i], {})[name] = view
                offset += size
        buffers = []
        for key in keys:
            buffer = self.state[key][name]
            if not buffer.flags.c_contiguous:  # loaded from a file in another order: once
                buffer = self.state[key][name] = xp.ascontiguousarray(buffer)
            buffers.append(buffer)
        return buffers

    # -- save / restore --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Host copy of everything a resume needs:
        {"type", "hyper": {name: value}, "steps", "state": {key: {buffer: ndarray}}}."""
        return {
            "type": type(self).__name__,
            "hyper": self.hyperparameters(),
            "steps": self.steps,
            "state": {k: {n: to_host(v).copy() for n, v in bufs.items()} for k, bufs in self.state.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output: hyperparameters, step count and buffers
        (placed on the model's device, in the parameter's dtype). Hyperparameters missing
        from an older file keep their current values."""
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"optimizer state was saved from {state.get('type')!r}, cannot load it into "
                f"{type(self).__name__}; resume with the same --optimizer"
            )
        params = {key: layer.params[name] for key, layer, name in self.model.named_parameters()}
        unknown = set(state["state"]) - set(params)
        if unknown:
            raise ValueError(
                f"optimizer state has parameters {sorted(unknown)} the model does not have "
                f"(it has {sorted(params)}); was it saved from a different architecture?"
            )
        buffers = {}
        for key, saved in state["state"].items():
            buffers[key] = {}
            for name, value in saved.items():
                value = np.asarray(value)
                if value.shape != tuple(params[key].shape):
                    raise ValueError(
                        f"optimizer buffer {key}/{name} expected shape {tuple(params[key].shape)}, "
                        f"got {value.shape}; was it saved from a different architecture?"
                    )
                buffers[key][name] = self.model.backend.asarray(value.astype(params[key].dtype, copy=False))
        hyper = self.hyperparameters()
        hyper.update({k: v for k, v in state.get("hyper", {}).items() if k in self.HYPER})
        self._configure(hyper)
        self.steps = int(state["steps"])
        self.state = buffers
        self._steps_moved()

    def _steps_moved(self) -> None:
        """The step count changed without the device (load_state_dict)."""


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD (dampening 0):

        g = grad + weight_decay * w          (L2 penalty, coupled)
        v = momentum * v + g                 (when momentum > 0)
        g = g + momentum * v if nesterov else v
        w -= lr * g

    With momentum 0 this is the course's ``w -= lr * grad`` (docs/math.md,
    "Worked example: one hand-trained step").
    """

    HYPER = ("lr", "momentum", "nesterov", "weight_decay")
    capturable = True  # every update in place, its scalars the hyperparameters

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(model, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    def _check(self, hyper):
        super()._check(hyper)
        momentum, nesterov = hyper["momentum"], hyper["nesterov"]
        if not (_is_number(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"SGD expected 0 <= momentum < 1, got {momentum!r}; 0.9 is the usual choice")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"SGD expected nesterov True or False, got {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError(
                f"SGD(nesterov=True) expected momentum > 0, got momentum={momentum!r}; "
                "pass momentum=0.9 or nesterov=False"
            )
        hyper["momentum"], hyper["nesterov"] = float(momentum), bool(nesterov)

    def _update(self, key, param, grad):
        t = param.dtype.type  # every scalar in the param's dtype: float32 stays float32
        if self.weight_decay:
            grad = grad + t(self.weight_decay) * param  # a new array: the layer's grad is untouched
        if self.momentum:
            velocity = self._buffer(key, "velocity", param)
            velocity *= t(self.momentum)
            velocity += grad
            grad = grad + t(self.momentum) * velocity if self.nesterov else velocity
        param -= t(self.lr) * grad

    def _multi_update(self, keys, weights, grads):
        velocities = self._buffers(keys, "velocity", weights) if self.momentum else None
        sgd_update(self._table, weights, grads, velocities, self.lr, self.momentum,
                   self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam:

        g = grad + weight_decay * w          (L2 penalty, coupled: torch's Adam)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    HYPER = ("lr", "betas", "eps", "weight_decay")
    _decoupled = False  # AdamW: weight decay applied to w directly, not through g
    # with CUDA graphs on, the fused update reads its bias corrections from a device table
    # (gpucnn.backends.kernels.optim.BiasCorrections) instead of taking them as per-step scalars
    capturable = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self._corrections = None  # BiasCorrections while steps may be replayed from a graph

    def graph_key(self) -> tuple:
        """The correction table a recorded step reads (the array, held), and whether it holds
        the next step."""
        table = self._corrections
        return (None,) if table is None else (table.rows, table.covers(self.steps + 1))

    def before_recording(self) -> None:
        if self.model.backend.graphs:
            if self._corrections is None:
                self._corrections = BiasCorrections()
            self._corrections.ready(self.model.backend.xp, self.lr, self.betas, self.steps + 1)

    def _steps_moved(self) -> None:
        self._corrections = None  # its device position no longer matches: a new table

    def _check(self, hyper):
        super()._check(hyper)
        betas, eps = hyper["betas"], hyper["eps"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(
                f"{type(self).__name__} expected betas = (beta1, beta2), each in [0, 1), got {betas!r}; "
                "the usual choice is (0.9, 0.999)"
            )
        if not (_is_number(eps) and eps > 0):
            raise ValueError(f"{type(self).__name__} expected eps > 0, got {eps!r}; the usual choice is 1e-8")
        hyper["betas"], hyper["eps"] = (float(betas[0]), float(betas[1])), float(eps)

    def _update(self, key, param, grad):
        self._corrections = None  # this path does not move the table's device position
        xp, t = array_module(param), param.dtype.type
        beta1, beta2 = self.betas
        if self.weight_decay:
            if self._decoupled:
                param *= t(1.0 - self.lr * self.weight_decay)
            else:
                grad = grad + t(self.weight_decay) * param  # a new array: the layer's grad is untouched
        m = self._buffer(key, "m", param)
        v = self._buffer(key, "v", param)
        m *= t(beta1)
        m += t(1.0 - beta1) * grad
        scratch = xp.multiply(grad, grad)  # g^2, then reused for the step
        scratch *= t(1.0 - beta2)
        v *= t(beta2)
        v += scratch
        # bias corrections in double on the host, cast once: float32 stays float32
        step_size = self.lr / (1.0 - beta1 ** self.steps)
        correction2_sqrt = math.sqrt(1.0 - beta2 ** self.steps)
        xp.sqrt(v, out=scratch)
        scratch /= t(correction2_sqrt)
        scratch += t(self.eps)  # denominator, as torch: sqrt(v) / sqrt(1 - beta2^t) + eps
        xp.divide(m, scratch, out=scratch)
        scratch *= t(step_size)
        param -= scratch

    def _multi_update(self, keys, weights, grads):
        if self.model.backend.graphs and self._corrections is None:
            self._corrections = BiasCorrections()
        adam_update(self._table, weights, grads, self._buffers(keys, "m", weights),
                    self._buffers(keys, "v", weights), self.lr, self.betas, self.eps,
                    self.weight_decay, self._decoupled, self.steps,
                    self._corrections if self.model.backend.graphs else None)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW:
    ``w -= lr * weight_decay * w`` before the Adam step, which sees the raw gradient."""

    _decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
