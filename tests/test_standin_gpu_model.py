"""scripts/benchmark.py --gpu-model: GPU step-time bounds predicted from the work the CuPy
stand-in counts. The numbers are a model; these tests check that the counting behaves as
a training step's work must (never timings)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from benchmarking import gpu_model  # noqa: E402


def test_benchmark_gpu_model_prints_the_labelled_table(tmp_path):
    out = tmp_path / "model.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--gpu-model",
                           "--archs", "simple", "lenet", "--batch-sizes", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PREDICTION, not a measurement")
    assert "24 µs of host time per kernel launch from Python (the last H200 measurement, the default" in proc.stdout
    assert "| network | batch | kernel launches |" in proc.stdout and "by source file" in proc.stdout
    result = json.loads(out.read_text())
    assert result["prediction"] is True and {r["arch"] for r in result["rows"]} == {"simple", "lenet"}
    assert result["launch_us"] == gpu_model.MEASURED_LAUNCH_US == 24.0
    for row in result["rows"]:
        bounds = {k: row[f"{k}_us"] for k in ("launch", "memory", "compute")}
        assert row["bound"] == max(bounds, key=bounds.get) and row["floor_us"] == max(bounds.values())
        assert row["img_s"] == pytest.approx(row["batch"] / (row["floor_us"] * 1e-6))
        assert sum(row["launches_by_file"].values()) == row["launches"] > row["eval_launches"] > 0


def test_a_steps_kernels_do_not_depend_on_the_batch_but_its_bytes_and_flops_do():
    small, large = gpu_model.count_step("lenet", 8), gpu_model.count_step("lenet", 32)
    assert small.launches == large.launches  # the same kernels, on bigger arrays
    assert 2 < (large.bytes_read + large.bytes_written) / (small.bytes_read + small.bytes_written) < 4.01
    assert 2 < large.flops / small.flops < 4.01  # the optimizer's work does not grow with the batch
    assert small.by_kind["gemm"] == large.by_kind["gemm"] == 11  # forward, dW, dx per layer; conv1 no dx


def test_the_dominant_bound_is_the_largest():
    work = gpu_model.count_step("simple", 8)
    gpu = gpu_model.GPUS["h100-sxm"]
    prediction = gpu_model.predict(work, gpu, 8)  # the measured default: 24 µs per launch
    assert prediction["launch_us"] == pytest.approx(work.launches * 24.0)
    assert prediction["memory_us"] == pytest.approx((work.bytes_read + work.bytes_written) / 3.35e6)
    assert prediction["bound"] == "launch"  # 8 MNIST images: a few MB per step, > 100 launches
    assert gpu_model.predict(work, gpu, 8, launch_us=5.0)["launch_us"] == pytest.approx(work.launches * 5.0)


def test_launch_us_is_taken_from_the_command_line(tmp_path):
    out = tmp_path / "model.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--gpu-model", "--archs",
                           "simple", "--batch-sizes", "8", "--launch-us", "30", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "30 µs of host time per kernel launch from Python (given;" in proc.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["launch_us_per_call"] == 30.0 and row["launch_us"] == pytest.approx(row["launches"] * 30.0)
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--gpu-model", "--launch-us", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "expected a positive number, got '0'" in bad.stderr


def test_the_benchmark_networks_are_counted_too():
    """conv-bn (scripts/benchmarking/networks.py) on the stand-in: three conv layers and a dense one."""
    work = gpu_model.count_step("conv-bn", 2, (3, 32, 32), optimizer="momentum")
    assert work.by_kind["gemm"] >= 3 * 3 - 1 + 3  # conv forward, dW, dx (not the first) + dense's three
    assert work.launches > gpu_model.count_step("conv-bn", 2, (3, 32, 32), mode="eval").launches > 0
