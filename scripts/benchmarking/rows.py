"""The benchmark's cases and rows, on either device: gpucnn's case, its PyTorch twin and
the matrix multiplies alone (gemm_floor.py), timed into one row per network, batch
and backend (:func:`run_case`), and the row's printed forms. scripts/benchmark.py runs
them; gpu_bench.py holds what only a GPU row needs."""
from __future__ import annotations

import time

import numpy as np

from gpucnn.backends.cuda_graphs import StepGraph, unavailable
from gpucnn.nn.losses import SoftmaxCrossEntropy
from gpucnn.optim import SGD, Adam
from .gemm_floor import GemmFloorCase
from .gpu_bench import (device_peak_mib, format_cell, free_device_memory, live_peak_mib, peak_for,
                        torch_device_for, torch_peak_mib, torch_reset_peak)
from .measure import SETTLE_SECONDS, measure, peak_memory
from .networks import build_model
from .profile_step import gemm_flops_per_image
from .torch_twin import TorchCase

CLASSES = 10
LEARNING_RATES = {"momentum": 0.01, "adam": 1e-3}


# -- the cases ------------------------------------------------------------------------------
def make_optimizer(name, model):
    if name == "adam":
        return Adam(model, LEARNING_RATES["adam"])
    return SGD(model, LEARNING_RATES["momentum"], momentum=0.9)


class GpucnnCase:
    """gpucnn's step on one fixed batch; replayed from a CUDA graph when the backend has graphs
    on and the step allows it (gpucnn.backends.cuda_graphs; ``graph_note`` says why not otherwise)."""

    def __init__(self, model, backend, x, y, optimizer: str):
        self.backend = backend
        self.model = model.to(backend)
        self.optimizer = make_optimizer(optimizer, self.model)
        self.loss = SoftmaxCrossEntropy()
        self.x, self.y = backend.asarray(x), backend.asarray(y)
        self.graph_note = unavailable(self.model, self.optimizer) if backend.graphs else None
        self.graph = StepGraph(self.model, self.optimizer, self._step) if backend.graphs and not self.graph_note else None

    def _step(self):
        self.loss.forward(self.model.forward(self.x), self.y)
        self.model.backward(self.loss.backward(), need_input_grad=False)
        self.optimizer.step()

    def train_steps(self, steps):
        self.model.train()
        step = self.graph or self._step
        for _ in range(steps):
            step()
        self.backend.synchronize()

    def eval_steps(self, steps):
        self.model.eval()
        for _ in range(steps):
            self.model.forward(self.x).argmax(axis=1)
        self.backend.synchronize()


def batch_data(batch, input_shape):
    data = np.random.default_rng(1)
    return data.random((batch, *input_shape), dtype=np.float32), data.integers(0, CLASSES, batch)


def make_cases(arch, batch, input_shape, backend, torch, optimizer, floor: bool = False) -> dict:
    """gpucnn's case; PyTorch's twin when torch is given, on the CPU beside a CPU case and
    on CUDA beside a GPU case (none when torch has no CUDA); with ``floor``, the matrix
    multiplies of gpucnn's step alone (CPU only, gemm_floor.py). Each GPU side's
    memory high-water mark is reset before its case is built."""
    x, y = batch_data(batch, input_shape)
    model = build_model(arch, input_shape, CLASSES, np.random.default_rng(0))
    free_device_memory(backend)
    cases = {"gpucnn": GpucnnCase(model, backend, x, y, optimizer)}
    twin_device = torch_device_for(backend.name, torch)[0]
    if twin_device is not None:
        if twin_device == "cuda":
            torch_reset_peak(torch)
        cases["torch"] = TorchCase(model, torch, x, y, optimizer, LEARNING_RATES[optimizer], twin_device)
    if floor and backend.name == "cpu":
        cases["floor"] = GemmFloorCase(cases["gpucnn"].model, cases["gpucnn"].x)
    return cases


def run_case(arch, batch, input_shape, backend, torch, args, clock, peaks: dict | None = None,
             floor: bool = True, schedule: tuple | None = None) -> dict:
    """One row. ``peaks``: {"cpu": SgemmPeak, "gpu": FLOP/s or None}; ``schedule``:
    (warmup, steps, repeats), the command line's by default. GPU rows use the wall clock
    and no settling pause (gpu_bench.py)."""
    warmup, steps, repeats = schedule or (args.warmup, args.steps, args.repeats)
    gpu = backend.name == "gpu"
    cases = make_cases(arch, batch, input_shape, backend, torch, args.optimizer, floor)
    twin_device, twin_note = torch_device_for(backend.name, torch)
    row = {"arch": arch, "batch": batch, "input": list(input_shape), "device": backend.name,
           "torch_device": twin_device, "torch_note": twin_note}
    if gpu:
        row["kernels"] = ",".join(sorted(backend.kernels)) or "none"
        row["graphs"] = backend.graphs
    for mode in ("train", "eval"):
        speed = measure(cases, mode, batch, steps, warmup, repeats, time.perf_counter if gpu else clock,
                        0.0 if gpu else settle(args))
        row[f"{mode}_img_s"] = speed["gpucnn"]
        row[f"torch_{mode}_img_s"] = speed.get("torch")
        row[f"{mode}_ratio"] = speed["gpucnn"] / speed["torch"] if "torch" in speed else None
        if "floor" in speed:  # interleaved with the other cases' repeats
            prefix = "" if mode == "train" else "eval_"
            row[f"{prefix}gemm_floor_img_s"] = speed["floor"]
            if "torch" in speed:
                row[f"{prefix}ratio_ceiling"] = speed["floor"] / speed["torch"]
    cases.pop("floor", None)  # its arrays would count in the peak memory below
    row["train_flops_per_image"] = gemm_flops_per_image(cases["gpucnn"].model, input_shape)[1]
    if peaks:
        if not gpu:
            peaks["cpu"].measure(repeats)
        row["peak_fraction"] = peak_fraction(row, peaks)
    row.update(case_memory(cases, backend, torch, steps))
    if gpu:
        row["live_peak_mib"] = live_peak_mib(backend, cases["gpucnn"])
    graph = cases["gpucnn"].graph
    if gpu and backend.graphs:  # the graph's private pool holds the step's memory: count it too
        row["graph_note"] = cases["gpucnn"].graph_note or (graph.reason if graph else None)
        row["graph_replays"] = graph.replays if graph else 0
        if graph is not None and row.get("peak_mib") is not None:
            row["peak_mib"] += graph.pool_bytes() / 2**20
    return row


def peak_fraction(row, peaks: dict) -> float | None:
    """The share of its device's SGEMM peak that a row's training reaches (None: no GPU peak)."""
    flops = peak_for(row["device"], peaks["cpu"].flops, peaks.get("gpu"))
    return None if flops is None else row["train_flops_per_image"] * row["train_img_s"] / flops


def case_memory(cases, backend, torch, steps) -> dict:
    """MiB: gpucnn's and the twin's peak RSS on the CPU (each trains ``steps`` more steps);
    on a GPU, CuPy's pool and torch.cuda's high-water marks since the cases were built."""
    if backend.name == "gpu":
        twin = cases.get("torch")
        on_cuda = twin is not None and twin.device == "cuda"
        return {"peak_mib": device_peak_mib(backend),
                **(torch_peak_mib(torch) if on_cuda else {"torch_peak_mib": None, "torch_reserved_mib": None})}
    memory = {"peak_mib": peak_memory(cases["gpucnn"], "cpu", steps), "torch_peak_mib": None}
    if "torch" in cases:
        memory["torch_peak_mib"] = peak_memory(cases["torch"], "cpu", steps)
    return memory


def settle(args) -> float:
    """The pause before each timed repeat (measure.SETTLE_SECONDS); none in a --quick smoke run."""
    return 0.0 if args.quick else SETTLE_SECONDS


# -- printed forms ----------------------------------------------------------------------------
def format_row(r):
    size = "x".join(map(str, r["input"]))
    device = r["device"] + (f" [kernels: {r['kernels']}{' + graphs' if r.get('graphs') else ''}]"
                            if "kernels" in r else "")
    parts = [f"{r['arch']:<11} batch {r['batch']:<4} {size:<8} {device}: train {r['train_img_s']:.0f} img/s"]
    if r.get("train_ratio") is not None:
        parts.append(f"(torch {r['torch_train_img_s']:.0f}, x{r['train_ratio']:.2f})")
    elif r.get("torch_note"):
        parts.append("(no PyTorch twin)")
    if r.get("peak_fraction") is not None:
        parts.append(f"{100 * r['peak_fraction']:.0f}% of {'GPU ' if r['device'] == 'gpu' else ''}SGEMM peak;")
    if "gemm_floor_img_s" in r:
        ceiling = f", ceiling x{r['ratio_ceiling']:.2f}" if "ratio_ceiling" in r else ""
        parts.append(f"matrix multiplies alone {r['gemm_floor_img_s']:.0f} img/s{ceiling};")
    parts.append(f"eval {r['eval_img_s']:.0f} img/s")
    if r.get("eval_ratio") is not None:
        parts.append(f"(torch {r['torch_eval_img_s']:.0f}, x{r['eval_ratio']:.2f})")
    return " ".join(parts)


def table(rows) -> str:
    """A Markdown table, as the README shows it."""
    f = format_cell
    head = ("| network | input | batch | device | gpucnn train img/s | torch train img/s | train ratio | "
            "% of SGEMM peak | matrix multiplies alone img/s | ratio ceiling | "
            "gpucnn eval img/s | torch eval img/s | eval ratio | peak MiB gpucnn / torch |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        fraction = r.get("peak_fraction")
        lines.append(
            f"| {r['arch']} | {'x'.join(map(str, r['input']))} | {r['batch']} | {r['device']} | "
            f"{r['train_img_s']:.0f} | {f(r.get('torch_train_img_s'), '.0f')} | {f(r.get('train_ratio'), '.2f')} | "
            f"{f(fraction and 100 * fraction, '.0f')} | "
            f"{f(r.get('gemm_floor_img_s'), '.0f')} | {f(r.get('ratio_ceiling'), '.2f')} | "
            f"{r['eval_img_s']:.0f} | {f(r.get('torch_eval_img_s'), '.0f')} | {f(r.get('eval_ratio'), '.2f')} | "
            f"{f(r.get('peak_mib'), '.0f')} / {f(r.get('torch_peak_mib'), '.0f')} |")
    return "\n".join(lines)


