#!/usr/bin/env python
"""Training and evaluation throughput of gpucnn, side by side with PyTorch on the CPU.

For each network and batch size, on every available gpucnn backend: steady-state
images/s of full training steps (forward, loss, backward, SGD with momentum 0.9, or
Adam with --optimizer adam) and of evaluation (forward only, eval mode), the median of
several repeats after warm-up steps. The identical network runs in PyTorch on the CPU
in the same process, its repeats interleaved with gpucnn's so machine noise hits both,
with the same number of threads for both. The run also measures this machine's SGEMM
peak (a 1024x1024 float32 matrix multiply through NumPy's BLAS) and prints the share of
it that each training step reaches: the matrix-multiply FLOPs per image (see
scripts/profile_step.py) times images/s, over the peak. Then it sweeps batch size and
image size for simple and lenet (--plot draws the sweep). Timings are printed, never
asserted.

    python scripts/benchmark.py                       # full tables (several minutes)
    python scripts/benchmark.py --quick               # a smoke run (CI)
    python scripts/benchmark.py --profile --archs lenet --batch-sizes 64 --threads 1
    python scripts/benchmark.py --plot docs/scaling.png
    python scripts/benchmark.py --gpu-model           # predicted GPU bounds, no GPU needed

``--profile`` times each layer's forward and backward, the loss and the optimizer step
instead. ``--cpu-time`` reads the process's CPU time instead of the wall clock: on a
shared machine, with --threads 1, it is the steadier clock for comparing two versions.
``--gpu-model`` times nothing: it counts one training step's kernel launches, bytes and
FLOPs with the CuPy stand-in and prints the lower bounds they put on a GPU step
(scripts/gpu_model.py): a prediction, not a measurement.
"""
from __future__ import annotations

import os

# OpenBLAS reads these when NumPy loads it. Some machines (this project's development VM)
# set OPENBLAS_CORETYPE=Haswell for old OpenBLAS builds, which makes current NumPy pick a
# slower kernel; a user's machine would not have them, so the benchmark drops them.
DROPPED_ENV = {name: os.environ.pop(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
               if name in os.environ}

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpucnn.backend import get_backend, gpu_status  # noqa: E402
from gpucnn.losses import SoftmaxCrossEntropy  # noqa: E402
from gpucnn.optim import SGD, Adam  # noqa: E402
from gpu_model import ARCHS, GPUS, build_model  # noqa: E402  (zoo networks by name)
from measure import SgemmPeak, cpu_name, measure, peak_memory  # noqa: E402
from profile_step import gemm_flops_per_image, profile_step, profile_table  # noqa: E402
from scaling import plot_scaling, scaling_points, scaling_table  # noqa: E402
from torch_twin import TorchCase  # noqa: E402

# the images each network is timed on: MNIST-sized for simple and lenet, CIFAR-sized for the rest
INPUT_SHAPES = {"simple": (1, 28, 28), "lenet": (1, 28, 28), "lenet-bn": (3, 32, 32),
                "cifar-small": (3, 32, 32)}
CLASSES = 10
LEARNING_RATES = {"momentum": 0.01, "adam": 1e-3}


# -- the cases ------------------------------------------------------------------------------
def make_optimizer(name, model):
    if name == "adam":
        return Adam(model, LEARNING_RATES["adam"])
    return SGD(model, LEARNING_RATES["momentum"], momentum=0.9)


class GpucnnCase:
    def __init__(self, model, backend, x, y, optimizer: str):
        self.backend = backend
        self.model = model.to(backend)
        self.optimizer = make_optimizer(optimizer, self.model)
        self.loss = SoftmaxCrossEntropy()
        self.x, self.y = backend.asarray(x), backend.asarray(y)

    def train_steps(self, steps):
        self.model.train()
        for _ in range(steps):
            self.loss.forward(self.model.forward(self.x), self.y)
            self.model.backward(self.loss.backward(), need_input_grad=False)
            self.optimizer.step()
        self.backend.synchronize()

    def eval_steps(self, steps):
        self.model.eval()
        for _ in range(steps):
            self.model.forward(self.x).argmax(axis=1)
        self.backend.synchronize()


def batch_data(batch, input_shape):
    data = np.random.default_rng(1)
    return data.random((batch, *input_shape), dtype=np.float32), data.integers(0, CLASSES, batch)


def make_cases(arch, batch, input_shape, backend, torch, optimizer) -> dict:
    x, y = batch_data(batch, input_shape)
    model = build_model(arch, input_shape, CLASSES, np.random.default_rng(0))
    cases = {"gpucnn": GpucnnCase(model, backend, x, y, optimizer)}
    if torch is not None and backend.name == "cpu":
        cases["torch"] = TorchCase(model, torch, x, y, optimizer, LEARNING_RATES[optimizer])
    return cases


def run_case(arch, batch, input_shape, backend, torch, args, clock, peak: SgemmPeak | None = None) -> dict:
    cases = make_cases(arch, batch, input_shape, backend, torch, args.optimizer)
    row = {"arch": arch, "batch": batch, "input": list(input_shape), "device": backend.name}
    for mode in ("train", "eval"):
        speed = measure(cases, mode, batch, args.steps, args.warmup, args.repeats, clock)
        row[f"{mode}_img_s"] = speed["gpucnn"]
        if "torch" in speed:
            row[f"torch_{mode}_img_s"] = speed["torch"]
            row[f"{mode}_ratio"] = speed["gpucnn"] / speed["torch"]
    row["train_flops_per_image"] = gemm_flops_per_image(cases["gpucnn"].model, input_shape)[1]
    if peak:
        peak.measure(args.repeats)
        row["peak_fraction"] = row["train_flops_per_image"] * row["train_img_s"] / peak.flops
    row["peak_mib"] = peak_memory(cases["gpucnn"], backend.name, args.steps)
    if "torch" in cases:
        row["torch_peak_mib"] = peak_memory(cases["torch"], "cpu", args.steps)
    return row


# -- the command line -----------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "gpu", "all"), default="all",
                   help="gpucnn backends to time; 'all' = the CPU plus the GPU when usable")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--optimizer", choices=("momentum", "adam"), default=None,
                   help="momentum: SGD with momentum 0.9 (default when timing); "
                        "adam (the default of --gpu-model, as the README's prediction table)")
    p.add_argument("--threads", type=int, default=2, help="threads for BLAS and for torch")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--no-scaling", action="store_true", help="skip the batch-size / image-size sweep")
    p.add_argument("--plot", metavar="PATH", help="draw the sweep to this image file (matplotlib)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with the process's CPU time instead of the wall clock")
    p.add_argument("--profile", action="store_true",
                   help="instead: time each layer's forward and backward, the loss and the optimizer")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 steps, 2 repeats, 1 warm-up; no sweep unless --plot (then a small one)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--gpu-model", action="store_true",
                   help="instead of timing: predict GPU step-time bounds from counted work (no GPU needed)")
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100-sxm", help="the GPU --gpu-model predicts for")
    args = p.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.threads < 1 or args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("batch sizes, --threads, --steps and --repeats must be positive")
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 2, 1
    if args.optimizer is None:
        args.optimizer = "adam" if args.gpu_model else "momentum"
    return args


def gpu_model_main(args):
    import gpu_model
    rows = gpu_model.report(args.archs, args.batch_sizes, args.gpu, INPUT_SHAPES, args.optimizer)
    write_json(args.json, {"prediction": True, "gpu": args.gpu, "optimizer": args.optimizer, "rows": rows})


def write_json(path, result):
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwritten to {path}")


def main(argv=None):
    args = parse_args(argv)
    if args.gpu_model:
        return gpu_model_main(args) or 0

    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(args.threads)
    torch = None
    if not args.no_torch and not args.profile:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch is not installed: timing gpucnn only (pip install torch for the comparison)")
    clock = time.process_time if args.cpu_time else time.perf_counter

    if args.device == "all":
        names = ["cpu"] + (["gpu"] if gpu_status()[0] is not None else [])
    else:
        names = [args.device]
    backends = [get_backend(n) for n in names]
    blas = [f"{i['internal_api']} {i.get('version')} {i.get('architecture')} kernels ({i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"
    peak = SgemmPeak(clock)
    peak.measure(5 if args.quick else 30)
    print(f"machine: {machine}")
    print(f"numpy {np.__version__}, BLAS: {', '.join(blas) or 'unknown'}"
          + (f"; torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""))
    if DROPPED_ENV:
        print("ignored from the environment (a user's machine would not set them; they slow NumPy's "
              "BLAS down): " + ", ".join(f"{k}={v}" for k, v in DROPPED_ENV.items()))
    print(f"SGEMM peak (1024x1024 float32 matmul, median of {len(peak.seconds)}; measured again "
          f"before every case): {peak.flops / 1e9:.1f} GFLOP/s")
    print(f"optimizer: {args.optimizer}; clock: {'process CPU time' if args.cpu_time else 'wall'}; "
          f"steps per repeat {args.steps}, repeats {args.repeats} (median), warm-up {args.warmup}\n")
    result = {"machine": machine, "blas": blas, "threads": args.threads, "optimizer": args.optimizer,
              "torch": getattr(torch, "__version__", None),
              "steps": args.steps, "repeats": args.repeats, "clock": "cpu" if args.cpu_time else "wall"}

    if args.profile:
        result["sgemm_peak_flops"], result["profiles"] = peak.flops, []
        for arch in args.archs:
            for batch in args.batch_sizes:
                for backend in backends:
                    cases = make_cases(arch, batch, INPUT_SHAPES[arch], backend, None, args.optimizer)
                    case = cases["gpucnn"]
                    rows = profile_step(case.model, case.loss, case.optimizer, backend, case.x, case.y,
                                        steps=args.steps, warmup=args.warmup, clock=clock)
                    print(f"{arch}, batch {batch}, input {INPUT_SHAPES[arch]}, {backend.name}:")
                    print(profile_table(rows, batch) + "\n", flush=True)
                    result["profiles"].append({"arch": arch, "batch": batch, "device": backend.name,
                                               "parts": rows})
        write_json(args.json, result)
        return 0

    rows = []
    for arch in args.archs:
        for batch in args.batch_sizes:
            for backend in backends:
                row = run_case(arch, batch, INPUT_SHAPES[arch], backend, torch, args, clock, peak)
                rows.append(row)
                print(format_row(row), flush=True)
    for row in rows:  # against the peak of the whole run
        row["peak_fraction"] = row["train_flops_per_image"] * row["train_img_s"] / peak.flops
    print(f"\nSGEMM peak over the run: {peak.flops / 1e9:.1f} GFLOP/s (median of {len(peak.seconds)})\n")
    print(table(rows))
    result["rows"], result["sgemm_peak_flops"] = rows, peak.flops

    if not args.no_scaling and (args.plot or not args.quick):
        sweep_archs = [a for a in ("simple", "lenet") if a in args.archs]
        points = []
        for arch, batch, input_shape in scaling_points(sweep_archs, args.quick):
            point = run_case(arch, batch, input_shape, backends[0], torch, args, clock)
            points.append(point)
            print(format_row(point), flush=True)
        print("\n" + scaling_table(points))
        result["scaling"] = points
        if args.plot:
            optimizer = "Adam" if args.optimizer == "adam" else "SGD with momentum"
            clock_name = "CPU time" if args.cpu_time else "wall clock"
            plot_scaling(points, args.plot,
                         title=f"{machine}; {args.threads} thread(s), {clock_name}, {optimizer}")
            print(f"\nplot written to {args.plot}")
    write_json(args.json, result)
    return 0


def format_row(r):
    size = "x".join(map(str, r["input"]))
    parts = [f"{r['arch']:<11} batch {r['batch']:<4} {size:<8} {r['device']}: train {r['train_img_s']:.0f} img/s"]
    if "train_ratio" in r:
        parts.append(f"(torch {r['torch_train_img_s']:.0f}, x{r['train_ratio']:.2f})")
    if "peak_fraction" in r:
        parts.append(f"{100 * r['peak_fraction']:.0f}% of SGEMM peak;")
    parts.append(f"eval {r['eval_img_s']:.0f} img/s")
    if "eval_ratio" in r:
        parts.append(f"(torch {r['torch_eval_img_s']:.0f}, x{r['eval_ratio']:.2f})")
    return " ".join(parts)


def table(rows) -> str:
    """A Markdown table, as the README shows it."""
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    head = ("| network | input | batch | device | gpucnn train img/s | torch train img/s | train ratio | "
            "% of SGEMM peak | gpucnn eval img/s | torch eval img/s | eval ratio | peak MiB gpucnn / torch |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        fraction = r.get("peak_fraction")
        lines.append(
            f"| {r['arch']} | {'x'.join(map(str, r['input']))} | {r['batch']} | {r['device']} | "
            f"{r['train_img_s']:.0f} | {f(r.get('torch_train_img_s'), '.0f')} | {f(r.get('train_ratio'), '.2f')} | "
            f"{f(fraction and 100 * fraction, '.0f')} | "
            f"{r['eval_img_s']:.0f} | {f(r.get('torch_eval_img_s'), '.0f')} | {f(r.get('eval_ratio'), '.2f')} | "
            f"{f(r.get('peak_mib'), '.0f')} / {f(r.get('torch_peak_mib'), '.0f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
