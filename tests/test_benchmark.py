"""scripts/benchmark.py and its helpers: the modes run and report, the FLOP count and the
PyTorch twins are right; timings are never asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpucnn.nn.losses import SoftmaxCrossEntropy
from gpucnn.optim import SGD
from gpucnn.nn.zoo import ARCHS, build_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from benchmarking import measure  # noqa: E402
from benchmarking.gemm_floor import GemmFloorCase  # noqa: E402
from benchmarking.profile_step import gemm_flops_per_image, profile_step  # noqa: E402
from benchmarking.scaling import scaling_points  # noqa: E402
from benchmarking.torch_twin import check_same_network, copy_weights, torch_twin  # noqa: E402

INPUTS = {"simple": (1, 28, 28), "lenet": (1, 28, 28), "lenet-bn": (3, 32, 32), "cifar-small": (3, 32, 32),
          "conv-bn": (3, 32, 32), "vgg": (3, 32, 32)}


def run_benchmark(*args, timeout=600):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_benchmark_quick_mode_runs_and_writes_json(tmp_path):
    """CPU rows always; with a GPU present (.ci/gpu), GPU rows too, each beside the PyTorch
    twin on CUDA when torch has CUDA (else its ratios are null), against the GPU's own peak."""
    out = tmp_path / "bench.json"
    stdout = run_benchmark("--quick", "--batch-sizes", "8", "--threads", "1", "--json", str(out))
    assert "| network | input | batch | device |" in stdout and "SGEMM peak" in stdout
    result = json.loads(out.read_text())
    assert result["optimizer"] == "momentum" and result["threads"] == 1 and result["sgemm_peak_flops"] > 0
    cases = {(r["arch"], r["batch"], r["device"]) for r in result["rows"]}
    assert {(arch, 8, "cpu") for arch in ARCHS} <= cases
    for row in result["rows"]:
        assert row["train_img_s"] > 0 and row["eval_img_s"] > 0
        assert {"train_ratio", "eval_ratio", "peak_mib", "torch_peak_mib", "torch_note"} <= set(row)
        peak = result["gpu_sgemm_peak_flops"] if row["device"] == "gpu" else result["sgemm_peak_flops"]
        assert row["peak_fraction"] == pytest.approx(row["train_flops_per_image"] * row["train_img_s"] / peak)
        if row["device"] == "gpu":
            assert row["peak_mib"] > 0 and "| fused kernels |" in stdout
            if row["torch_device"] == "cuda":
                assert row["train_ratio"] > 0 and row["eval_ratio"] > 0 and row["torch_peak_mib"] > 0
            else:
                assert row["train_ratio"] is None and row["eval_ratio"] is None
                assert "no usable CUDA" in row["torch_note"]
            continue
        assert row["train_ratio"] > 0  # the PyTorch twin ran (same parameter count checked)
        assert row["ratio_ceiling"] == pytest.approx(row["gemm_floor_img_s"] / row["torch_train_img_s"])
        assert row["eval_ratio_ceiling"] == pytest.approx(row["eval_gemm_floor_img_s"] / row["torch_eval_img_s"])
    if any(row["device"] == "gpu" for row in result["rows"]):
        assert result["gpu"]["sgemm_peak_flops"] > 0 and len(result["gpu"]["host_cost_per_call"]) == 7
        assert result["gpu"]["cupy_fp32_compute_type"] != "COMPUTE_TYPE_TF32"
    assert "scaling" not in result  # --quick skips the sweep unless asked to plot it


def test_benchmark_sweep_draws_the_plot(tmp_path):
    plot, out = tmp_path / "scaling.png", tmp_path / "bench.json"
    run_benchmark("--quick", "--archs", "simple", "--batch-sizes", "8", "--optimizer", "adam", "--threads", "1",
                  "--plot", str(plot), "--json", str(out))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads(out.read_text())["scaling"]
    assert {(p["batch"], tuple(p["input"])) for p in points} == {
        (b, tuple(shape)) for _, b, shape in scaling_points(["simple"], quick=True)}
    assert all(p["torch_train_img_s"] > 0 for p in points)


def test_benchmark_profile_lists_every_layer_the_loss_and_the_optimizer(tmp_path):
    out = tmp_path / "profile.json"
    stdout = run_benchmark("--profile", "--archs", "lenet", "--batch-sizes", "4", "--steps", "2",
                           "--warmup", "1", "--threads", "1", "--cpu-time", "--json", str(out))
    assert "| part | ms per step | share | page faults |" in stdout
    assert "matrix multiplies alone (scripts/benchmarking/gemm_floor.py):" in stdout
    assert json.loads(out.read_text())["profiles"][0]["gemm_floor_ms"] > 0
    parts = json.loads(out.read_text())["profiles"][0]["parts"]
    names = [p["part"] for p in parts]
    assert len(names) == 2 * 10 + 3  # 10 layers forward and backward, loss twice, optimizer
    assert names[0].endswith("Conv2D 1->16 5x5 p2 forward") and names[-1] == "optimizer step"
    assert "loss forward" in names and "loss backward" in names
    assert sum(p["share"] for p in parts) == pytest.approx(1.0)
    assert all(p["page_faults"] >= 0 for p in parts)


def test_profile_runs_the_same_training_step_as_the_model():
    """The profiled step (layer by layer) changes the weights exactly as model.forward/backward do."""
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 4)
    a, b = (build_model("lenet", (1, 28, 28), 10, np.random.default_rng(1)) for _ in range(2))
    loss = SoftmaxCrossEntropy()
    opt_a, opt_b = SGD(a, 0.1, momentum=0.9), SGD(b, 0.1, momentum=0.9)
    profile_step(a, loss, opt_a, a.backend, x, y, steps=2, warmup=1)
    for _ in range(3):
        loss.forward(b.forward(x), y)
        b.backward(loss.backward(), need_input_grad=False)
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)


def test_benchmark_defaults_follow_the_issue():
    import benchmark
    args = benchmark.parse_args([])
    assert args.threads == 2 and args.optimizer == "momentum" and set(args.archs) == set(ARCHS)
    assert benchmark.parse_args(["--gpu-model"]).optimizer == "adam"  # as the README's prediction table
    assert benchmark.INPUT_SHAPES == INPUTS and args.device == "all" and args.kernels is None


def test_gemm_flops_per_image_from_the_layer_shapes():
    simple = build_model("simple", (1, 28, 28), 10)
    conv, dense = 2 * 32 * 1 * 25 * 24 * 24, 2 * 32 * 12 * 12 * 10
    # training: forward, weight gradient, input gradient, except the first layer's input gradient
    assert gemm_flops_per_image(simple, (1, 28, 28)) == (conv + dense, 3 * (conv + dense) - conv)
    lenet = build_model("lenet", (1, 28, 28), 10)
    forward = 2 * (16 * 25 * 28 * 28 + 32 * 16 * 25 * 10 * 10 + 800 * 128 + 128 * 10)
    assert gemm_flops_per_image(lenet, (1, 28, 28))[0] == forward


def test_gemm_floor_runs_the_multiplies_of_the_step_in_the_layers_shapes():
    """lenet on a batch of 3: every Conv2D and Dense multiply of a training step (no input
    gradient for the first layer), each with the operands' shapes the layer uses."""
    model = build_model("lenet", (1, 28, 28), 10, np.random.default_rng(0))
    floor = GemmFloorCase(model, np.zeros((3, 1, 28, 28), np.float32))
    assert model.training  # the case's forward pass in eval mode left the model as it found it
    shapes = [call().shape for call in floor.training]
    assert shapes == [(16, 28 * 28 * 3), (26, 16),  # conv1 forward and weight gradient (+ bias row)
                      (32, 10 * 10 * 3), (401, 32), (400, 10 * 10 * 3),  # conv2, with dcols
                      (3, 128), (800, 128), (3, 800),  # dense 800->128
                      (3, 10), (128, 10), (3, 128)]  # dense 128->10
    assert [call().shape for call in floor.evaluation] == [shapes[0], shapes[2], shapes[5], shapes[8]]


def test_measure_pauses_then_rewarms_before_every_timed_repeat(monkeypatch):
    """Idle BLAS / OpenMP threads of the case before must go quiet (measure.SETTLE_SECONDS),
    and the steps right after the pause are not timed (measure.REWARM_STEPS)."""
    events = []
    monkeypatch.setattr(measure.time, "sleep", lambda seconds: events.append(("pause", seconds)))

    class Case:
        def __init__(self, name):
            self.name = name

        def train_steps(self, steps):
            events.append((self.name, steps))

    measure.measure({"a": Case("a"), "b": Case("b")}, "train", 1, steps=5, warmup=0, repeats=2)
    pause, rewarm = ("pause", measure.SETTLE_SECONDS), measure.REWARM_STEPS
    repeat = [pause, ("a", rewarm), ("a", 5), pause, ("b", rewarm), ("b", 5)]
    assert events == [("a", 0), ("b", 0)] + repeat * 2
    assert measure.SETTLE_SECONDS >= 0.1 and rewarm >= 1

    events.clear()  # no pause (--quick): nothing to rewarm from
    measure.measure({"a": Case("a")}, "train", 1, steps=5, warmup=1, repeats=1, settle=0.0)
    assert events == [("a", 1), ("pause", 0.0), ("a", 5)]


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_twin_computes_the_same_network(arch):
    shape = INPUTS[arch]
    model = build_model(arch, shape, 10, np.random.default_rng(0), dtype=np.float64)
    for layer in model.layers:  # statistics other than the initial ones, so copying them matters
        for name, value in layer.state.items():
            layer.state[name] = value + np.random.default_rng(2).uniform(0.1, 0.5, value.shape)
    twin = torch_twin(model, torch).double()
    check_same_network(model, twin)
    copy_weights(model, twin, torch)
    x = np.random.default_rng(1).standard_normal((3, *shape))
    twin.eval()  # dropout off, batch norm on the (copied) running statistics
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.eval().forward(x), expected, rtol=1e-9, atol=1e-9)


def test_layers_mode_compares_batchnorm_and_dropout_with_torch(tmp_path):
    out = tmp_path / "layers.json"
    stdout = run_benchmark("--layers", "--steps", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
                           "--json", str(out))
    rows = json.loads(out.read_text())["layers"]
    assert [row["layer"].split()[0] for row in rows] == ["BatchNorm2D"] * 3 + ["Dropout"]
    assert all(row["gpucnn_per_s"] > 0 and row["torch_per_s"] > 0 for row in rows)
    assert "ratio" in stdout
