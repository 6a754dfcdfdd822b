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
scripts/benchmarking/profile_step.py) times images/s, over the peak. Then it sweeps batch size and
image size for simple and lenet (--plot draws the sweep). Timings are printed, never
asserted.

On a GPU (--device gpu, or 'all' with one present) every row stands beside the PyTorch
twin on CUDA: the same network and batch, both uploaded before any step, TF32 off on
both sides, cudnn.benchmark at PyTorch's default (False), synchronised timing, repeats
interleaved. Its % column is a share of the GPU's own SGEMM peak, measured in the same
run through cuBLAS; both sides' device-memory high-water marks and the host cost of a
few CuPy calls are printed and recorded (scripts/benchmarking/gpu_bench.py). Without CUDA in torch
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
(scripts/benchmarking/gpu_model.py, at --launch-us of host time per launch): a prediction, not a
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
# tensor cores while PyTorch's twin runs them in full FP32 (scripts/benchmarking/gpu_bench.py).
TF32_ENV = ({"CUPY_TF32": os.environ.pop("CUPY_TF32")}
            if os.environ.get("CUPY_TF32", "0").strip() not in ("", "0") else {})

import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py, scripts/benchmarking/

from gpucnn.backends.backend import get_backend, gpu_status  # noqa: E402
from gpucnn.backends.kernel_groups import ENV_VAR as KERNELS_ENV  # noqa: E402
from gpucnn.backends.cpu_threads import set_num_threads  # noqa: E402
from benchmarking.cli import parse_args  # noqa: E402
from cli_output import quiet_when_stdout_closes  # noqa: E402
from benchmarking.gemm_floor import gemm_floor_seconds  # noqa: E402
from benchmarking.gpu_bench import gpu_setup, gpu_table, target_plan  # noqa: E402
from benchmarking.measure import REWARM_STEPS, SETTLE_SECONDS, SgemmPeak, cpu_name, measure  # noqa: E402
from benchmarking.networks import INPUT_SHAPES  # noqa: E402
from benchmarking.profile_step import profile_step, profile_table  # noqa: E402
from benchmarking.ranks import ranks_report, ranks_worker  # noqa: E402
from benchmarking.rows import format_row, make_cases, peak_fraction, run_case, settle, table  # noqa: E402
from benchmarking.scaling import plot_scaling, scaling_points, scaling_table  # noqa: E402


def gpu_model_main(args):
    from benchmarking import gpu_model
    rows = gpu_model.report(args.archs, args.batch_sizes, args.gpu, INPUT_SHAPES, args.optimizer, args.launch_us)
    write_json(args.json, {"prediction": True, "gpu": args.gpu, "optimizer": args.optimizer, "rows": rows,
                           "launch_us": rows[0]["launch_us_per_call"] if rows else args.launch_us})


def write_json(path, result):
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwritten to {path}")


@quiet_when_stdout_closes  # `benchmark.py | head` ends quietly
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
    set_num_threads(args.threads)  # gpucnn's own threads for chunked layer work (gpucnn.backends.cpu_threads)
    if args.layers:
        import torch
        from benchmarking.layer_bench import layer_table
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
        print(f"benchmark.py: error: --gpu-targets expected a usable GPU, got none: {gpu_status()[1]}; run it on "
              "a GPU machine (or time the CPU with --archs and --batch-sizes)", file=sys.stderr)
        return 2
    if args.device == "all":
        names = ["cpu"] + (["gpu"] if gpu_status()[0] is not None else [])
    else:
        names = [args.device]
    # (device, fused-kernel selection): a GPU once per --kernels SPEC; the selection belongs to
    # CuPy's module, so each GPU case makes its backend again (backend_for) right before it runs
    plan = [(n, spec, graphs) for n in names for spec in ((args.kernels or [None]) if n == "gpu" else [None])
            for graphs in (([g == "on" for g in args.graphs] if args.graphs else [None]) if n == "gpu" else [None])]
    backends = [backend_for(*case) for case in plan]
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
                "groups": sorted(b.kernels), "graphs": b.graphs} for (n, spec, _), b in zip(plan, backends)
               if b.name == "gpu"]
    print("gpucnn fused kernels (GPU rows): " + ("; ".join(f"{k['spec']} -> {', '.join(k['groups']) or 'none'}"
                                                       + (" + CUDA graphs" if k["graphs"] else "")
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
                for case in plan:
                    backend = backend_for(*case)
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
                        print(f"matrix multiplies alone (scripts/benchmarking/gemm_floor.py): {floor * 1e3:.3f} ms, "
                              f"{100 * floor / step:.0f}% of the step")
                        profile["gemm_floor_ms"] = floor * 1e3
                    print(flush=True)
                    result["profiles"].append(profile)
        write_json(args.json, result)
        return 0

    peaks = {"cpu": peak, "gpu": result["gpu_sgemm_peak_flops"]}
    rows = []
    for arch, batch, schedule, target in case_plan(args):
        for name, spec, graphs in plan:
            row = run_case(arch, batch, INPUT_SHAPES[arch], backend_for(name, spec, graphs), torch, args, clock,
                           peaks, schedule=schedule)
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
        print("\n".join(f"note: {r['arch']} batch {r['batch']} ran without CUDA graphs: {r['graph_note']}"
                        for r in gpu_rows if r.get("graph_note")))
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


def backend_for(name: str, spec, graphs=None):
    """The backend of one case: the GPU's with the fused-kernel selection ``spec`` and CUDA
    graphs on or off (None: $GPUCNN_CUDA_GRAPHS)."""
    return get_backend(name, kernels=spec, graphs=graphs) if name == "gpu" else get_backend(name)


def case_plan(args) -> list:
    """[(arch, batch, (warmup, steps, repeats) or None for the command line's, target ratio)]."""
    if args.gpu_targets:
        return target_plan(args.quick)
    return [(arch, batch, None, None) for arch in args.archs for batch in args.batch_sizes]


if __name__ == "__main__":
    sys.exit(main())
