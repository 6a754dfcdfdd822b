"""scripts/benchmark.py's command line: its options, their defaults and the checks between them."""
from __future__ import annotations

import argparse

from argtypes import ArgumentParser, positive_float  # scripts/argtypes.py, shared by the commands
from gpucnn.backends.kernel_groups import ENV_VAR as KERNELS_ENV
from gpucnn.backends.kernel_groups import parse_selection

from .gpu_model import GPUS
from .networks import ARCHS, ZOO_ARCHS

# the first line of scripts/benchmark.py's docstring
DESCRIPTION = "Training and evaluation throughput of gpucnn, side by side with PyTorch on the same device."


def kernel_spec(text: str) -> str:
    """An argparse type: a fused-kernel selection as get_backend(kernels=...) takes it."""
    try:
        parse_selection(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"got {text!r}: {exc}") from None
    return text


def parse_args(argv, description: str = DESCRIPTION):
    p = ArgumentParser(prog="benchmark.py", description=description)  # refusals: exit 2, at most two lines
    p.add_argument("--device", choices=("auto", "cpu", "gpu", "all"), default=None,
                   help="gpucnn backends to time; 'all' (the default) = the CPU plus the GPU when usable; "
                        "'gpu' with --gpu-targets")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ZOO_ARCHS),
                   help="networks (default: the zoo's; conv-bn and vgg are the benchmark's own, "
                        "scripts/benchmarking/networks.py)")
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
    p.add_argument("--graphs", nargs="+", choices=("off", "on"), metavar="off|on",
                   help="replay gpucnn's GPU training steps from CUDA graphs (get_backend(graphs=...), "
                        "gpucnn.backends.cuda_graphs); 'off on': every GPU case once each. Default: $GPUCNN_CUDA_GRAPHS, else off")
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
        p.error(f"expected positive --batch-sizes, --threads, --steps and --repeats and a non-negative --warmup, "
                f"got --batch-sizes {' '.join(map(str, args.batch_sizes))} --threads {args.threads} "
                f"--steps {args.steps} --repeats {args.repeats} --warmup {args.warmup}")
    check_outputs(p, args)
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


def check_outputs(p, args) -> None:
    """--json and --plot are written at the end of a run of minutes: refuse (exit 2) a path
    that cannot be written, or --layers without PyTorch to compare with, before any timing."""
    from importlib.util import find_spec

    from gpucnn.training.checkpoint import check_output_path
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            try:
                check_output_path(path)
                if flag == "--plot":
                    from gpucnn.training.plot import check_plot_path
                    check_plot_path(path)  # a format matplotlib writes; matplotlib installed
            except (ValueError, ImportError) as exc:
                p.error(f"argument {flag}: {exc}")
    if args.layers and find_spec("torch") is None:
        p.error("argument --layers: compares with PyTorch's layers, which needs torch: pip install torch")
