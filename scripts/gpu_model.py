"""A GPU training step's time, predicted from work counted without a GPU.

The CuPy stand-in (tests/standin/) runs one steady-state step of a network and counts
what CuPy would do on a GPU: kernel launches (ufuncs, reductions, matrix multiplies,
copies, fills; not views), bytes read and written by those kernels, and FLOPs
(2*m*n*k per matrix multiply, ~1 per element otherwise). A step cannot be faster than
the largest of three bounds on a given GPU:

    launches * seconds per launch      (CuPy launches every kernel from Python)
    bytes / memory bandwidth
    FLOPs / peak FP32 rate (no tensor cores: CuPy does not enable TF32 by default)

This is a PREDICTION, a lower bound on the step time (an upper bound on images/s):
it ignores cuBLAS's efficiency on small matrices, caches, kernels too small to
reach full bandwidth, the allocator, and the host<->device copies of data loading.

    python scripts/benchmark.py --gpu-model                  # every network, batch 64 and 256
    python scripts/benchmark.py --gpu-model --archs lenet --batch-sizes 32 512
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests"):  # the stand-in lives with the tests, not in the library
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from gpucnn.losses import SoftmaxCrossEntropy  # noqa: E402
from gpucnn.optim import SGD, Adam  # noqa: E402

from gpucnn.zoo import ARCHS, build_model  # noqa: E402  (every named network)


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float      # bytes/s of device memory
    fp32_flops: float     # FLOP/s, FP32 without tensor cores
    launch_seconds: float  # host-side cost of one kernel launch from Python (CuPy)


GPUS = {
    "h100-sxm": GPU("NVIDIA H100 SXM", bandwidth=3.35e12, fp32_flops=67e12, launch_seconds=5e-6),
}


def count_step(arch: str, batch: int, input_shape=(1, 28, 28), classes: int = 10, mode: str = "train",
               optimizer: str = "adam"):
    """The stand-in's Work (launches, bytes, FLOPs, launches per gpucnn line) of one
    steady-state step: a training step (forward, loss, backward, Adam or SGD with
    momentum 0.9 for ``optimizer="momentum"``) or an evaluation step (forward, argmax)."""
    from standin import standin_backend

    backend = standin_backend()
    model = build_model(arch, tuple(input_shape), classes, np.random.default_rng(0)).to(backend)
    optimizer = SGD(model, 0.01, momentum=0.9) if optimizer == "momentum" else Adam(model, 1e-3)
    loss_fn = SoftmaxCrossEntropy()
    data = np.random.default_rng(1)
    x = backend.asarray(data.random((batch, *input_shape), dtype=np.float32))
    y = backend.asarray(data.integers(0, classes, batch))
    model.train(mode == "train")

    def step():
        if mode == "train":
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward(), need_input_grad=False)
            optimizer.step()
        else:
            model.forward(x).argmax(axis=1)

    for _ in range(2):  # warm-up: optimizer state and reused workspaces get allocated
        step()
    work = backend.xp.work
    work.reset()
    work.track_sites = True
    step()
    return work


def predict(work, gpu: GPU, batch: int) -> dict:
    """Lower bounds (seconds) for one step on ``gpu``, the dominant one, and the images/s
    ceiling it implies."""
    bounds = {"launch": work.launches * gpu.launch_seconds,
              "memory": (work.bytes_read + work.bytes_written) / gpu.bandwidth,
              "compute": work.flops / gpu.fp32_flops}
    dominant = max(bounds, key=bounds.get)
    return {**{f"{k}_us": v * 1e6 for k, v in bounds.items()}, "bound": dominant,
            "floor_us": bounds[dominant] * 1e6, "img_s": batch / bounds[dominant]}


def model_rows(archs, batch_sizes, gpu: GPU, input_shapes=None, optimizer: str = "adam") -> list[dict]:
    """One row per network and batch size; ``input_shapes``: {arch: (C, H, W)}, MNIST's by default."""
    rows = []
    for arch in archs:
        input_shape = (input_shapes or {}).get(arch, (1, 28, 28))
        for batch in batch_sizes:
            work = count_step(arch, batch, input_shape, optimizer=optimizer)
            row = {"arch": arch, "batch": batch, "input": list(input_shape), "gpu": gpu.name, **work.totals(),
                   "mb": (work.bytes_read + work.bytes_written) / 1e6, "gflop": work.flops / 1e9,
                   **predict(work, gpu, batch),
                   "launches_by_file": dict(_by_file(work.by_site))}
            evaluation = count_step(arch, batch, input_shape, mode="eval")
            row["eval_launches"] = evaluation.launches
            row["eval_img_s"] = predict(evaluation, gpu, batch)["img_s"]
            rows.append(row)
    return rows


def _by_file(by_site: Counter) -> Counter:
    files = Counter()
    for site, n in by_site.items():
        files[site.rsplit(":", 1)[0]] += n
    return files


def table(rows) -> str:
    """The Markdown table the README shows."""
    head = ("| network | batch | kernel launches | MB read + written | GFLOP | launch bound µs | "
            "memory bound µs | compute bound µs | dominant | train img/s at most | eval launches | "
            "eval img/s at most |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['batch']} | {r['launches']} | {r['mb']:.1f} | {r['gflop']:.3f} | "
                     f"{r['launch_us']:.0f} | {r['memory_us']:.1f} | {r['compute_us']:.1f} | {r['bound']} | "
                     f"{r['img_s']:,.0f} | {r['eval_launches']} | {r['eval_img_s']:,.0f} |")
    return "\n".join(lines)


def launch_sources(row) -> str:
    """Where one step's launches come from, by gpucnn file."""
    by_file = sorted(row["launches_by_file"].items(), key=lambda kv: -kv[1])
    return f"{row['arch']}, batch {row['batch']}: " + ", ".join(f"{path} {n}" for path, n in by_file)


def report(archs, batch_sizes, gpu_name: str = "h100-sxm", input_shapes=None, optimizer: str = "adam") -> list[dict]:
    gpu = GPUS[gpu_name]
    print(f"PREDICTION, not a measurement: lower bounds for one training step on an {gpu.name} "
          f"({gpu.bandwidth / 1e12:.2f} TB/s, {gpu.fp32_flops / 1e12:.0f} TFLOP/s FP32 without tensor "
          f"cores, {gpu.launch_seconds * 1e6:.0f} µs per kernel launch from Python), from work counted "
          f"by the CuPy stand-in; {'Adam' if optimizer == 'adam' else 'SGD with momentum'}, float32, input "
          + ", ".join(f"{arch} {tuple((input_shapes or {}).get(arch, (1, 28, 28)))}" for arch in archs)
          + "\n", flush=True)
    rows = model_rows(archs, batch_sizes, gpu, input_shapes, optimizer)
    print(table(rows))
    print("\nkernel launches per training step, by source file:")
    for row in rows:
        print("  " + launch_sources(row))
    return rows
