#!/usr/bin/env python
"""Training and evaluation throughput of gpucnn, side by side with PyTorch on the CPU.

For each network (simple, lenet) and batch size, on every available gpucnn backend:
steady-state images/s of full training steps (forward, loss, backward, Adam step) and
of evaluation (forward only), the median of several repeats after warm-up steps.
When torch is installed the identical network runs in PyTorch on the CPU in the same
process, its repeats interleaved with gpucnn's so machine noise hits both, with the
same number of threads for both. Timings are printed, never asserted.

    python scripts/benchmark.py                       # full table (a few minutes)
    python scripts/benchmark.py --quick               # a smoke run (CI)
    python scripts/benchmark.py --device gpu --json bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpucnn.backend import get_backend, gpu_status  # noqa: E402
from gpucnn.losses import SoftmaxCrossEntropy  # noqa: E402
from gpucnn.optim import Adam  # noqa: E402
from gpucnn.zoo import build_model  # noqa: E402

INPUT_SHAPE = (1, 28, 28)  # MNIST
CLASSES = 10


# -- memory ---------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- gpucnn -----------------------------------------------------------------------------
class GpucnnCase:
    def __init__(self, arch, batch, backend, x, y):
        self.backend = backend
        self.model = build_model(arch, INPUT_SHAPE, CLASSES, np.random.default_rng(0)).to(backend)
        self.optimizer = Adam(self.model, 1e-3)
        self.loss = SoftmaxCrossEntropy()
        self.x, self.y = backend.asarray(x), backend.asarray(y)

    def train_steps(self, steps):
        for _ in range(steps):
            self.loss.forward(self.model.forward(self.x), self.y)
            self.model.backward(self.loss.backward(), need_input_grad=False)
            self.optimizer.step()
        self.backend.synchronize()

    def eval_steps(self, steps):
        for _ in range(steps):
            self.model.forward(self.x).argmax(axis=1)
        self.backend.synchronize()


# -- PyTorch, the identical network --------------------------------------------------------
def torch_model(arch, torch):
    nn = torch.nn
    if arch == "simple":
        return nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(32 * 12 * 12, CLASSES))
    return nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, CLASSES))


class TorchCase:
    def __init__(self, arch, batch, torch, x, y):
        self.torch = torch
        self.model = torch_model(arch, torch)
        self.optimizer = torch.optim.Adam(self.model.parameters(), 1e-3)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def train_steps(self, steps):
        F = self.torch.nn.functional
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(self.x), self.y).backward()
            self.optimizer.step()

    def eval_steps(self, steps):
        with self.torch.inference_mode():
            for _ in range(steps):
                self.model(self.x).argmax(dim=1)


def check_same_network(arch, torch):
    ours = build_model(arch, INPUT_SHAPE, CLASSES, np.random.default_rng(0)).num_params
    theirs = sum(p.numel() for p in torch_model(arch, torch).parameters())
    if ours != theirs:
        raise RuntimeError(f"{arch}: gpucnn has {ours} parameters, the PyTorch twin {theirs}")


# -- timing ---------------------------------------------------------------------------------
def time_call(fn, steps) -> float:
    start = time.perf_counter()
    fn(steps)
    return time.perf_counter() - start


def measure(cases: dict, mode: str, batch: int, steps: int, warmup: int, repeats: int) -> dict:
    """Median images/s per case; repeats interleaved across the cases."""
    for case in cases.values():
        getattr(case, f"{mode}_steps")(warmup)
    seconds = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            seconds[name].append(time_call(getattr(case, f"{mode}_steps"), steps))
    return {name: batch * steps / statistics.median(s) for name, s in seconds.items()}


def peak_memory(case, backend_name, steps) -> float | None:
    """Peak RSS (MiB) while the case trains on the CPU; the GPU memory pool's size otherwise."""
    if backend_name == "gpu":
        return case.backend.device_memory_bytes() / 2**20
    if not reset_peak_rss():
        return None
    case.train_steps(steps)
    return peak_rss_mib()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "gpu", "all"), default="all",
                   help="gpucnn backends to time; 'all' = the CPU plus the GPU when usable")
    p.add_argument("--archs", nargs="+", choices=("simple", "lenet"), default=["simple", "lenet"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for BLAS and for torch")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 2 repeats, 1 warm-up")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 2, 1
    if min(args.batch_sizes) < 1 or args.threads < 1 or args.steps < 1 or args.repeats < 1:
        p.error("batch sizes, --threads, --steps and --repeats must be positive")

    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(args.threads)
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch is not installed: timing gpucnn only (pip install torch for the comparison)")

    if args.device == "all":
        names = ["cpu"] + (["gpu"] if gpu_status()[0] is not None else [])
    else:
        names = [args.device]
    backends = [get_backend(n) for n in names]
    blas = [f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"
    print(f"machine: {machine}")
    print(f"numpy {np.__version__}, BLAS: {', '.join(blas) or 'unknown'}"
          + (f"; torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""))
    print(f"steps per repeat {args.steps}, repeats {args.repeats} (median), warm-up {args.warmup}\n")

    rows = []
    for arch in args.archs:
        if torch:
            check_same_network(arch, torch)
        for batch in args.batch_sizes:
            data = np.random.default_rng(1)
            x = data.random((batch, *INPUT_SHAPE), dtype=np.float32)
            y = data.integers(0, CLASSES, batch)
            for backend in backends:
                cases = {"gpucnn": GpucnnCase(arch, batch, backend, x, y)}
                if torch and backend.name == "cpu":
                    cases["torch"] = TorchCase(arch, batch, torch, x, y)
                row = {"arch": arch, "batch": batch, "device": backend.name}
                for mode in ("train", "eval"):
                    speed = measure(cases, mode, batch, args.steps, args.warmup, args.repeats)
                    row[f"{mode}_img_s"] = speed["gpucnn"]
                    if "torch" in speed:
                        row[f"torch_{mode}_img_s"] = speed["torch"]
                        row[f"{mode}_ratio"] = speed["gpucnn"] / speed["torch"]
                row["peak_mib"] = peak_memory(cases["gpucnn"], backend.name, args.steps)
                if "torch" in cases:
                    row["torch_peak_mib"] = peak_memory(cases["torch"], "cpu", args.steps)
                rows.append(row)
                print(format_row(row), flush=True)

    print("\n" + table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "blas": blas, "threads": args.threads,
                       "torch": getattr(torch, "__version__", None), "steps": args.steps,
                       "repeats": args.repeats, "rows": rows}, f, indent=2)
        print(f"\nwritten to {args.json}")
    return 0


def format_row(r):
    parts = [f"{r['arch']:<6} batch {r['batch']:<4} {r['device']}: train {r['train_img_s']:.0f} img/s"]
    if "train_ratio" in r:
        parts.append(f"(torch {r['torch_train_img_s']:.0f}, x{r['train_ratio']:.2f})")
    parts.append(f"eval {r['eval_img_s']:.0f} img/s")
    if "eval_ratio" in r:
        parts.append(f"(torch {r['torch_eval_img_s']:.0f}, x{r['eval_ratio']:.2f})")
    return " ".join(parts)


def table(rows) -> str:
    """A Markdown table, as the README shows it."""
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    head = ("| network | batch | device | gpucnn train img/s | torch train img/s | train ratio | "
            "gpucnn eval img/s | torch eval img/s | eval ratio | peak MiB gpucnn / torch |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r['device']} | {r['train_img_s']:.0f} | "
            f"{f(r.get('torch_train_img_s'), '.0f')} | {f(r.get('train_ratio'), '.2f')} | "
            f"{r['eval_img_s']:.0f} | {f(r.get('torch_eval_img_s'), '.0f')} | {f(r.get('eval_ratio'), '.2f')} | "
            f"{f(r.get('peak_mib'), '.0f')} / {f(r.get('torch_peak_mib'), '.0f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
