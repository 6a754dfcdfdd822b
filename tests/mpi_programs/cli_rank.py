"""Run scripts/train.py as one rank of an mpiexec job, recording what this rank says and writes.

    mpiexec -n 2 python -m mpi4py tests/mpi_programs/cli_rank.py OUT [--fail-at STEP] -- TRAIN ARGS...

OUT/rank{R}.out and OUT/rank{R}.err receive this rank's stdout and stderr (file descriptors
1 and 2, so whatever MPI itself prints there too); OUT/rank{R}.files.json lists the files
under OUT/run that this rank created or replaced (from Python's audit events), written
when the CLI returns. ``--fail-at STEP``: rank 1 raises RuntimeError in its STEP-th
backward pass (a failure of one rank, in the middle of training).
"""
import json
import os
import runpy
import sys
from pathlib import Path

from mpi4py import MPI

TRAIN = Path(__file__).resolve().parents[2] / "scripts" / "train.py"

out_dir = Path(sys.argv[1])
split = sys.argv.index("--")
options, train_args = sys.argv[2:split], sys.argv[split + 1:]
rank = MPI.COMM_WORLD.Get_rank()

for fd, suffix in ((1, "out"), (2, "err")):  # this rank's own stdout and stderr
    target = os.open(out_dir / f"rank{rank}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(target, fd)
    os.close(target)

watched = str((out_dir / "run").resolve())
written = set()


def record(event, args):
    """Files created or replaced under OUT/run: open() for writing, os.open with O_CREAT, renames."""
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR)):
            written.add(os.path.abspath(path))
    elif event in ("os.rename", "os.replace") and isinstance(args[1], (str, os.PathLike)):
        written.add(os.path.abspath(args[1]))


sys.addaudithook(record)

if "--fail-at" in options and rank == 1:
    import gpucnn.nn.model

    fail_at = int(options[options.index("--fail-at") + 1])
    backward, calls = gpucnn.nn.model.Sequential.backward, []

    def failing_backward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError(f"rank 1 failed on purpose in backward pass {fail_at}")
        return backward(self, *args, **kwargs)

    gpucnn.nn.model.Sequential.backward = failing_backward

sys.argv = [str(TRAIN), *train_args]
try:
    runpy.run_path(str(TRAIN), run_name="__main__")
finally:
    mine = sorted(os.path.relpath(p, watched) for p in written if p.startswith(watched + os.sep))
    (out_dir / f"rank{rank}.files.json").write_text(json.dumps(mine))
