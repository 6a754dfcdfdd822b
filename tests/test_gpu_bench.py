"""The GPU side of scripts/benchmark.py (scripts/benchmarking/gpu_bench.py, rows.py), exercised without a GPU:
GPU rows are built on the CuPy stand-in (a GPU-like backend named "gpu"), so a row beside
a torch without CUDA, the peak each row is a share of, the memory keys, the host-cost
loop, --kernels and --gpu-targets run here; on a GPU machine the same tests also run the
PyTorch twin on CUDA where torch has it. Timings are never asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gpucnn.backends.backend import gpu_status
from standin import standin_backend

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import benchmark  # noqa: E402
from benchmarking import gpu_bench  # noqa: E402
from benchmarking import rows as bench_rows  # noqa: E402
from benchmarking.measure import SgemmPeak  # noqa: E402
from benchmarking.networks import BENCH_NETS, build_model  # noqa: E402
from benchmarking.torch_twin import check_same_network, copy_weights, torch_twin  # noqa: E402

NO_CUDA_TORCH = SimpleNamespace(__version__="2.x+cpu", version=SimpleNamespace(cuda=None),
                                cuda=SimpleNamespace(is_available=lambda: False))


def gpu_like_row(torch_module, arch="simple", batch=2):
    """A GPU row as the benchmark builds it, on the stand-in, with a made-up GPU peak."""
    args = benchmark.parse_args(["--quick"])
    cpu_peak = SgemmPeak()
    cpu_peak.measure(1)
    peaks = {"cpu": cpu_peak, "gpu": 50e12}
    row = bench_rows.run_case(arch, batch, benchmark.INPUT_SHAPES[arch], standin_backend(kernels="none"),
                                  torch_module, args, time.perf_counter, peaks)
    return row, peaks


def test_a_gpu_row_beside_torch_without_cuda_has_null_ratios_and_the_memory_keys():
    """Issue 20's KeyError: GPU rows had no train_ratio. Now the key is there, None, and says why."""
    row, peaks = gpu_like_row(NO_CUDA_TORCH)
    assert row["device"] == "gpu" and row["kernels"] == "none" and row["train_img_s"] > 0
    assert row["train_ratio"] is None and row["eval_ratio"] is None and row["torch_train_img_s"] is None
    assert row["torch_device"] is None and "no usable CUDA" in row["torch_note"]
    assert {"peak_mib", "live_peak_mib", "torch_peak_mib", "torch_reserved_mib"} <= set(row)  # None: no pool here
    assert row["live_peak_mib"] is None
    assert row["peak_fraction"] == pytest.approx(row["train_flops_per_image"] * row["train_img_s"] / 50e12)
    assert "no PyTorch twin" in bench_rows.format_row(row)
    assert "| simple | 1x28x28 | 2 | none |" in gpu_bench.gpu_table([row])
    json.dumps(row)  # the JSON holds the keys, with null


def test_a_gpu_row_with_cuda_graphs_replays_the_step_and_says_so():
    """--graphs on: the row's training replays the recorded step (the stand-in's graphs), the
    tables mark it; without the kernel groups graphs need, the row says why it ran eagerly."""
    args = benchmark.parse_args(["--quick"])
    cpu_peak = SgemmPeak()
    cpu_peak.measure(1)
    rows = {}
    for kernels in ("all", "none"):
        backend = standin_backend(kernels=kernels)
        backend.graphs = True
        rows[kernels] = bench_rows.run_case("simple", 2, benchmark.INPUT_SHAPES["simple"], backend, NO_CUDA_TORCH,
                                            args, time.perf_counter, {"cpu": cpu_peak, "gpu": 50e12})
    graphed, eager = rows["all"], rows["none"]
    assert graphed["graphs"] and graphed["graph_note"] is None and graphed["graph_replays"] > 0
    assert "+ graphs]" in bench_rows.format_row(graphed) and " + graphs |" in gpu_bench.gpu_table([graphed])
    assert eager["graph_replays"] == 0 and "kernel groups ['gemm', 'optimizer']" in eager["graph_note"]
    assert benchmark.parse_args(["--graphs", "off", "on"]).graphs == ["off", "on"]


def test_a_gpu_row_beside_the_installed_torch():
    """With CUDA in torch (a GPU machine) the twin runs there and the row has ratios and both
    sides' memory; without it, the row says so. The same code path either way."""
    row, _ = gpu_like_row(torch)
    if torch.cuda.is_available():
        assert row["torch_device"] == "cuda" and row["train_ratio"] > 0 and row["torch_peak_mib"] > 0
    else:
        assert row["torch_device"] is None and row["train_ratio"] is None and row["torch_peak_mib"] is None


def test_the_percent_column_divides_by_the_peak_of_the_rows_device():
    assert gpu_bench.peak_for("gpu", cpu_flops=1e11, gpu_flops=5e13) == 5e13
    assert gpu_bench.peak_for("cpu", cpu_flops=1e11, gpu_flops=5e13) == 1e11
    assert gpu_bench.peak_for("gpu", cpu_flops=1e11, gpu_flops=None) is None  # never the CPU's
    peaks = {"cpu": SimpleNamespace(flops=1e11), "gpu": 5e13}
    row = {"device": "gpu", "train_flops_per_image": 1e6, "train_img_s": 1e4}
    assert bench_rows.peak_fraction(row, peaks) == pytest.approx(1e10 / 5e13)
    assert bench_rows.peak_fraction(dict(row, device="cpu"), peaks) == pytest.approx(0.1)


def test_kernels_option_takes_one_or_more_selections():
    assert benchmark.parse_args(["--kernels", "none", "all"]).kernels == ["none", "all"]
    assert benchmark.parse_args(["--kernels", "relu,im2col"]).kernels == ["relu,im2col"]
    assert benchmark.parse_args(["--kernels", "default"]).kernels == ["default"]
    assert benchmark.parse_args([]).kernels is None  # GPUCNN_KERNELS, else the defaults


def test_kernels_option_rejects_an_unknown_group(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(["--kernels", "relu,warp"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "got 'relu,warp'" in err and "unknown fused-kernel group(s) ['warp']" in err and "expected" in err


def test_gpu_targets_preset_runs_issue_21s_eight_cases():
    args = benchmark.parse_args(["--gpu-targets"])
    assert args.device == "gpu" and args.no_scaling
    plan = benchmark.case_plan(args)
    assert [(arch, batch) for arch, batch, _, _ in plan] == [
        ("simple", 64), ("simple", 1024), ("lenet", 64), ("lenet", 1024),
        ("conv-bn", 64), ("conv-bn", 512), ("vgg", 128), ("vgg", 512)]
    targets = {(arch, batch): target for arch, batch, _, target in plan}
    assert targets == {("simple", 64): 2.0, ("simple", 1024): 1.0, ("lenet", 64): 2.0, ("lenet", 1024): 1.0,
                       ("conv-bn", 64): 1.5, ("conv-bn", 512): 1.0, ("vgg", 128): None, ("vgg", 512): 0.8}
    schedules = {(arch, batch): schedule for arch, batch, schedule, _ in plan}
    assert schedules[("simple", 64)] == (5, 20, 5) and schedules[("vgg", 512)] == (2, 10, 3)
    assert {s for _, _, s, _ in benchmark.case_plan(benchmark.parse_args(["--gpu-targets", "--quick"]))} == {(1, 2, 2)}
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--gpu-targets", "--device", "cpu"])


def test_the_target_column_says_met_or_missed():
    row = {"arch": "simple", "input": [1, 28, 28], "batch": 64, "kernels_spec": "all", "train_img_s": 9e4,
           "torch_train_img_s": 3e4, "train_ratio": 3.0, "target": 2.0, "peak_fraction": 0.01,
           "eval_img_s": 1e5, "torch_eval_img_s": 5e4, "eval_ratio": 2.0, "peak_mib": 40.0, "torch_peak_mib": 30.0,
           "live_peak_mib": 25.0, "torch_reserved_mib": 44.0}
    table = gpu_bench.gpu_table([row, dict(row, train_ratio=1.5), dict(row, train_ratio=None), dict(row, target=None)])
    lines = table.splitlines()[2:]
    assert "| >= 2.0 met |" in lines[0] and "| >= 2.0 MISSED |" in lines[1]
    assert "(no ratio)" in lines[2] and "| 3.00 | - |" in lines[3] and "| 25 / 40; 30 / 44 |" in lines[0]


@pytest.mark.skipif(gpu_status()[0] is not None, reason="a GPU is present: the preset would run")
def test_gpu_targets_without_a_gpu_says_so():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--gpu-targets"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--gpu-targets expected a usable GPU, got none" in proc.stderr


def test_host_cost_loop_times_every_call_on_a_gpu_like_backend():
    rows = gpu_bench.host_costs(standin_backend(kernels="none"), calls=2)
    assert [r["call"] for r in rows] == ["a + 1", "cupy.add(a, 1, out=o)", "cupy.maximum(a, 0)", "a.sum(axis=0)",
                                         "256^3 matmul", "transposing copy", "RawKernel launch (relu_grad)",
                                         "RawKernel x30 as one CUDA graph launch"]
    assert all(0 < r["host_us"] <= r["synced_us"] for r in rows)
    assert gpu_bench.cupy_call_us(rows) == pytest.approx(np.median([r["host_us"] for r in rows[:-2]]))
    assert "| `a + 1` |" in gpu_bench.host_cost_table(rows, 2)


def test_gpu_sgemm_peak_is_the_best_of_its_timings():
    peak = gpu_bench.GpuSgemmPeak(standin_backend(), size=32, repeats=3)
    assert len(peak.seconds) == 3 and peak.flops == pytest.approx(2 * 32**3 / min(peak.seconds))


def test_memory_high_water_marks_of_a_cuda_twin_are_read_from_torch_cuda():
    fake = SimpleNamespace(cuda=SimpleNamespace(max_memory_allocated=lambda: 3 * 2**20,
                                                max_memory_reserved=lambda: 4 * 2**20))
    memory = bench_rows.case_memory({"torch": SimpleNamespace(device="cuda")}, standin_backend(), fake, steps=1)
    assert memory == {"peak_mib": None, "torch_peak_mib": 3.0, "torch_reserved_mib": 4.0}
    memory = bench_rows.case_memory({}, standin_backend(), fake, steps=1)
    assert memory["torch_peak_mib"] is None and memory["torch_reserved_mib"] is None


def test_torch_twin_device_follows_the_row():
    assert gpu_bench.torch_device_for("cpu", torch) == ("cpu", None)
    assert gpu_bench.torch_device_for("gpu", NO_CUDA_TORCH)[0] is None
    assert gpu_bench.torch_device_for("gpu", None)[0] is None
    assert gpu_bench.torch_device_for("gpu", torch)[0] == ("cuda" if torch.cuda.is_available() else None)


def test_tf32_is_off_for_torch_and_cudnn_benchmark_left_alone():
    # restored by hand: torch serves cuda.matmul.allow_tf32 through __getattr__, so pytest >= 9.2's
    # monkeypatch (which then records "not set") would delattr it at teardown and fail
    flags = ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"))
    before = [getattr(module, name) for module, name in flags]
    try:
        settings = gpu_bench.torch_tf32_off(torch)
        assert settings == {"torch_matmul_allow_tf32": False, "torch_cudnn_allow_tf32": False,
                            "torch_cudnn_benchmark": False}
        assert torch.backends.cudnn.allow_tf32 is False
    finally:
        for (module, name), value in zip(flags, before):
            setattr(module, name, value)


def test_the_benchmark_drops_cupy_tf32_before_cupy_loads():
    code = ("import os, sys; sys.path.insert(0, 'scripts'); import benchmark; "
            "print(os.environ.get('CUPY_TF32'), benchmark.TF32_ENV)")
    for value, dropped in (("1", "{'CUPY_TF32': '1'}"), ("0", "{}")):
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, CUPY_TF32=value))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split(None, 1) == [("None" if value == "1" else "0"), dropped + "\n"]


@pytest.mark.parametrize("arch", sorted(BENCH_NETS))
def test_benchmark_networks_match_their_description_and_their_torch_twin(arch):
    model = build_model(arch, (3, 32, 32), 10, np.random.default_rng(0))
    widths = {"conv-bn": [32, 64, 128], "vgg": [64, 64, 128, 128, 256, 256]}[arch]
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.out_channels for c in convs] == widths and all(c.kernel_size in (3, (3, 3)) for c in convs)
    assert [type(layer).__name__ for layer in model.layers[-2:]] == ["GlobalAvgPool2D", "Dense"]
    twin = torch_twin(model, torch)
    check_same_network(model, twin)
    copy_weights(model, twin, torch)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    twin.eval()
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.eval().forward(x), expected, rtol=1e-4, atol=1e-4)


def test_each_case_starts_without_an_earlier_cases_shared_scratch(monkeypatch):
    """The .ci/gpu run of 2026-12-04 counted the shared conv buffers lenet at batch 1024 left
    (about 313 MiB) in every later case's GPU memory: free_device_memory drops them."""
    from gpucnn.nn.layers import conv as conv_module, scratch
    from gpucnn import Conv2D
    monkeypatch.setattr(conv_module, "SHARED_MIN_BYTES", 0)
    backend = standin_backend(kernels="im2col")
    layer = Conv2D(2, 3, 3, padding=1, rng=np.random.default_rng(0)).to(backend)
    layer.forward(backend.asarray(np.ones((2, 2, 5, 5), np.float32)))
    assert scratch._BUFFERS.get(backend.xp)
    gpu_bench.free_device_memory(backend)
    assert not scratch._BUFFERS.get(backend.xp)


@pytest.mark.skipif(gpu_status()[0] is None, reason=f"needs a CUDA GPU: {gpu_status()[1]}")
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_a_real_gpu_row_counts_the_live_bytes_within_the_pool(graphs):
    """On a GPU: the memory hook's live peak is positive and at most the pool's bytes (the pool
    also keeps freed blocks), with and without CUDA graphs."""
    from gpucnn.backends.backend import get_backend
    args = benchmark.parse_args(["--quick"])
    backend = get_backend("gpu", kernels="all", graphs=graphs)
    row = bench_rows.run_case("simple", 64, benchmark.INPUT_SHAPES["simple"], backend, None, args,
                              time.perf_counter, None)
    assert 0 < row["live_peak_mib"] <= row["peak_mib"] + 1e-6, row
