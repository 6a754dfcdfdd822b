"""Launching real MPI jobs from the tests: the mpiexec that belongs to this Python, an
environment with this worktree's gpucnn and one BLAS thread per rank, a timeout that
kills the whole job (a hang fails the test instead of stalling the suite)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = REPO / "tests" / "mpi_programs"


def mpiexec(n: int) -> list[str]:
    """The mpiexec that belongs to this Python's MPI (the mpich wheel puts it next to python)."""
    beside = Path(sys.executable).parent / "mpiexec"
    exe = str(beside) if beside.exists() else shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpiexec not found; install MPI with: pip install 'gpucnn[mpi]'")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = []
    if "Open MPI" in version or "OpenRTE" in version:
        flags.append("--oversubscribe")
        if os.geteuid() == 0:
            flags.append("--allow-run-as-root")
    return [exe, *flags, "-n", str(n)]


def subprocess_env() -> dict:
    """This worktree's gpucnn and tests/ helpers first; one BLAS thread per rank."""
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                MKL_NUM_THREADS="1")


def start_job(cmd: list[str], cwd=REPO, env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env() if env is None else env, cwd=cwd, start_new_session=True)


def wait_job(proc: subprocess.Popen, cmd: list[str], timeout: float, start: float):
    """-> (returncode, stdout, stderr, seconds since ``start``); past ``timeout`` the job is killed
    and the test fails."""
    try:
        out, err = proc.communicate(timeout=max(timeout - (time.monotonic() - start), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and the ranks it started
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish within {timeout} s (a hang):\n{err[-3000:]}")
    return proc.returncode, out, err, time.monotonic() - start


def run_job(cmd: list[str], timeout: float, cwd=REPO, env=None):
    """-> (returncode, stdout, stderr, seconds); a job past ``timeout`` is killed and fails the test."""
    start = time.monotonic()
    return wait_job(start_job(cmd, cwd, env), cmd, timeout, start)


def run_mpi(n: int, program, *args, timeout: float = 180, cwd=REPO, env=None):
    """``mpiexec -n n python -m mpi4py program args...``; ``program`` relative to tests/mpi_programs;
    ``env``: the ranks' environment (default: subprocess_env())."""
    cmd = [*mpiexec(n), sys.executable, "-m", "mpi4py", str(PROGRAMS / program), *map(str, args)]
    return run_job(cmd, timeout, cwd, env)
