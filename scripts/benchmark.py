#!/usr/bin/env python
"""Training and evaluation throughput of gpucnn, side by side with PyTorch on the same device.

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

On a GPU (--device gpu, or 'all' with one present) every row stands beside the PyTorch
twin on CUDA: the same network and batch, both uploaded before any step, TF32 off on
both sides, cudnn.benchmark at PyTorch's default (False), synchronised timing, repeats
interleaved. Its % column is a share of the GPU's own SGEMM peak, measured in the same
run through cuBLAS; both sides' device-memory high-water marks and the host cost of a
few CuPy calls are printed and recorded (scripts/gpu_bench.py). Without CUDA in torch
a GPU row has no twin and its ratios are null. ``--gpu-targets`` runs issue 21's eight
GPU cases with their target ratios; ``--kernels`` chooses gpucnn's fused kernels, once
per given selection (``--kernels none all``: each case twice, one row per selection).

    python scripts/benchmark.py                       # full tables (several minutes)
    python scripts/benchmark.py --quick               # a smoke run (CI)
    python scripts/benchmark.py --profile --archs lenet --batch-sizes 64 --threads 1
    python scripts/benchmark.py --plot docs/scaling.png
    python scripts/benchmark.py --gpu-model           # predicted GPU bounds, no GPU needed
    python scripts/benchmark.py --ranks 2 --archs simple --batch-sizes 64   # data-parallel scaling
    python scripts/benchmark.py --gpu-targets --kernels none all --json gpu.json   # GPU targets (< 90 s)

``--profile`` times each layer's forward and backward, the loss and the optimizer step
instead. ``--cpu-time`` reads the process's CPU time instead of the wall clock: on a
shared machine, with --threads 1, it is the steadier clock for comparing two versions.
``--gpu-model`` times nothing: it counts one training step's kernel launches, bytes and
FLOPs with the CuPy stand-in and prints the lower bounds they put on a GPU step
(scripts/gpu_model.py, at --launch-us of host time per launch): a prediction, not a
measurement.
"""
from __future__ import annotations

import os

# OpenBLAS reads these when NumPy loads it. Some machines (this project's development VM)
# set OPENBLAS_CORETYPE=Haswell for old OpenBLAS builds, which makes current NumPy pick a
# slower kernel; a user's machine would not have them, so the benchmark drops them.
DROPPED_ENV = {name: os.environ.pop(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
               if name in os.environ}
# gpucnn is timed as its scripts run it: scripts/train.py lets OpenBLAS's idle workers sleep
# at once instead of spinning for 0.1 s on the cores gpucnn's next passes need (a value the
# user set wins; 0 is OpenBLAS's default). PyTorch's MKL and OpenMP threads do not read it.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# CuPy reads CUPY_TF32 at its first float32 matrix multiply: "1" would run gpucnn's on TF32
# tensor cores while PyTorch's twin runs them in full FP32 (scripts/gpu_bench.py).
TF32_ENV = ({"CUPY_TF32": os.environ.pop("CUPY_TF32")}
            if os.environ.get("CUPY_TF32", "0").strip() not in ("", "0") else {})

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpucnn.backend import get_backend, gpu_status  # noqa: E402
from gpucnn.kernel_groups import ENV_VAR as KERNELS_ENV  # noqa: E402
from gpucnn.kernel_groups import parse_selection  # noqa: E402
from gpucnn.losses import SoftmaxCrossEntropy  # noqa: E402
from gpucnn.optim import Adam  # noqa: E402
from gpucnn.parallel import get_num_threads, set_num_threads  # noqa: E402
from argtypes import positive_float  # noqa: E402
from gemm_floor import gemm_floor_seconds  # noqa: E402
from gpu_bench import gpu_setup, gpu_table, target_plan  # noqa: E402
from gpu_bench_nets import ARCHS, INPUT_SHAPES, ZOO_ARCHS  # noqa: E402
from gpu_bench_rows import (CLASSES, format_row, make_cases, peak_fraction, run_case, settle,  # noqa: E402
                            table)
from gpu_model import GPUS  # noqa: E402
from measure import REWARM_STEPS, SETTLE_SECONDS, SgemmPeak, cpu_name, measure  # noqa: E402
from profile_step import profile_step, profile_table  # noqa: E402
from scaling import plot_scaling, scaling_points, scaling_table  # noqa: E402


# -- the command line -----------------------------------------------------------------------
def kernel_spec(text: str) -> str:
    """An argparse type: a fused-kernel selection as get_backend(kernels=...) takes it."""
    try:
        parse_selection(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"got {text!r}: {exc}") from None
    return text


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "gpu", "all"), default=None,
                   help="gpucnn backends to time; 'all' (the default) = the CPU plus the GPU when usable; "
                        "'gpu' with --gpu-targets")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ZOO_ARCHS),
                   help="networks (default: the zoo's; conv-bn and vgg are the benchmark's own, "
                        "scripts/gpu_bench_nets.py)")
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
    p.add_argument("--layers", action="store_true",
                   help="instead: BatchNorm2D and Dropout forward+backward against PyTorch's, layer by layer")
    p.add_argument("--profile", action="store_true",
                   help="instead: time each layer's forward and backward, the loss and the optimizer")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 steps, 2 repeats, 1 warm-up; no sweep unless --plot (then a small one)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--gpu-model", action="store_true",
                   help="instead of timing: predict GPU step-time bounds from counted work (no GPU needed)")
    p.add_argument("--gpu", choices=sorted(GPUS), default="h200", help="the GPU --gpu-model predicts for")
    p.add_argument("--launch-us", type=positive_float, default=None, metavar="US",
                   help="--gpu-model: host µs per kernel launch (default 24: the last H200 measurement; "
                        "a GPU run of this script prints the value it measured)")
    p.add_argument("--kernels", nargs="+", type=kernel_spec, metavar="SPEC",
                   help="gpucnn's fused-kernel groups on the GPU (get_backend(kernels=SPEC)): all, none, default "
                        f"or a comma-separated list of groups; several: every GPU case once per SPEC. "
                        f"Default: ${KERNELS_ENV}, else the defaults")
    p.add_argument("--gpu-targets", action="store_true",
                   help="issue 21's GPU cases: simple and lenet at batch 64 and 1024, conv-bn at 64 and 512, "
                        "vgg at 128 and 512, each beside PyTorch on CUDA with its target ratio; needs a GPU "
                        "(--archs and --batch-sizes are ignored, no sweep)")
    p.add_argument("--ranks", type=int, metavar="N",
                   help="data-parallel mode: 1 process x 1 thread, 1 x N threads and N processes x 1 thread "
                        "(mpiexec) on the global batch, with the allreduce time per step; then the gradient "
                        "bytes and allreduce cost of every zoo network, on paper")
    p.add_argument("--ranks-worker", metavar="SPEC", help=argparse.SUPPRESS)  # one rank of --ranks
    args = p.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.threads < 1 or args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("batch sizes, --threads, --steps and --repeats must be positive")
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 2, 1
    if args.gpu_targets:
        if args.device not in (None, "gpu"):
            p.error(f"--gpu-targets expected --device gpu (its default), got --device {args.device}; "
                    "drop --device")
        args.device, args.no_scaling = "gpu", True
    args.device = args.device or "all"
    if args.optimizer is None:
        args.optimizer = "adam" if args.gpu_model else "momentum"
    if args.ranks is not None and (args.ranks < 2 or any(b % args.ranks for b in args.batch_sizes)):
        p.error(f"--ranks expected 2 or more processes dividing every batch size, got --ranks {args.ranks} "
                f"and --batch-sizes {' '.join(map(str, args.batch_sizes))}")
    return args


def gpu_model_main(args):
    import gpu_model
    rows = gpu_model.report(args.archs, args.batch_sizes, args.gpu, INPUT_SHAPES, args.optimizer, args.launch_us)
    write_json(args.json, {"prediction": True, "gpu": args.gpu, "optimizer": args.optimizer, "rows": rows,
                           "launch_us": rows[0]["launch_us_per_call"] if rows else args.launch_us})


def write_json(path, result):
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwritten to {path}")


def main(argv=None):
    args = parse_args(argv)
    if args.gpu_model:
        return gpu_model_main(args) or 0
    if args.ranks_worker:  # data-parallel mode (see ranks_report): one rank, launched by it
        return ranks_worker(json.loads(args.ranks_worker))
    if args.ranks is not None:
        return ranks_report(args)

    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(args.threads)
    set_num_threads(args.threads)  # gpucnn's own threads for chunked layer work (gpucnn.parallel)
    if args.layers:
        import torch
        from layer_bench import layer_table
        torch.set_num_threads(args.threads)
        print(f"forward + backward in training mode, {args.threads} threads, median of {args.repeats} "
              f"repeats of {args.steps} (ratio > 1: gpucnn faster)")
        rows = layer_table(torch, functools.partial(measure, settle=settle(args)), args.steps, args.warmup,
                           args.repeats, time.process_time if args.cpu_time else time.perf_counter)
        write_json(args.json, {"layers": rows})
        return 0
    torch = None
    if not args.no_torch and not args.profile:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch is not installed: timing gpucnn only (pip install torch for the comparison)")
    clock = time.process_time if args.cpu_time else time.perf_counter

    if args.gpu_targets and gpu_status()[0] is None:
        print(f"--gpu-targets expected a usable GPU, got none: {gpu_status()[1]}; run it on a GPU machine "
              "(or time the CPU with --archs and --batch-sizes)", file=sys.stderr)
        return 2
    if args.device == "all":
        names = ["cpu"] + (["gpu"] if gpu_status()[0] is not None else [])
    else:
        names = [args.device]
    # (device, fused-kernel selection): a GPU once per --kernels SPEC; the selection belongs to
    # CuPy's module, so each GPU case makes its backend again (backend_for) right before it runs
    plan = [(n, spec) for n in names for spec in ((args.kernels or [None]) if n == "gpu" else [None])]
    backends = [backend_for(n, spec) for n, spec in plan]
    blas = [f"{i['internal_api']} {i.get('version')} {i.get('architecture')} kernels ({i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"
    peak = SgemmPeak(clock)
    peak.measure(5 if args.quick else 30)
    print(f"machine: {machine}")
    print(f"numpy {np.__version__}, BLAS: {', '.join(blas) or 'unknown'}"
          + (f"; torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""))
    print(f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']} (as scripts/train.py sets it; "
          "0: OpenBLAS's default, workers spin 0.1 s after each call)")
    if DROPPED_ENV:
        print("ignored from the environment (a user's machine would not set them; they slow NumPy's "
              "BLAS down): " + ", ".join(f"{k}={v}" for k, v in DROPPED_ENV.items()))
    print(f"SGEMM peak (1024x1024 float32 matmul, median of {len(peak.seconds)}; measured again "
          f"before every case): {peak.flops / 1e9:.1f} GFLOP/s")
    print(f"optimizer: {args.optimizer}; clock: {'process CPU time' if args.cpu_time else 'wall'}; "
          f"steps per repeat {args.steps}, repeats {args.repeats} (median), warm-up {args.warmup}"
          + ("" if args.quick else f"; each repeat after a {SETTLE_SECONDS} s pause and {REWARM_STEPS} "
             "untimed steps (CPU rows; GPU rows: wall clock, no pause)")
          + ("; --gpu-targets: each case's own schedule" if args.gpu_targets else ""))
    kernels = [{"spec": spec or f"${KERNELS_ENV}={os.environ.get(KERNELS_ENV, 'default')}",
                "groups": sorted(b.kernels)} for (n, spec), b in zip(plan, backends) if b.name == "gpu"]
    print("gpucnn fused kernels (GPU rows): " + ("; ".join(f"{k['spec']} -> {', '.join(k['groups']) or 'none'}"
                                                       for k in kernels) or "- (no GPU)") + "\n")
    result = {"machine": machine, "blas": blas, "threads": args.threads, "optimizer": args.optimizer,
              "torch": getattr(torch, "__version__", None),
              "steps": args.steps, "repeats": args.repeats, "clock": "cpu" if args.cpu_time else "wall",
              "openblas_thread_timeout": os.environ["OPENBLAS_THREAD_TIMEOUT"], "kernel_specs": args.kernels,
              "kernels": kernels, "gpu_targets": args.gpu_targets,
              "dropped_env": {**DROPPED_ENV, **TF32_ENV}, "gpu": None, "gpu_sgemm_peak_flops": None}
    if TF32_ENV:
        print(f"ignored from the environment: CUPY_TF32={TF32_ENV['CUPY_TF32']} (TF32 stays off on both sides)")
    gpu = next((b for b in backends if b.name == "gpu"), None)
    if gpu is not None and not args.profile:
        result["gpu"] = gpu_setup(gpu, torch, args.quick)
        result["gpu_sgemm_peak_flops"] = result["gpu"]["sgemm_peak_flops"]

    if args.profile:
        result["sgemm_peak_flops"], result["profiles"] = peak.flops, []
        for arch in args.archs:
            for batch in args.batch_sizes:
                for name, spec in plan:
                    backend = backend_for(name, spec)
                    cases = make_cases(arch, batch, INPUT_SHAPES[arch], backend, None, args.optimizer)
                    case = cases["gpucnn"]
                    rows = profile_step(case.model, case.loss, case.optimizer, backend, case.x, case.y,
                                        steps=args.steps, warmup=args.warmup, clock=clock)
                    print(f"{arch}, batch {batch}, input {INPUT_SHAPES[arch]}, {backend.name}:")
                    print(profile_table(rows, batch), flush=True)
                    profile = {"arch": arch, "batch": batch, "device": backend.name, "parts": rows}
                    if backend.name == "cpu":
                        floor = gemm_floor_seconds(case.model, case.x, args.repeats, clock=clock)
                        step = sum(r["ms"] for r in rows) * 1e-3
                        print(f"matrix multiplies alone (scripts/gemm_floor.py): {floor * 1e3:.3f} ms, "
                              f"{100 * floor / step:.0f}% of the step")
                        profile["gemm_floor_ms"] = floor * 1e3
                    print(flush=True)
                    result["profiles"].append(profile)
        write_json(args.json, result)
        return 0

    peaks = {"cpu": peak, "gpu": result["gpu_sgemm_peak_flops"]}
    rows = []
    for arch, batch, schedule, target in case_plan(args):
        for name, spec in plan:
            row = run_case(arch, batch, INPUT_SHAPES[arch], backend_for(name, spec), torch, args, clock, peaks,
                           schedule=schedule)
            if row["device"] == "gpu":
                row["kernels_spec"] = spec
            if args.gpu_targets:
                row["target"], row["schedule"] = target, list(schedule)
            rows.append(row)
            print(format_row(row), flush=True)
    for row in rows:  # against the peak of the whole run
        row["peak_fraction"] = peak_fraction(row, peaks)
    print(f"\nSGEMM peak over the run: {peak.flops / 1e9:.1f} GFLOP/s (median of {len(peak.seconds)})\n")
    cpu_rows, gpu_rows = [r for r in rows if r["device"] != "gpu"], [r for r in rows if r["device"] == "gpu"]
    if cpu_rows:
        print(table(cpu_rows))
    if gpu_rows:
        print(("\n" if cpu_rows else "") + "GPU rows, each beside PyTorch on CUDA (train ratio > 1: gpucnn faster; "
              "target: the train ratio issue 21 asks for):\n" + gpu_table(gpu_rows))
        print("\n".join(sorted({f"note: {r['torch_note']}" for r in gpu_rows if r["torch_note"]})))
    result["rows"], result["sgemm_peak_flops"] = rows, peak.flops

    if not args.no_scaling and (args.plot or not args.quick):
        sweep_archs = [a for a in ("simple", "lenet") if a in args.archs]
        points = []
        for arch, batch, input_shape in scaling_points(sweep_archs, args.quick):
            point = run_case(arch, batch, input_shape, backend_for(*plan[0]), torch, args, clock, floor=False)
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


def backend_for(name: str, spec):
    """The backend of one case: the GPU's with the fused-kernel selection ``spec``."""
    return get_backend(name, kernels=spec) if name == "gpu" else get_backend(name)


def case_plan(args) -> list:
    """[(arch, batch, (warmup, steps, repeats) or None for the command line's, target ratio)]."""
    if args.gpu_targets:
        return target_plan(args.quick)
    return [(arch, batch, None, None) for arch in args.archs for batch in args.batch_sizes]


# -- data-parallel scaling (--ranks) ----------------------------------------------------------
# zoo networks at the shapes of their datasets; links for the paper estimate: bandwidth per
# direction (bytes/s), an assumed latency per message (s), and whether CPU ranks use it (the
# crossover against the CPU compute measured here; GPU compute is not measured)
ZOO_SHAPES = {"simple": (1, 28, 28), "lenet": (1, 28, 28), "lenet-bn": (1, 28, 28), "cifar-small": (3, 32, 32)}
LINKS = {"100 Gb/s network": (100e9 / 8, 5e-6, True), "NVLink 4 (H100)": (450e9, 2e-6, False)}
PAPER_RANKS = (2, 8, 64)


def mpiexec_command(n: int) -> list[str]:
    """mpiexec -n n, the one beside this Python (the mpich wheel) or on PATH."""
    import shutil
    beside = Path(sys.executable).parent / "mpiexec"
    exe = str(beside) if beside.exists() else shutil.which("mpiexec")
    if exe is None:
        raise SystemExit("--ranks needs mpiexec: pip install 'gpucnn[mpi]'")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra = []
    if "Open MPI" in version or "OpenRTE" in version:
        extra = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [exe, *extra, "-n", str(n)]


def zoo_case(arch, batch, seed=1):
    """(model, optimizer, loss, x, y) for ``batch`` random images of the arch's dataset shape."""
    from gpucnn.zoo import build_model as zoo_model
    shape = ZOO_SHAPES[arch]
    model = zoo_model(arch, shape, CLASSES, np.random.default_rng(0))
    data = np.random.default_rng(seed)
    x = data.random((batch, *shape), dtype=np.float32)
    return model, Adam(model, 1e-3), SoftmaxCrossEntropy(), x, data.integers(0, CLASSES, batch)


def timed_steps(case, comm, steps):
    """``steps`` training steps -> (compute seconds, allreduce seconds), summed."""
    from gpucnn.distributed import gradients_of
    model, optimizer, loss, x, y = case
    compute = exchange = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward(), need_input_grad=False)
        t1 = time.perf_counter()
        comm.allreduce_mean_(gradients_of(model), weight=len(y))  # waits for the slowest rank too
        t2 = time.perf_counter()
        optimizer.step()
        compute += time.perf_counter() - t2 + t1 - t0
        exchange += t2 - t1
    return compute, exchange


def ranks_worker(spec: dict) -> int:
    """One rank of a --ranks measurement: steps on its shard of the global batch; rank 0
    prints one line "RANKS {json}" with the slowest rank's medians per step."""
    from threadpoolctl import threadpool_info
    from gpucnn.distributed import SingleProcess, get_communicator, time_allreduce
    backend = get_backend("cpu")
    comm = get_communicator(backend) if spec["processes"] > 1 else SingleProcess()
    case = zoo_case(spec["arch"], spec["batch"] // comm.size, seed=1 + comm.rank)
    steps = spec["steps"]
    timed_steps(case, comm, spec["warmup"])
    walls, computes, exchanges = [], [], []
    for _ in range(spec["repeats"]):
        comm.barrier()
        start = time.perf_counter()
        compute, exchange = timed_steps(case, comm, steps)
        walls.append(time.perf_counter() - start)
        computes.append(compute)
        exchanges.append(exchange)
    slowest = {name: comm.allreduce_scalar(statistics.median(v) / steps, "max")
               for name, v in (("step_s", walls), ("compute_s", computes), ("allreduce_s", exchanges))}
    alone = time_allreduce(comm, backend, case[0].num_params, repeats=spec["repeats"]) if comm.size > 1 else 0.0
    if comm.is_main:
        threads = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        print("RANKS " + json.dumps(dict(spec, **slowest, allreduce_alone_s=alone, blas_threads=threads,
                                         img_s=spec["batch"] / slowest["step_s"])), flush=True)
    return 0


def run_ranks_case(arch, batch, processes, threads, args) -> dict:
    spec = {"arch": arch, "batch": batch, "processes": processes, "threads": threads,
            "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup}
    command = [sys.executable, "-m", "mpi4py"] if processes > 1 else [sys.executable]
    command = (mpiexec_command(processes) if processes > 1 else []) + command
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([*command, str(Path(__file__).resolve()), "--ranks-worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RANKS ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{processes} x {threads} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[0][len("RANKS "):])


def ranks_report(args) -> int:
    """1 process x 1 thread, 1 x N threads, N processes x 1 thread on the same global batch;
    then, on paper, what exchanging each zoo network's gradients costs on fast links."""
    n = args.ranks
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; steps per repeat {args.steps}, "
          f"repeats {args.repeats} (median, slowest rank), warm-up {args.warmup}\n")
    rows = []
    for arch in args.archs:
        for batch in args.batch_sizes:
            for processes, threads in ((1, 1), (1, n), (n, 1)):
                row = run_ranks_case(arch, batch, processes, threads, args)
                rows.append(row)
                print(f"{arch} batch {batch}: {processes} x {threads}: {row['img_s']:.0f} img/s", flush=True)
    for i in range(0, len(rows), 3):  # speed-ups against 1 process x 1 thread
        for row in rows[i:i + 3]:
            row["speedup"] = row["img_s"] / rows[i]["img_s"]
    print("\n| network | global batch | processes x threads | train img/s | ms / step | compute ms | "
          "allreduce ms (with waiting) | allreduce alone ms | vs 1 x 1 |\n" + "|---" * 9 + "|")
    for r in rows:
        print(f"| {r['arch']} | {r['batch']} | {r['processes']} x {r['threads']} | {r['img_s']:.0f} | "
              f"{r['step_s'] * 1e3:.2f} | {r['compute_s'] * 1e3:.2f} | {r['allreduce_s'] * 1e3:.3f} | "
              f"{r['allreduce_alone_s'] * 1e3:.3f} | {r['speedup']:.2f} |")
    paper = paper_scaling(args.batch_sizes[0], args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.machine(), "cores": os.cpu_count(), "rows": rows, "paper": paper}, f,
                      indent=2)
        print(f"\nwritten to {args.json}")
    return 0


def paper_scaling(batch: int, args) -> list:
    """Gradient bytes per step of every zoo network, the ring allreduce time on each link at
    a few rank counts, and where it overtakes the compute time per rank, ``t(batch) / N``
    with ``t`` measured here on one core (a rank per core; GPU compute is not measured)."""
    from threadpoolctl import threadpool_limits
    from gpucnn.distributed import SingleProcess, gradient_bytes, ring_allreduce_seconds
    from gpucnn.zoo import ARCHS
    links = ", ".join(f"{name}: {bw / 1e9:g} GB/s per direction, {lat * 1e6:g} us per message (assumed)"
                      for name, (bw, lat, _) in LINKS.items())
    print(f"\nOn paper: ring allreduce = 2(N-1)/N x bytes / bandwidth + 2(N-1) x latency; {links}. "
          f"CPU compute: measured here on 1 core (the fastest of a few steps), global batch {batch}, "
          "split evenly over N ranks of 1 core each. GPU compute is not measured: on NVLink, "
          "communication dominates at N GPUs when a GPU's step on its batch / N images is shorter "
          "than the allreduce time shown.\n")
    head = ["network", "input", "parameters", "gradient KB / step", f"CPU compute ms / step (batch {batch}, 1 core)"]
    for name, (_, _, cpu) in LINKS.items():
        head += [f"{name}: allreduce us at N = {' / '.join(map(str, PAPER_RANKS))}"]
        head += [f"CPU ranks on the {name}: communication > compute from N ="] if cpu else []
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    rows = []
    for arch in ARCHS:
        case = zoo_case(arch, batch)
        threads = get_num_threads()
        set_num_threads(1)
        with threadpool_limits(1):
            timed_steps(case, SingleProcess(), 1)  # warm-up
            compute = min(timed_steps(case, SingleProcess(), 1)[0] for _ in range(min(3, args.repeats)))
        set_num_threads(threads)
        nbytes = gradient_bytes(case[0])
        row = {"arch": arch, "input": ZOO_SHAPES[arch], "parameters": case[0].num_params, "gradient_bytes": nbytes,
               "cpu_compute_s": compute}
        cells = [arch, "x".join(map(str, ZOO_SHAPES[arch])), f"{case[0].num_params:,}", f"{nbytes / 1e3:.0f}",
                 f"{compute * 1e3:.1f}"]
        for name, (bandwidth, latency, cpu) in LINKS.items():
            cost = {N: ring_allreduce_seconds(nbytes, N, bandwidth, latency)
                    for N in range(2, max(batch, *PAPER_RANKS) + 1)}
            row[name] = {"allreduce_s": {N: cost[N] for N in PAPER_RANKS}}
            cells.append(" / ".join(f"{cost[N] * 1e6:.0f}" for N in PAPER_RANKS))
            if cpu:  # the first N (at most 1 image per rank) whose allreduce outlasts a rank's compute
                crossover = next((N for N in range(2, batch + 1) if cost[N] > compute / N), None)
                row[name]["crossover"] = crossover
                cells.append(str(crossover) if crossover else f"not up to N = {batch} (1 image per rank)")
        rows.append(row)
        print("| " + " | ".join(cells) + " |", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
