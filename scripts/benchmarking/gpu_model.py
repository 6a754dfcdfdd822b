"""A GPU training step's time, predicted from work counted without a GPU.

The CuPy stand-in (tests/standin/) runs one steady-state step of a network and counts
what CuPy would do on a GPU: kernel launches (ufuncs, reductions, matrix multiplies,
copies, fills; not views), bytes read and written by those kernels, and FLOPs
(2*m*n*k per matrix multiply, ~1 per element otherwise). A step cannot be faster than
the largest of three bounds on a given GPU:

    launches * host cost of one call   (CuPy launches every kernel from Python)
    bytes / memory bandwidth
    FLOPs / peak FP32 rate (no tensor cores: CuPy does not enable TF32 by default)

This is a PREDICTION, a lower bound on the step time (an upper bound on images/s):
it ignores cuBLAS's efficiency on small matrices, caches, kernels too small to
reach full bandwidth, the allocator, and the host<->device copies of data loading.

Why the model stays now that the benchmark times real GPUs: it needs no GPU. CI and
every development machine can count a step's launches, say which gpucnn file makes
them, and check that a change removes launches, long before a GPU runs it. What it
no longer does is assume the cost of a launch: ``--launch-us`` takes it, and the GPU
benchmark (``scripts/benchmark.py --device gpu``, gpu_bench.py) measures it
in every run and prints the value to pass. The default, 24 us, is the H200 figure
of issue 20 (CuPy 14: 18-38 us per call), labelled as such in the output; the 5 us
this model once assumed was 2-8x too optimistic. (The benchmark's own loop later
measured medians of 10.6 and 14.7 us per call on an H200 with CuPy 14.2 and CUDA 13:
pass what your GPU run prints.)

    python scripts/benchmark.py --gpu-model                  # every zoo network, batch 64 and 256
    python scripts/benchmark.py --gpu-model --archs lenet --batch-sizes 32 512 --launch-us 30
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "tests"):  # the stand-in lives with the tests, not in the library
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from gpucnn.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from gpucnn.optim import SGD, Adam  # noqa: E402

from .networks import build_model  # noqa: E402  (the zoo and the benchmark's networks)

# the median host cost of one generic CuPy call, last measured on an H200 (CuPy 14.2):
# the default of --launch-us, printed as such; the GPU benchmark measures it in every run
MEASURED_LAUNCH_US = 24.0
MEASURED_ON = "the last H200 measurement"


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float      # bytes/s of device memory
    fp32_flops: float     # FLOP/s, FP32 without tensor cores


GPUS = {
    "h100-sxm": GPU("NVIDIA H100 SXM", bandwidth=3.35e12, fp32_flops=67e12),
    "h200": GPU("NVIDIA H200", bandwidth=4.8e12, fp32_flops=67e12),
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


def predict(work, gpu: GPU, batch: int, launch_us: float = MEASURED_LAUNCH_US) -> dict:
    """Lower bounds (seconds) for one step on ``gpu`` at ``launch_us`` of host time per
    launch, the dominant one, and the images/s ceiling it implies."""
    bounds = {"launch": work.launches * launch_us * 1e-6,
              "memory": (work.bytes_read + work.bytes_written) / gpu.bandwidth,
              "compute": work.flops / gpu.fp32_flops}
    dominant = max(bounds, key=bounds.get)
    return {**{f"{k}_us": v * 1e6 for k, v in bounds.items()}, "bound": dominant,
            "floor_us": bounds[dominant] * 1e6, "img_s": batch / bounds[dominant]}


def model_rows(archs, batch_sizes, gpu: GPU, input_shapes=None, optimizer: str = "adam",
               launch_us: float = MEASURED_LAUNCH_US) -> list[dict]:
    """One row per network and batch size; ``input_shapes``: {arch: (C, H, W)}, MNIST's by default."""
    rows = []
    for arch in archs:
        input_shape = (input_shapes or {}).get(arch, (1, 28, 28))
        for batch in batch_sizes:
            work = count_step(arch, batch, input_shape, optimizer=optimizer)
            row = {"arch": arch, "batch": batch, "input": list(input_shape), "gpu": gpu.name, **work.totals(),
                   "mb": (work.bytes_read + work.bytes_written) / 1e6, "gflop": work.flops / 1e9,
                   **predict(work, gpu, batch, launch_us), "launch_us_per_call": launch_us,
                   "launches_by_file": dict(_by_file(work.by_site))}
            evaluation = count_step(arch, batch, input_shape, mode="eval")
            row["eval_launches"] = evaluation.launches
            row["eval_img_s"] = predict(evaluation, gpu, batch, launch_us)["img_s"]
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


def report(archs, batch_sizes, gpu_name: str = "h200", input_shapes=None, optimizer: str = "adam",
           launch_us: float | None = None) -> list[dict]:
    gpu = GPUS[gpu_name]
    source = f"{MEASURED_ON}, the default" if launch_us is None else "given"
    launch_us = MEASURED_LAUNCH_US if launch_us is None else launch_us
    print(f"PREDICTION, not a measurement: lower bounds for one training step on an {gpu.name} "
          f"({gpu.bandwidth / 1e12:.2f} TB/s, {gpu.fp32_flops / 1e12:.0f} TFLOP/s FP32 without tensor "
          f"cores, {launch_us:g} µs of host time per kernel launch from Python ({source}; "
          "scripts/benchmark.py --device gpu measures it)), from work counted "
          f"by the CuPy stand-in; {'Adam' if optimizer == 'adam' else 'SGD with momentum'}, float32, input "
          + ", ".join(f"{arch} {tuple((input_shapes or {}).get(arch, (1, 28, 28)))}" for arch in archs)
          + "\n", flush=True)
    rows = model_rows(archs, batch_sizes, gpu, input_shapes, optimizer, launch_us)
    print(table(rows))
    print("\nkernel launches per training step, by source file:")
    for row in rows:
        print("  " + launch_sources(row))
    return rows
