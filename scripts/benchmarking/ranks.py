"""Data-parallel scaling, ``scripts/benchmark.py --ranks N``: one process x 1 thread, 1 x N
threads and N processes x 1 thread (mpiexec, each rank running scripts/benchmark.py
--ranks-worker) on the same global batch, with the allreduce time per step; then, on paper,
the gradient bytes and ring-allreduce cost of every zoo network on fast links."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gpucnn.backends.backend import get_backend
from gpucnn.nn.losses import SoftmaxCrossEntropy
from gpucnn.optim import Adam
from gpucnn.backends.cpu_threads import get_num_threads, set_num_threads

from .rows import CLASSES

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmark.py"  # what each rank runs

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
    from gpucnn.nn.zoo import build_model as zoo_model
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
    proc = subprocess.run([*command, str(BENCHMARK), "--ranks-worker", json.dumps(spec)],
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
    from gpucnn.nn.zoo import ARCHS
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
