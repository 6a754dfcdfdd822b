"""scripts/train.py --distributed on real mpiexec jobs: 2 ranks train what 1 process trains,
only rank 0 speaks and writes, a checkpoint resumes on another number of processes, bad
input is refused once, a failing rank or Ctrl-C ends the whole job in seconds."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

import gpucnn.training.run
from gpucnn.training.checkpoint import load_checkpoint
from gpucnn.training.run import TrainConfig, run
from mpirun import PROGRAMS, REPO, mpiexec, run_job, start_job, wait_job

TRAIN = REPO / "scripts" / "train.py"
# 1293 training digits in global batches of 16: 81 steps per epoch, the last one of 13
# images split 7 / 6 between the ranks
DIGITS = dict(dataset="digits", batch_size=16, seed=2, device="cpu")  # CPU ranks over MPI (NCCL: test_distributed.py)
EPOCHS = 3  # 243 optimizer steps


def quiet(*args, **kwargs):
    pass


def flags(**settings) -> list[str]:
    return [word for key, value in settings.items() for word in (f"--{key.replace('_', '-')}", str(value))]


def run_ranks(n: int, out_dir: Path, *train_args, fail_at=None, timeout=120):
    """scripts/train.py on n ranks through tests/mpi_programs/cli_rank.py -> (returncode,
    seconds, {rank: (stdout, stderr, files written under out_dir/run)})."""
    (out_dir / "run").mkdir(parents=True, exist_ok=True)
    options = ["--fail-at", str(fail_at)] if fail_at else []
    rc, _, err, seconds = run_job([*mpiexec(n), sys.executable, "-m", "mpi4py", str(PROGRAMS / "cli_rank.py"),
                                   str(out_dir), *options, "--", *map(str, train_args)], timeout)
    ranks = {}
    for r in range(n):
        files = out_dir / f"rank{r}.files.json"
        ranks[r] = ((out_dir / f"rank{r}.out").read_text(), (out_dir / f"rank{r}.err").read_text(),
                    json.loads(files.read_text()) if files.exists() else None)
    return rc, seconds, ranks, err


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank run with every output: checkpoint, metrics JSON, figure."""
    out = tmp_path_factory.mktemp("two_ranks")
    run_dir = out / "run"
    rc, _, ranks, err = run_ranks(2, out, "--distributed", *flags(epochs=EPOCHS, verbose=2, **DIGITS),
                                  "--checkpoint", run_dir / "c.npz", "--metrics-json", run_dir / "m.json",
                                  "--plot", run_dir / "p.png")
    assert rc == 0, f"rank 0:\n{ranks[0][1]}\nrank 1:\n{ranks[1][1]}\n{err[-3000:]}"
    return run_dir, ranks


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    path = tmp_path_factory.mktemp("one_process") / "c.npz"
    result = run(TrainConfig(epochs=EPOCHS, checkpoint=str(path), verbose=0, **DIGITS), log=quiet)
    return path, result


def assert_same_training(a: dict, b: dict, rtol=1e-5, atol=1e-6):
    """Two checkpoints hold the same weights and optimizer buffers (within float32 summation
    order), the same epoch, optimizer steps and data generator state."""
    for key in a["params"]:
        assert_allclose(a["params"][key], b["params"][key], rtol=rtol, atol=atol, err_msg=key)
    for key, buffers in a["optimizer_state"]["state"].items():
        for name, value in buffers.items():
            assert_allclose(value, b["optimizer_state"]["state"][key][name], rtol=rtol, atol=atol,
                            err_msg=f"{key}/{name}")
    assert {k: v for k, v in a["optimizer_state"].items() if k != "state"} == \
           {k: v for k, v in b["optimizer_state"].items() if k != "state"}
    assert a["meta"]["epoch"] == b["meta"]["epoch"]
    assert a["meta"]["rng_state"] == b["meta"]["rng_state"]


# -- 2 ranks == 1 process ----------------------------------------------------------------------
def test_two_ranks_save_what_one_process_trains(two_ranks, one_process):
    run_dir, _ = two_ranks
    path, result = one_process
    distributed, single = load_checkpoint(run_dir / "c.npz"), load_checkpoint(path)
    assert_same_training(distributed, single)
    assert single["optimizer_state"]["steps"] == EPOCHS * 81 == distributed["optimizer_state"]["steps"]
    assert distributed["meta"]["config"]["distributed"] is True
    for a, b in zip(distributed["meta"]["history"], single["meta"]["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert (a["train_acc"], a["val_acc"]) == (b["train_acc"], b["val_acc"])
    metrics = json.loads((run_dir / "m.json").read_text())
    assert metrics["test_acc"] == result["test_acc"]  # evaluated in halves, added up
    assert metrics["confusion_matrix"] == result["confusion_matrix"]
    assert metrics["test_loss"] == pytest.approx(result["test_loss"], rel=1e-5)


def outputs(files):
    """The files a rank wrote, less the probes every rank makes (and deletes at once) when it
    checks that the output paths can be written, before any work."""
    return [f for f in files if not Path(f).name.startswith(".gpucnn-probe-")]


def test_only_rank_0_prints_and_writes(two_ranks):
    run_dir, ranks = two_ranks
    (out0, err0, files0), (out1, err1, files1) = ranks[0], ranks[1]
    files0, files1 = outputs(files0), outputs(files1)
    assert (out1, err1, files1) == ("", "", [])  # rank 1: not a word, not a file
    assert err0 == ""  # no bars off a terminal, no warnings
    assert {"c.npz", "m.json", "p.png"} <= set(files0)
    lines = out0.splitlines()
    assert lines[0].startswith("config: ") and json.loads(lines[0][8:])["distributed"] is True
    assert "distributed: rank 0 of 2 (local rank 0), gradients over MPI" in lines
    assert sum(line.startswith("epoch ") for line in lines) == EPOCHS
    assert lines[-1].startswith("test accuracy: ")


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks, tmp_path):
    run_dir, _ = two_ranks
    resumed_path, straight_path = tmp_path / "resumed.npz", tmp_path / "straight.npz"
    shutil.copy(run_dir / "c.npz", resumed_path)
    base = dict(epochs=EPOCHS + 1, verbose=0, **DIGITS)
    resumed = run(TrainConfig(resume=str(resumed_path), checkpoint=str(resumed_path), **base), log=quiet)
    straight = run(TrainConfig(checkpoint=str(straight_path), **base), log=quiet)
    assert_same_training(load_checkpoint(resumed_path), load_checkpoint(straight_path))
    assert resumed["test_acc"] == pytest.approx(straight["test_acc"], abs=2 / 360)  # an argmax may flip


# -- refusals, failures, Ctrl-C ------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (["--batch-size", "15"], "train.py: error: --batch-size 15 is the global batch, split evenly over the 2 "
                             "processes: it must be a multiple of 2; pass --batch-size 14 or 16"),
    (["--epochs", "0"], "train.py: error: argument --epochs: expected a positive integer, got '0'"),
])
def test_bad_input_is_refused_by_every_rank_with_one_message(tmp_path, bad, message):
    rc, seconds, ranks, err = run_ranks(2, tmp_path, "--distributed", "--dataset", "digits", *bad)
    assert rc == 2, err
    (out0, err0, _), (out1, err1, _) = ranks[0], ranks[1]
    assert [line for line in err0.splitlines() if "error" in line] == [message]
    assert (out0, out1, err1) == ("", "", "")


def test_a_failing_rank_ends_the_whole_job_in_seconds(tmp_path):
    rc, seconds, ranks, err = run_ranks(2, tmp_path, "--distributed", *flags(epochs=1000, **DIGITS), fail_at=20,
                                        timeout=90)
    assert rc != 0 and seconds < 90
    (out0, err0, _), (out1, err1, _) = ranks[0], ranks[1]
    assert "rank 1: RuntimeError: rank 1 failed on purpose in backward pass 20" in err1.splitlines()
    assert "rank 1: Traceback (most recent call last):" in err1
    assert "epoch 1/" not in out0 and "test accuracy" not in out0  # rank 0 was waiting for rank 1


def test_ctrl_c_stops_every_rank_after_the_same_step_and_rank_0_saves(tmp_path):
    cmd = [*mpiexec(2), sys.executable, "-m", "mpi4py", str(TRAIN), "--distributed",
           *flags(epochs=100000, verbose=2, **DIGITS)]
    start = time.monotonic()
    proc = start_job(cmd, cwd=tmp_path)
    for line in proc.stdout:  # the first epoch is done: there is something to save
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: mpiexec passes it to every rank
    rc, out, err, _ = wait_job(proc, cmd, 120, start)
    assert rc == 130, err
    said = [line for line in err.splitlines() if line.startswith(("interrupted", "resume with"))]
    assert len(said) == 2 and said[0].startswith("interrupted during epoch ")
    assert said[1].startswith("resume with: mpiexec -n 2 python -m mpi4py ")
    assert "--distributed" in said[1] and "--resume gpucnn-interrupted.npz" in said[1]
    saved = load_checkpoint(tmp_path / gpucnn.training.run.INTERRUPTED_CHECKPOINT)
    assert f"epoch {saved['meta']['epoch']} is saved in gpucnn-interrupted.npz" in said[0]
    assert "Traceback" not in err


# -- one process ------------------------------------------------------------------------------
def test_distributed_under_plain_python_says_it_is_one_process():
    proc = subprocess.run([sys.executable, str(TRAIN), "--distributed", "--dataset", "digits", "--epochs", "1",
                           "--limit-test", "50", "--verbose", "2"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("warning: --distributed in 1 process (plain python or mpiexec -n 1)")
    assert "launch: mpiexec -n N python -m mpi4py scripts/train.py --distributed" in proc.stderr
    assert "distributed: 1 process" in proc.stdout and "test accuracy: " in proc.stdout


def test_without_distributed_the_cli_never_imports_mpi4py():
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(TRAIN)!r}, '--dataset', 'digits', '--epochs', '1', '--limit-test', '50',"
            " '--verbose', '0']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "print('mpi4py' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"


def load_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_cli_ddp", TRAIN)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_distributed_without_mpi4py_says_how_to_install(monkeypatch, capsys):
    cli = load_cli()
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    monkeypatch.setattr(gpucnn.training.run, "load_dataset", lambda *a: pytest.fail("data loaded before the check"))
    with pytest.raises(SystemExit) as info:
        cli.main(["--distributed", "--dataset", "digits"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("train.py: error: argument --distributed needs mpi4py: "
                                    "pip install 'gpucnn[mpi]'")


@pytest.mark.parametrize("size, rank, variables", [(2, 0, ("PMI_SIZE", "PMI_RANK")),  # MPICH
                                                   (4, 1, ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"))])
def test_mpiexec_without_distributed_is_pointed_out_once(monkeypatch, size, rank, variables):
    import warnings

    for name, value in zip(variables, (size, rank)):
        monkeypatch.setenv(name, str(value))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = load_cli().main(["--dataset", "digits", "--epochs", "1", "--limit-test", "50", "--verbose", "0"])
    assert status == 0
    said = [str(w.message) for w in caught if "mpiexec started" in str(w.message)]
    assert said == ([f"mpiexec started {size} processes but --distributed is not given: each trains alone "
                     "on all the data (and they write the same files); add --distributed"] if rank == 0 else [])


# -- scripts/benchmark.py --ranks ----------------------------------------------------------------
def test_benchmark_ranks_mode_times_processes_threads_and_the_allreduce(tmp_path):
    from gpucnn.nn.zoo import ARCHS

    out = tmp_path / "ranks.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--ranks", "2", "--quick",
                           "--archs", "simple", "--batch-sizes", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "| network | global batch | processes x threads |" in proc.stdout
    result = json.loads(out.read_text())
    rows = {(r["processes"], r["threads"]): r for r in result["rows"]}
    assert set(rows) == {(1, 1), (1, 2), (2, 1)}
    for (processes, threads), row in rows.items():
        assert row["img_s"] > 0 and row["step_s"] > 0 and row["compute_s"] > 0
        assert set(row["blas_threads"]) <= {threads}  # OMP/OpenBLAS threads as asked, per rank
        assert (row["allreduce_alone_s"] > 0) == (processes > 1)
    assert rows[(1, 1)]["speedup"] == 1.0
    paper = {r["arch"]: r for r in result["paper"]}
    assert set(paper) == set(ARCHS)
    for row in paper.values():
        assert row["gradient_bytes"] == 4 * row["parameters"]
        network = row["100 Gb/s network"]["allreduce_s"]
        assert network["2"] < network["8"] < network["64"]  # JSON keys are strings
        assert row["NVLink 4 (H100)"]["allreduce_s"]["8"] < network["8"]
