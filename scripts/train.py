#!/usr/bin/env python
r"""Train a CNN on MNIST, Fashion-MNIST, CIFAR-10, scikit-learn's 8x8 digits or your own
.npz file: a thin CLI over gpucnn.train.

    python scripts/train.py                      # simple conv-pool-softmax net, 3 epochs
    python scripts/train.py --arch lenet-bn --augment shift:2 --schedule onecycle --optimizer adamw \
        --lr 0.01 --batch-size 128 --epochs 12   # 99.59% on MNIST
    python scripts/train.py --dataset cifar10 --download --arch cifar-small --augment shift:4,flip
    python scripts/train.py --checkpoint runs/c.npz --metrics-json runs/c.json --plot runs/c.png
    mpiexec -n 2 python -m mpi4py scripts/train.py --distributed --batch-size 128   # 2 processes

Every flag is checked before any data loads: a bad value, an output path that cannot
be written or a checkpoint that cannot be resumed exits with status 2 and one line.
Log lines and the final result go to stdout, progress bars to stderr (only when it is a
terminal). Ctrl-C exits with 130 and prints the command that resumes the run.
"""
from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
import traceback
import warnings
from pathlib import Path

# After every matrix multiply, OpenBLAS's idle worker threads spin for about 0.1 s before they
# sleep, on the cores that gpucnn's own threads (gpucnn.parallel) and the next layer's NumPy
# passes need. This process is gpucnn's alone, so they sleep at once (OpenBLAS reads this when
# NumPy loads it, below; a value the user set wins). On the 2-core development VM epochs ran
# 5-15% faster with it (simple and lenet-bn, three runs each way; README, CPU speed).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py

from argtypes import (non_negative_float, non_negative_int, open_fraction, positive_float,  # noqa: E402
                      positive_int, unit_interval)
from gpucnn.config import (ARCHS, DEVICES, FILE_DATASETS, OPTIMIZERS, SCHEDULE_NAMES,  # noqa: E402
                           TrainConfig)

DEFAULTS = TrainConfig()
DATA_ROOT = REPO / "data"  # a named dataset's files are looked for in DATA_ROOT/<name>


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows each option's default once, after its
    help, unless the help already says it or there is none to show (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text




def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.strip(), formatter_class=HelpFormatter)
    p.add_argument("--device", choices=DEVICES, default=DEFAULTS.device,
                   help="auto: the GPU when usable; gpu without one falls back to the CPU with a warning")
    # data
    p.add_argument("--dataset", default=DEFAULTS.dataset, metavar="NAME|FILE.npz|FOLDER",
                   help=f"{', '.join(FILE_DATASETS)}: files in --data-dir; digits: scikit-learn's bundled "
                        "8x8 digits, no files; your own .npz file holding x_train, y_train, x_test, y_test "
                        "(images (N, H, W[, C]), uint8 or float in [0, 1], optionally class_names); or a folder "
                        "of images with one subfolder per class (.png .jpg .jpeg .bmp .gif .webp; train/ and "
                        "test/ [and val/] subfolders are used as given, else 20%% of each class is held out "
                        "for testing); needs Pillow: pip install 'gpucnn[images]'")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="--dataset FOLDER: read the images as grayscale (1) or RGB (3) (default: 1 when every "
                        "image is grayscale, else 3)")
    p.add_argument("--image-size", metavar="HxW",
                   help="--dataset FOLDER: resize every image to H x W pixels (default: the most common size)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="--dataset FOLDER: where the decoded images are cached, keyed by the files' names, "
                        "sizes and times and the decoding settings (default: $XDG_CACHE_HOME/gpucnn/images "
                        "or ~/.cache/gpucnn/images)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="--dataset FOLDER: leave out files that cannot be decoded, saying how many "
                        "(without it they are listed and nothing trains)")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"folder of the dataset's files, only with --dataset {', '.join(FILE_DATASETS)} "
                        f"(default: {DATA_ROOT}/<dataset>)")
    p.add_argument("--download", action="store_true",
                   help="fetch missing dataset files from the public mirrors, checksum-verified")
    p.add_argument("--limit-train", type=positive_int, metavar="N",
                   help="train (and validate) on a stratified subset of N training images (default: all)")
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="test on a stratified subset of N test images (default: all)")
    p.add_argument("--val-fraction", type=open_fraction, default=DEFAULTS.val_fraction, metavar="F",
                   help="fraction of the training images held out for validation (stratified)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=DEFAULTS.normalize,
                   help="first layer: Normalize by the training split's per-channel mean and std, saved "
                        "with the model, so it takes raw images [0, 1] (default: on)")
    p.add_argument("--augment", default=DEFAULTS.augment, metavar="SPEC",
                   help="training-batch augmentation: shift:K (random translation by up to K pixels), "
                        "flip (random horizontal mirror; refused for mnist and digits: a mirrored digit is "
                        "another symbol), both with a comma (shift:4,flip), or none")
    # model and training
    p.add_argument("--arch", default=DEFAULTS.arch, metavar="NAME|FILE.json",
                   help=f"{', '.join(ARCHS)}, or a JSON file holding the layer list that "
                        "Sequential.architecture() writes; checked against the data's shapes before training")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, metavar="N",
                   help="total epochs, also when resuming")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, metavar="N",
                   help="images per training step")
    p.add_argument("--lr", type=positive_float, default=DEFAULTS.lr,
                   help="learning rate; the peak rate of a --schedule")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer,
                   help="sgd: plain gradient descent; momentum / nesterov: SGD with (Nesterov) --momentum; "
                        "adam: Adam; adamw: Adam with decoupled weight decay")
    p.add_argument("--momentum", type=unit_interval, metavar="BETA",
                   help=f"momentum of --optimizer momentum or nesterov, only with them "
                        f"(default: {DEFAULTS.momentum})")
    p.add_argument("--weight-decay", type=non_negative_float, metavar="W",
                   help="L2 penalty added to the gradient (sgd, momentum, nesterov, adam: as torch), "
                        "decoupled decay for adamw (default: 0, and 0.01 for adamw)")
    p.add_argument("--label-smoothing", type=unit_interval, default=DEFAULTS.label_smoothing, metavar="E",
                   help="train against (1 - E) * one-hot + E / classes, as torch; validation and test "
                        "losses stay plain cross-entropy")
    p.add_argument("--schedule", choices=SCHEDULE_NAMES, default=DEFAULTS.schedule,
                   help="learning rate per batch: constant; step (x0.1 after each third); cosine (to 0); "
                        "onecycle (rises for 30%%, then falls). It spans the --epochs of the first run, "
                        "so a run with a step, cosine or onecycle schedule resumes only up to those epochs")
    p.add_argument("--warmup-epochs", type=non_negative_int, default=DEFAULTS.warmup_epochs, metavar="N",
                   help="raise the rate linearly from 0 over the first N epochs; not with onecycle, "
                        "which warms up itself")
    p.add_argument("--seed", type=non_negative_int, default=DEFAULTS.seed,
                   help="seeds the weights, the data subsets, the validation split, the batch order, "
                        "the augmentations and the dropout masks")
    # files
    p.add_argument("--checkpoint", metavar="PATH",
                   help="save weights, optimizer, schedule and RNG state after every epoch (atomically)")
    p.add_argument("--resume", metavar="PATH",
                   help="continue the run of a --checkpoint file: its data, model and optimizer settings are "
                        "used (--resume PATH --epochs N is enough); a flag given that contradicts them is refused")
    p.add_argument("--metrics-json", metavar="PATH", help="write history and test metrics as JSON")
    p.add_argument("--plot", metavar="PATH",
                   help="write a figure (.png, .pdf, .svg, ...): curves, confusion matrix, first-layer kernels")
    p.add_argument("--log-dir", metavar="DIR",
                   help="write TensorBoard event files while training (tensorboard --logdir DIR): per step the "
                        "training loss and learning rate, per epoch losses and accuracies, at the end the "
                        "first layer's filters; needs pip install 'gpucnn[tensorboard]'")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=DEFAULTS.verbose,
                   help="0: only the final test accuracy, 1: progress bars on a terminal, "
                        "2: one line per epoch")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the processes of an MPI launch: mpiexec -n N python "
                        "-m mpi4py scripts/train.py --distributed ...; --batch-size is the global batch "
                        "(a multiple of N); on GPUs rank r uses GPU local_rank %% device_count over NCCL; "
                        "only rank 0 prints and writes files")
    return p


NOT_CONFIG = ("metrics_json", "plot")  # flags of this script, not of the run


def config_from(args) -> TrainConfig:
    fields = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    fields["momentum"] = DEFAULTS.momentum if args.momentum is None else args.momentum
    if args.data_dir is None and args.dataset in FILE_DATASETS:
        fields["data_dir"] = str(DATA_ROOT / args.dataset)  # the checkout's data, from any working folder
    return TrainConfig(**fields)


def given_flags(argv) -> set:
    """The destinations of the flags given on the command line ``argv`` (None: sys.argv),
    whatever their value: a parser whose every default is "absent" parses it again."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def resumed_config(p, args, given: set) -> TrainConfig:
    """The config that continues --resume's run: its settings, this run's given flags on top;
    exits with 2 listing every given flag that contradicts it."""
    from gpucnn.checkpoint import CheckpointError, load_checkpoint
    from gpucnn.config import FlagError, resume_config
    try:
        meta = load_checkpoint(args.resume)["meta"]
        asked = {dest: getattr(args, dest) for dest in given if dest not in NOT_CONFIG}
        if asked.get("dataset") in FILE_DATASETS and "data_dir" not in asked:
            asked["data_dir"] = str(DATA_ROOT / asked["dataset"])
        return resume_config(meta, {**asked, "resume": args.resume})
    except (CheckpointError, FlagError) as exc:
        p.error(f"argument --resume: {exc}")


def check_args(p, args, given: set | None = None) -> TrainConfig:
    """Everything that can be checked without loading data; exits with 2 on the first problem.
    ``given``: the flags on the command line (with --resume the others come from the checkpoint)."""
    config = resumed_config(p, args, given if given is not None else set(vars(args))) if args.resume else None
    optimizer = config.optimizer if config is not None else args.optimizer
    # nothing the user gives is silently ignored
    if args.momentum is not None and optimizer not in ("momentum", "nesterov"):
        p.error(f"argument --momentum: only used with --optimizer momentum or nesterov, "
                f"got --optimizer {optimizer}")
    if args.distributed:
        from importlib.util import find_spec
        from gpucnn.distributed import MPI_MISSING
        if find_spec("mpi4py") is None:
            p.error(f"argument {MPI_MISSING}")
    launched, launch_rank = _launched_by_mpiexec()
    if launched > 1 and not args.distributed and launch_rank == 0:
        warnings.warn(f"mpiexec started {launched} processes but --distributed is not given: each trains "
                      "alone on all the data (and they write the same files); add --distributed")
    config = config_from(args) if config is None else config
    try:
        config.validate()  # also probes the --checkpoint folder
    except (ValueError, ImportError) as exc:
        p.error(f"argument {exc}")

    from gpucnn.checkpoint import check_output_path
    outputs = {"--checkpoint": config.checkpoint, "--metrics-json": args.metrics_json, "--plot": args.plot}
    for flag in ("--metrics-json", "--plot"):
        if outputs[flag] is None:
            continue
        try:
            check_output_path(outputs[flag])
            if flag == "--plot":
                from gpucnn.plot import check_plot_path
                check_plot_path(outputs[flag])
        except (ValueError, ImportError) as exc:
            p.error(f"argument {flag}: {exc}")
    given = [(flag, os.path.realpath(path)) for flag, path in outputs.items() if path is not None]
    if args.resume:
        given.append(("--resume", os.path.realpath(args.resume)))
    for i, (flag, path) in enumerate(given):
        for other, other_path in given[:i]:
            if path == other_path and {flag, other} != {"--checkpoint", "--resume"}:
                p.error(f"argument {flag}: the same file as {other} ({path}); give each output its own file")

    if args.resume:
        from gpucnn.checkpoint import CheckpointError, load_checkpoint
        from gpucnn.config import FlagError, check_resume
        try:
            check_resume(config, load_checkpoint(args.resume)["meta"])
        except (CheckpointError, FlagError) as exc:
            p.error(f"argument --resume: {exc}")
    return config


def resume_command(p, args, checkpoint: str) -> str:
    """The command line that continues this run from ``checkpoint``: every flag given
    (as parsed, so abbreviations and --flag=value forms come out whole), --resume and
    --checkpoint included, so following it literally keeps checkpointing."""
    words = [os.path.relpath(__file__) if not sys.argv[0].endswith("train.py") else sys.argv[0]]
    for action in p._actions:
        if not action.option_strings or action.dest in ("help", "resume", "checkpoint"):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(action.option_strings[0] if value else action.option_strings[1])  # --x / --no-x
            continue
        flag = action.option_strings[-1]
        words += [flag] if action.nargs == 0 else [flag, str(value)]
    words += ["--resume", checkpoint, "--checkpoint", args.checkpoint or checkpoint]
    launcher = f"mpiexec -n {_job.size} python -m mpi4py " if _job is not None else "python "
    return launcher + shlex.join(words)


# -- output that survives a closed pipe ----------------------------------------------------
_gone = set()  # names of the standard streams whose reader has gone


def _silence(name: str) -> None:
    """Point sys.<name>'s file descriptor at os.devnull: later writes (and the flush at
    exit) go nowhere instead of raising BrokenPipeError."""
    _gone.add(name)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, getattr(sys, name).fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # not a real file (captured in tests): nothing to redirect
        pass


def say(*parts, stream: str = "stdout") -> bool:
    """print() + flush to sys.<stream>; False (and the stream silenced) when its reader has
    gone, as after Ctrl-C in `train.py | tee log` (SIGINT stops tee too)."""
    if stream in _gone:
        return False
    try:
        print(*parts, file=getattr(sys, stream), flush=True)
        return True
    except (BrokenPipeError, ValueError):
        _silence(stream)
        return False


def tell_user(text: str) -> None:
    """A message the user must see: stderr, else the terminal itself when stderr went
    into a pipe that is gone (`2>&1 | tee log` after Ctrl-C)."""
    if say(text, stream="stderr"):
        return
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(text + "\n")
    except OSError:
        pass


def one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


# -- several processes (--distributed under mpiexec): only rank 0 speaks; all end together ---
FAILED_RANK_WAIT = 5.0  # seconds a failed rank waits for the others before aborting the job
_job = None  # the ranks' communicator for ending together; None: one process


def _launched_by_mpiexec() -> tuple[int, int]:
    """(processes, this one's rank) that MPICH's or Open MPI's mpiexec says it started, from
    the environment it sets (MPI itself is not started); (1, 0) without a launcher."""
    for size, rank in (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")):
        if os.environ.get(size, "").isdigit() and os.environ.get(rank, "").isdigit():
            return int(os.environ[size]), int(os.environ[rank])
    return 1, 0


def _asks_distributed(argv) -> bool:
    """--distributed (or an abbreviation of it) among the options in ``argv``."""
    words = list(argv)
    words = words[:words.index("--")] if "--" in words else words
    return any(len(word) > 3 and "--distributed".startswith(word) for word in map(str, words))


def start_job(argv):
    """With --distributed under mpiexec -n N (N > 1): a communicator of the N ranks that
    nothing but :func:`finish` uses, and, on ranks other than 0, stdout silenced and
    stderr held (shown by finish only when this rank's failure is news). None otherwise:
    one process, as without --distributed (mpi4py is not even imported)."""
    if not _asks_distributed(argv):
        return None
    from gpucnn.distributed import get_communicator
    try:
        job = get_communicator()
    except ImportError:
        return None  # check_args says how to install mpi4py
    if job.size == 1:
        return None
    if not job.is_main:
        sys.stdout = open(os.devnull, "w")
        sys.stderr = io.StringIO()
    return job


def finish(job, code: int) -> int:
    """End this rank with the others: every rank gives its exit status. When all arrive,
    the job exits with the highest status, after a rank other than 0 that failed while
    rank 0 did not has told why. When a failed rank waits in vain (the others wait in a
    collective it left), it tells why and aborts the whole job."""
    statuses = job.exit_statuses(code, timeout=None if code == 0 else FAILED_RANK_WAIT)
    if code and not job.is_main and (statuses is None or statuses[1] == 0):
        held = sys.stderr.getvalue() if isinstance(sys.stderr, io.StringIO) else ""
        sys.__stderr__.write("".join(f"rank {job.rank}: {line}\n" for line in held.splitlines()))
        sys.__stderr__.flush()
    if statuses is None:
        job.abort(code)
    job.barrier()  # every message is out before any rank ends
    job.finalize()
    return statuses[0]


def main(argv=None):
    global _job
    warnings.formatwarning = one_line_warning  # e.g. the GPU fallback: one line, no source excerpt
    _gone.clear()
    _job = start_job(sys.argv[1:] if argv is None else argv)
    if _job is None:
        return cli(argv)
    try:
        code = cli(argv)
    except SystemExit as exc:  # argparse: a bad flag, --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # a failure of this rank alone: the others must not wait for it
        tell_user(traceback.format_exc().rstrip())
        code = 1
    return finish(_job, code)


def cli(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return train(parser, args, given_flags(argv))
    except KeyboardInterrupt:  # outside training: loading data, building, testing, writing
        tell_user("interrupted" + (f"; the last completed epoch is in {args.checkpoint}"
                                   if args.checkpoint and os.path.exists(args.checkpoint) else ""))
        return 130


def train(parser, args, given: set | None = None) -> int:
    config = check_args(parser, args, given)
    from gpucnn.checkpoint import CheckpointError
    from gpucnn.data import DataError
    from gpucnn.splits import SplitError
    from gpucnn.config import FlagError
    from gpucnn.report import write_metrics_json
    from gpucnn.train import NonFiniteLossError, TrainingInterrupted, run

    log = say if config.verbose else (lambda *a, **k: None)
    try:
        result = run(config, log=log)
    except (FlagError, SplitError) as exc:  # found once the labels are known: still a usage error
        tell_user(f"{parser.prog}: error: {exc}")
        return 2
    except (CheckpointError, DataError, NonFiniteLossError, ValueError, ImportError) as exc:
        tell_user(f"error: {exc}")
        return 1
    except OSError as exc:
        tell_user(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return 1
    except TrainingInterrupted as exc:
        tell_user(str(exc) + (f"\nresume with: {resume_command(parser, args, exc.checkpoint)}"
                              if exc.checkpoint else ""))
        return 130
    if _job is not None and not _job.is_main:
        return 0  # distributed: rank 0 writes the files and prints the result

    failed = False
    kept = (f"the trained model is kept in {config.checkpoint}" if config.checkpoint else
            "the trained model was not saved (no --checkpoint)")
    for flag, path in (("--metrics-json", args.metrics_json), ("--plot", args.plot)):
        if path is None:
            continue
        try:
            if flag == "--plot":
                from gpucnn.plot import plot_run
                plot_run(result, path)
            else:
                write_metrics_json(path, result)
            log(f"{flag[2:].replace('-json', '')} written to {path}")
        except (OSError, ValueError, RuntimeError) as exc:
            tell_user(f"error: could not write {flag} {path} ({exc}); {kept}")
            failed = True
    say(f"test accuracy: {result['test_acc']:.2%}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
