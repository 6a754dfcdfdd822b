"""Where a training step's time goes, and how much arithmetic it holds.

``scripts/benchmark.py --profile`` times every part of a steady-state training step
separately: each layer's forward and backward (in the order Sequential runs them),
the loss (forward and backward) and the optimizer step, and prints them as a table
with each part's share of the step. The backend is synchronised before every clock
read, so the table also holds on a GPU (where the synchronisations slow the step
down a little). It also counts the minor page faults of each part (Linux): memory
the allocator took back from the OS and must map again, zeroed, before the part can
write it; on a virtual machine each costs microseconds.

The FLOP count is that of the matrix multiplies a step cannot avoid, from the layer
shapes: per image, a convolution makes 2*C_out*C_in*kh*kw*OH*OW forward FLOPs, a Dense
layer 2*in*out; training makes each of them three times (forward, weight gradient,
input gradient) except the first layer's input gradient, which training skips.
"""
from __future__ import annotations

import statistics
import time

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from gpucnn.nn.execution_units import ConvPool, execution_units
from gpucnn.nn.layers import Conv2D, Dense
from gpucnn.nn.summary import trace_shapes


def gemm_flops_per_image(model, input_shape) -> tuple[int, int]:
    """(forward FLOPs, training-step FLOPs) per image of ``input_shape`` (C, H, W)."""
    shapes, failure = trace_shapes(model.layers, (1, *input_shape))
    if failure is not None:
        raise ValueError(f"the model does not fit input {input_shape}: {failure[1]}")
    per_layer = []
    for layer, out_shape in zip(model.layers, shapes[1:]):
        if isinstance(layer, Conv2D):
            kh, kw = layer.kernel_size
            _, c_out, out_h, out_w = out_shape
            per_layer.append(2 * c_out * layer.in_channels * kh * kw * out_h * out_w)
        elif isinstance(layer, Dense):
            per_layer.append(2 * layer.in_features * layer.out_features)
    forward = sum(per_layer)
    first = per_layer[0] if per_layer and isinstance(model.layers[0], (Conv2D, Dense)) else 0
    return forward, 3 * forward - first


class StepProfile:
    """Per-part clock readings over several training steps."""

    def __init__(self, model, loss, optimizer, backend, clock=time.perf_counter):
        self.model, self.loss, self.optimizer, self.backend = model, loss, optimizer, backend
        self.clock = clock
        self.units = execution_units(model.layers)  # as Sequential runs them (gpucnn.nn.execution_units)
        self.index = {id(layer): i for i, layer in enumerate(model.layers)}
        self.seconds: dict[str, list[float]] = {}
        self.faults: dict[str, list[int]] = {}

    def _timed(self, name, fn, *args, **kwargs):
        self.backend.synchronize()
        faults, start = minor_faults(), self.clock()
        result = fn(*args, **kwargs)
        self.backend.synchronize()
        self.seconds.setdefault(name, []).append(self.clock() - start)
        self.faults.setdefault(name, []).append(minor_faults() - faults)
        return result

    def _name(self, layer, direction):
        return f"{self.index[id(layer)]:>2} {layer.describe()} {direction}"

    def _call(self, direction):
        """For a ConvPool unit: runs each of its layers' parts under the clock."""
        return lambda layer, method, *args, **kwargs: self._timed(self._name(layer, direction), method,
                                                                  *args, **kwargs)

    def step(self, x, y):
        """One training step (forward, loss, backward without the input gradient, update)."""
        for unit in self.units:
            if isinstance(unit, ConvPool):
                x = unit.forward(x, call=self._call("forward"))
            else:
                x = self._timed(self._name(unit, "forward"), unit.forward, x)
        self._timed("loss forward", self.loss.forward, x, y)
        dy = self._timed("loss backward", self.loss.backward)
        for position in range(len(self.units) - 1, -1, -1):
            unit = self.units[position]
            if isinstance(unit, ConvPool):
                dy = unit.backward(dy, need_input_grad=position > 0, call=self._call("backward"))
            else:
                dy = self._timed(self._name(unit, "backward"), unit.backward, dy, need_input_grad=position > 0)
        self._timed("optimizer step", self.optimizer.step)

    def rows(self) -> list[dict]:
        """One row per part, in step order: median seconds per step, share of their sum,
        mean page faults per step."""
        medians = {name: statistics.median(s) for name, s in self.seconds.items()}
        total = sum(medians.values())
        return [{"part": name, "ms": 1e3 * sec, "share": sec / total,
                 "page_faults": statistics.fmean(self.faults[name])} for name, sec in medians.items()]


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not say)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def profile_step(model, loss, optimizer, backend, x, y, steps: int, warmup: int,
                 clock=time.perf_counter) -> list[dict]:
    """Median time of every part of a training step over ``steps`` steps after ``warmup``."""
    model.train()
    for _ in range(warmup):
        StepProfile(model, loss, optimizer, backend, clock).step(x, y)
    profile = StepProfile(model, loss, optimizer, backend, clock)
    for _ in range(steps):
        profile.step(x, y)
    return profile.rows()


def profile_table(rows, batch: int) -> str:
    """The profile as a Markdown table, the step's total (sum of medians) last."""
    total_ms = sum(r["ms"] for r in rows)
    lines = ["| part | ms per step | share | page faults |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['ms']:.3f} | {100 * r['share']:.1f}% | {r['page_faults']:.0f} |" for r in rows]
    lines.append(f"| **step** | **{total_ms:.3f}** | {batch / (total_ms * 1e-3):,.0f} img/s | "
                 f"{sum(r['page_faults'] for r in rows):.0f} |")
    return "\n".join(lines)
