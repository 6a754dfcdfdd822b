#!/usr/bin/env python
r"""Train a CNN on MNIST, Fashion-MNIST, CIFAR-10, scikit-learn's 8x8 digits, your own
.npz file or folder of images: a thin CLI over gpucnn.training.run.

    python scripts/train.py                      # simple conv-pool-softmax net, 3 epochs
    python scripts/train.py --arch lenet-bn --augment shift:2 --schedule onecycle --optimizer adamw \
        --lr 0.01 --batch-size 128 --epochs 12   # the README's results table has its accuracy
    python scripts/train.py --dataset cifar10 --download --arch cifar-small --augment shift:4,flip
    python scripts/train.py --checkpoint runs/c.npz --metrics-json runs/c.json --plot runs/c.png
    python scripts/train.py --dataset shapes/ --image-size 32x32 --epochs 10 --checkpoint runs/shapes.npz
    mpiexec -n 2 python -m mpi4py scripts/train.py --distributed --batch-size 128   # 2 processes

Every flag is checked before any data loads: a bad value, an output path that cannot
be written or a checkpoint that cannot be resumed exits with status 2 and one line
(plus "try 'train.py --help'" for a bad flag); so does data that cannot be used (an
image folder with one class, a corrupt image). A failure exits with 1: a NaN loss, a
full disk (the message names the file, the space a save needs and the space free).
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
# sleep, on the cores that gpucnn's own threads (gpucnn.backends.cpu_threads) and the next layer's NumPy
# passes need. This process is gpucnn's alone, so they sleep at once (OpenBLAS reads this when
# NumPy loads it, below; a value the user set wins). On the 2-core development VM epochs ran
# 5-15% faster with it (simple and lenet-bn, three runs each way; README, CPU speed).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/train_flags.py, argtypes.py

import cli_output  # noqa: E402  (output that survives a closed pipe)
import train_flags  # noqa: E402  (the flags: the parser, the config they make, the checks before data)
from argtypes import one_line  # noqa: E402
from cli_output import say, tell_user  # noqa: E402
from train_flags import DATA_ROOT, check_args, given_flags  # noqa: E402,F401  (DATA_ROOT: tests read it here)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser (scripts/train_flags.py), this file's docstring above its flags."""
    return train_flags.build_parser(description=__doc__.strip())


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


def one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


# -- several processes (--distributed under mpiexec): only rank 0 speaks; all end together ---
FAILED_RANK_WAIT = 5.0  # seconds a failed rank waits for the others before aborting the job
_job = None  # the ranks' communicator for ending together; None: one process


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
    cli_output.reset()
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


def refused(parser, exc) -> int:
    """Bad input found after the flags were checked (the data, a checkpoint): one line, 2."""
    tell_user(f"{parser.prog}: error: {one_line(exc)}")
    return 2


def train(parser, args, given: set | None = None) -> int:
    """Check the flags (exit 2 on bad input), run, write the outputs. Exit status: 0; 2 for
    bad input, also when found in the data (an image folder with one class, a corrupt
    image); 1 for a failure (NaN loss, a full disk, a failed download, a crash); 130 for
    Ctrl-C."""
    from gpucnn.fileio import DiskFullError
    try:
        config = check_args(parser, args, given)
    except DiskFullError as exc:  # the --checkpoint probe found the device full: a failure
        tell_user(f"error: {exc}")
        return 1
    from gpucnn.training.checkpoint import CheckpointError
    from gpucnn.data.batches import DataError, is_download_failure
    from gpucnn.data.splits import SplitError
    from gpucnn.training.config import FlagError
    from gpucnn.training.report import write_metrics_json
    from gpucnn.training.run import NonFiniteLossError, TrainingInterrupted, run

    log = say if config.verbose else (lambda *a, **k: None)
    try:
        result = run(config, log=log)
    except (FlagError, SplitError, CheckpointError) as exc:  # found once the data are known: bad input
        return refused(parser, exc)
    except DataError as exc:  # data that cannot be used (missing, corrupt, one class): bad input
        if not is_download_failure(exc):
            return refused(parser, exc)
        tell_user(f"error: {exc}")
        return 1
    except (NonFiniteLossError, ValueError, ImportError) as exc:
        tell_user(f"error: {exc}")
        return 1
    except DiskFullError as exc:  # names the file, the space a save needs and is free, the epoch kept
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
                from gpucnn.training.plot import plot_run
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
