"""ONNX export: ONNX Runtime, an independent implementation of convolution, pooling and
Gemm, gives the same logits as gpucnn for every layer and every zoo architecture; the
CLI exports a trained MNIST checkpoint with the same predictions; export refuses what
it cannot export before writing, and never moves or changes the model."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

import gpucnn.nn.layers
from gpucnn import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from gpucnn.backends.backend import to_host
from gpucnn.export import to_onnx
from gpucnn.nn.layers import Layer
from gpucnn.training.run import TrainConfig, run
from gpucnn.nn.zoo import ARCHS, build_model
from standin import StandInArray, standin_backend

REPO = Path(__file__).resolve().parent.parent
REPO_MNIST = str(REPO / "data" / "mnist")
EXPORT_SCRIPT = REPO / "scripts" / "export.py"


def load_export_script():
    spec = importlib.util.spec_from_file_location("export_script", EXPORT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onnx_run(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x})[0]


def randomize(model, rng):
    """Random values in every parameter and saved state (biases and running statistics
    start at 0 and 1, which would hide a mistake); variances positive."""
    for layer in model.layers:
        for arrays in (layer.params, layer.state):
            for name, value in arrays.items():
                shape = tuple(value.shape)
                if "var" in name:
                    new = rng.uniform(0.5, 2.0, shape)
                else:
                    new = rng.normal(0.0, 0.5, shape) if name != "weight" else to_host(value) + rng.normal(0.0, 0.1, shape)
                arrays[name] = model.backend.asarray(np.asarray(new, dtype=np.float32))
    return model


def assert_same_as_gpucnn(model, path, input_shape, rng, batches=(7, 1)):
    """ONNX Runtime's logits == gpucnn's (eval mode) within 1e-4 relative, for each batch size
    from one file (the batch axis is dynamic); predict_proba agrees where it exists."""
    model.eval()
    for n in batches:
        x = rng.normal(0.0, 1.0, (n, *input_shape)).astype(np.float32)
        ours = to_host(model.forward(model.backend.asarray(x)))
        theirs = onnx_run(path, x)
        assert theirs.dtype == np.float32 and theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ours).max()))
        if hasattr(model, "predict_proba") and ours.ndim == 2:
            shifted = np.exp(theirs - theirs.max(axis=1, keepdims=True))
            np.testing.assert_allclose(shifted / shifted.sum(axis=1, keepdims=True),
                                       to_host(model.predict_proba(model.backend.asarray(x))),
                                       rtol=1e-4, atol=1e-6)


# -- each layer type alone ----------------------------------------------------------------
def conv(kernel, stride, padding, c_in=2, c_out=3):
    return lambda rng: Conv2D(c_in, c_out, kernel, stride=stride, padding=padding, rng=rng)


SINGLE_LAYER_CASES = [
    pytest.param(conv(3, 1, 0), (2, 9, 9), id="conv3-valid"),
    pytest.param(conv(3, 2, 1), (2, 9, 10), id="conv3-stride2-pad1"),
    pytest.param(conv(3, 1, (1, 2)), (2, 7, 8), id="conv3-pad-hw"),
    pytest.param(conv(3, 2, ((0, 2), (1, 0))), (2, 9, 8), id="conv3-stride2-pad-per-side"),
    pytest.param(conv((2, 3), 2, ((1, 0), (2, 1))), (2, 8, 9), id="conv2x3-stride2-pad-per-side"),
    pytest.param(conv(5, 3, "valid"), (2, 11, 12), id="conv5-stride3"),
    pytest.param(conv(2, 1, "same"), (2, 6, 7), id="conv2-same-even-kernel"),
    pytest.param(conv(3, 1, "same"), (2, 6, 7), id="conv3-same"),
    pytest.param(conv(4, 1, "same"), (2, 8, 6), id="conv4-same-even-kernel"),
    pytest.param(lambda rng: MaxPool2D(2), (3, 8, 8), id="maxpool2"),
    pytest.param(lambda rng: MaxPool2D(3, stride=2, padding=1), (3, 9, 8), id="maxpool3-stride2-pad1"),
    pytest.param(lambda rng: MaxPool2D(2, stride=1, padding=1), (3, 5, 6), id="maxpool2-stride1-pad1"),
    pytest.param(lambda rng: MaxPool2D((4, 2), stride=3, padding=1), (2, 10, 9), id="maxpool4x2-stride3-pad1"),
    pytest.param(lambda rng: AvgPool2D(2), (3, 8, 8), id="avgpool2"),
    pytest.param(lambda rng: AvgPool2D(3, stride=2, padding=1), (3, 9, 8), id="avgpool3-stride2-pad1"),
    pytest.param(lambda rng: AvgPool2D(2, stride=1, padding=1), (3, 5, 6), id="avgpool2-stride1-pad1"),
    pytest.param(lambda rng: AvgPool2D((4, 2), stride=3, padding=1), (2, 10, 9), id="avgpool4x2-stride3-pad1"),
    pytest.param(lambda rng: ReLU(), (3, 4, 5), id="relu"),
    pytest.param(lambda rng: Flatten(), (3, 4, 5), id="flatten"),
    pytest.param(lambda rng: Dense(12, 5, rng=rng), (12,), id="dense"),
]
# layers arriving from another branch: their cases appear once the classes exist
if hasattr(gpucnn.nn.layers, "BatchNorm2D"):
    SINGLE_LAYER_CASES.append(pytest.param(lambda rng: gpucnn.nn.layers.BatchNorm2D(3), (3, 5, 4), id="batchnorm2d"))
if hasattr(gpucnn.nn.layers, "BatchNorm1D"):
    SINGLE_LAYER_CASES.append(pytest.param(lambda rng: gpucnn.nn.layers.BatchNorm1D(6), (6,), id="batchnorm1d"))
if hasattr(gpucnn.nn.layers, "Dropout"):
    SINGLE_LAYER_CASES.append(pytest.param(lambda rng: gpucnn.nn.layers.Dropout(0.5), (3, 4, 5), id="dropout"))
if hasattr(gpucnn.nn.layers, "GlobalAvgPool2D"):
    SINGLE_LAYER_CASES.append(pytest.param(lambda rng: gpucnn.nn.layers.GlobalAvgPool2D(), (3, 5, 6), id="globalavgpool2d"))
if hasattr(gpucnn.nn.layers, "Normalize"):
    SINGLE_LAYER_CASES.append(pytest.param(
        lambda rng: gpucnn.nn.layers.Normalize([0.5, -0.25, 0.1], [0.2, 1.5, 0.7]), (3, 4, 5), id="normalize"))


@pytest.mark.parametrize("make_layer, input_shape", SINGLE_LAYER_CASES)
def test_each_layer_alone_runs_the_same_in_onnxruntime(make_layer, input_shape, tmp_path, rng):
    model = randomize(Sequential([make_layer(rng)]), rng)
    path = tmp_path / "layer.onnx"
    to_onnx(model, path, input_shape=input_shape)
    assert_same_as_gpucnn(model, path, input_shape, rng)


def test_every_layer_type_in_one_model(tmp_path, rng):
    layers = [Conv2D(3, 4, 2, padding="same", rng=rng), ReLU(), MaxPool2D(3, stride=2, padding=1),
              AvgPool2D(2, stride=1, padding=1)]
    if hasattr(gpucnn.nn.layers, "Normalize"):
        layers.insert(0, gpucnn.nn.layers.Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0]))
    if hasattr(gpucnn.nn.layers, "BatchNorm2D"):
        layers.append(gpucnn.nn.layers.BatchNorm2D(4))
    if hasattr(gpucnn.nn.layers, "GlobalAvgPool2D"):
        layers.append(gpucnn.nn.layers.GlobalAvgPool2D())
        features = 4
    else:
        layers.append(Flatten())
        features = 4 * 7 * 7
    if hasattr(gpucnn.nn.layers, "Dropout"):
        layers.append(gpucnn.nn.layers.Dropout(0.3))
    if hasattr(gpucnn.nn.layers, "BatchNorm1D"):
        layers.append(gpucnn.nn.layers.BatchNorm1D(features))
    layers += [Dense(features, 6, rng=rng), ReLU(), Dense(6, 3, rng=rng)]
    model = randomize(Sequential(layers), rng)
    path = tmp_path / "all.onnx"
    to_onnx(model, path, input_shape=(3, 11, 11))
    assert_same_as_gpucnn(model, path, (3, 11, 11), rng)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_zoo_architecture_runs_the_same_in_onnxruntime(arch, tmp_path, rng):
    model = randomize(build_model(arch, (1, 28, 28), 10, rng), rng)
    path = tmp_path / f"{arch}.onnx"
    to_onnx(model, path, input_shape=(1, 28, 28))
    assert_same_as_gpucnn(model, path, (1, 28, 28), rng)


def test_lenet_for_8x8_digits_with_same_padding(tmp_path, rng):
    model = randomize(build_model("lenet", (1, 8, 8), 10, rng), rng)
    to_onnx(model, tmp_path / "lenet8.onnx", input_shape=(1, 8, 8))
    assert_same_as_gpucnn(model, tmp_path / "lenet8.onnx", (1, 8, 8), rng)


# -- the graph itself ----------------------------------------------------------------------
def test_graph_interface_and_explicit_even_kernel_padding(tmp_path, rng):
    model = Sequential([Conv2D(1, 2, 2, padding="same", rng=rng), ReLU(), Flatten(), Dense(2 * 5 * 5, 4, rng=rng)])
    proto = to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 5, 5))
    saved = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(saved, full_check=True)
    assert saved == proto
    assert saved.producer_name == "gpucnn" and saved.producer_version == gpucnn.__version__
    assert [(o.domain, o.version) for o in saved.opset_import] == [("", 17)]
    (inp,), (out,) = saved.graph.input, saved.graph.output
    assert inp.name == "images" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 1, 5, 5]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 4]
    assert {t.name: t.data_type for t in saved.graph.initializer} == {
        name: onnx.TensorProto.FLOAT for name in ("0.weight", "0.bias", "3.weight", "3.bias")}
    conv_node = saved.graph.node[0]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in conv_node.attribute}
    assert conv_node.op_type == "Conv" and "auto_pad" not in attributes
    assert attributes["pads"] == [1, 1, 0, 0]  # [top, left, bottom, right]: the extra zero goes top/left
    assert [n.op_type for n in saved.graph.node] == ["Conv", "Relu", "Flatten", "Gemm"]


def newest_opset_runtime_loads(runtime=onnxruntime) -> int:
    """The newest opset, from the installed onnx's newest down to gpucnn's oldest, whose
    model the installed ONNX Runtime loads (onnx can define opsets a runtime does not run
    yet: onnx 1.23 with onnxruntime 1.30 did), probed with a one-layer export."""
    from gpucnn.export import MIN_OPSET, build_onnx
    probe = Sequential([Dense(2, 2, rng=np.random.default_rng(0))])
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        try:
            runtime.InferenceSession(build_onnx(probe, (2,), opset).SerializeToString(),
                                     providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001  (ORT raises its own types for an unsupported opset)
            continue
        return opset
    raise AssertionError(f"the installed onnxruntime loads no opset from {MIN_OPSET} up")


def test_opset_probe_steps_down_to_what_the_runtime_loads():
    """The cause of a GPU machine's failure (onnx 1.23's newest opset, onnxruntime 1.30):
    a runtime that refuses newer opsets gets the newest one it loads."""
    loads_up_to = 21

    class Runtime:
        @staticmethod
        def InferenceSession(model_bytes, providers):  # noqa: N802  (onnxruntime's name)
            if onnx.load_from_string(model_bytes).opset_import[0].version > loads_up_to:
                raise RuntimeError("Opset 22 is under development and support for this is limited")

    assert newest_opset_runtime_loads(Runtime) == loads_up_to


def test_newer_opset_and_inferred_input_shape(tmp_path, rng):
    model = Sequential([Dense(6, 4, rng=rng), ReLU(), Dense(4, 2, rng=rng)])
    opset = newest_opset_runtime_loads()
    proto = to_onnx(model, tmp_path / "mlp.onnx", opset=opset)
    assert proto.opset_import[0].version == opset
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["N", 6]
    assert_same_as_gpucnn(model, tmp_path / "mlp.onnx", (6,), rng)


# -- device discipline: only parameters leave the device, the model stays -----------------
def test_model_on_the_gpu_standin_exports_by_copying_only_its_parameters(tmp_path, rng):
    model = randomize(build_model("lenet", (1, 28, 28), 10, rng), rng)
    x = rng.normal(0.0, 1.0, (3, 1, 28, 28)).astype(np.float32)
    backend = standin_backend()
    model.to(backend).eval()
    before = model.state_dict()
    objects = [(layer, name, value) for layer in model.layers for name, value in {**layer.params, **layer.state}.items()]
    backend.xp.reset_transfers()

    to_onnx(model, tmp_path / "gpu.onnx", input_shape=(1, 28, 28))

    assert backend.xp.transfers == {"to_device": 0, "to_host": len(objects)}  # one per parameter/state array
    assert model.backend is backend and model.training is False
    assert all(isinstance(value, StandInArray) and ({**layer.params, **layer.state}[name] is value)
               for layer, name, value in objects)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    ours = backend.to_numpy(model.forward(backend.asarray(x)))
    np.testing.assert_allclose(onnx_run(tmp_path / "gpu.onnx", x), ours, rtol=1e-4,
                               atol=1e-5 * max(1.0, np.abs(ours).max()))


# -- refusals: before anything is written ---------------------------------------------------
class Doubler(Layer):
    def forward(self, x):
        return x * 2

    def output_shape(self, input_shape):
        return tuple(input_shape)


def test_unknown_layer_is_refused_by_name_and_position_and_writes_nothing(tmp_path, rng):
    model = Sequential([Conv2D(1, 2, 3, rng=rng), Doubler(), Flatten()])
    path = tmp_path / "out.onnx"
    with pytest.raises(ValueError, match=r"cannot export layer 1 of 3, Doubler\(\): no ONNX converter for Doubler"):
        to_onnx(model, path, input_shape=(1, 6, 6))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("input_shape, message", [
    ((1, 5, 5), r"input_shape=\(1, 5, 5\) does not fit the model: layer 2 says: MaxPool2D"),
    ((3, 28, 28), r"input_shape=\(3, 28, 28\) does not fit the model: layer 0 says: Conv2D"),
    ((28, 28), r"does not fit the model: layer 0 says: .*expected x of shape \(N, 1, H, W\), got \(1, 28, 28\)"),
    ((1, 0, 28), r"expected input_shape as a tuple of positive ints, \(C, H, W\) for images, got \(1, 0, 28\)"),
    ("1x28x28", r"expected input_shape as a tuple of positive ints"),
    (None, r"cannot infer the input shape from the first layer, Conv2D\(.*pass input_shape=\(1, H, W\) "
           r"\(on the command line: --input-shape 1 H W\)"),
])
def test_bad_input_shape_is_refused_before_writing(input_shape, message, tmp_path, rng):
    model = build_model("simple", (1, 28, 28), 10, rng)
    path = tmp_path / "out.onnx"
    path.write_bytes(b"an earlier export")
    with pytest.raises(ValueError, match=message):
        to_onnx(model, path, input_shape=input_shape)
    assert os.listdir(tmp_path) == ["out.onnx"] and path.read_bytes() == b"an earlier export"


def test_unsupported_opset_and_missing_onnx_are_clear(tmp_path, rng, monkeypatch):
    model = Sequential([Dense(3, 2, rng=rng)])
    with pytest.raises(ValueError, match="expected opset an int from 17 to"):
        to_onnx(model, tmp_path / "m.onnx", opset=13)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'gpucnn\[onnx\]'"):
        to_onnx(model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


# -- the CLI -----------------------------------------------------------------------------
def test_trained_mnist_checkpoint_exported_by_the_script_predicts_the_same_on_all_test_images(tmp_path, capsys):
    from gpucnn.data.batches import load_mnist
    from gpucnn.data.pixels import float_batch

    checkpoint = tmp_path / "simple.npz"
    result = run(TrainConfig(device="cpu", data_dir=REPO_MNIST, limit_train=2000, epochs=1, verbose=0,
                             checkpoint=str(checkpoint)), log=lambda *a, **k: None)
    assert load_export_script().main([str(checkpoint), str(tmp_path / "simple.onnx")]) == 0
    assert "input images (N, 1, 28, 28)" in capsys.readouterr().out  # the shape came from the checkpoint

    test_x = load_mnist(REPO_MNIST).test_x
    assert len(test_x) == 10_000 and len(result["predictions"]) == 10_000
    assert test_x.dtype == np.uint8  # the graph takes float32 images in [0, 1]: gpucnn's per-batch rule
    onnx_predictions = np.concatenate([onnx_run(tmp_path / "simple.onnx", float_batch(test_x[i:i + 2500])).argmax(axis=1)
                                       for i in range(0, 10_000, 2500)])
    assert result["test_acc"] > 0.8  # a trained model, not a random one
    np.testing.assert_array_equal(onnx_predictions, result["predictions"])


def test_script_check_flag_prints_the_largest_difference(tmp_path, rng):
    model_file = tmp_path / "lenet.npz"
    randomize(build_model("lenet", (1, 8, 8), 10, rng), rng).save(model_file)
    proc = subprocess.run([sys.executable, str(EXPORT_SCRIPT), str(model_file), str(tmp_path / "lenet.onnx"),
                           "--input-shape", "1", "8", "8", "--check"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith("check:")]
    assert len(line) == 1 and "largest logit difference" in line[0], proc.stdout
    assert float(line[0].rsplit(" ", 1)[1]) < 1e-4
    assert (tmp_path / "lenet.onnx").is_file()


def test_script_refuses_a_model_file_without_input_shape_and_a_missing_onnxruntime(tmp_path, rng, capsys,
                                                                                monkeypatch):
    script = load_export_script()

    def refused(argv):  # exit status 2, one line on stderr
        with pytest.raises(SystemExit) as exc:
            script.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("export.py: error: "), err
        return err
    (tmp_path / "notes.npz").write_text("not a model")
    assert f"argument model: {tmp_path / 'notes.npz'}: " in refused([tmp_path / "notes.npz", tmp_path / "a.onnx"])

    model_file = tmp_path / "simple.npz"
    build_model("simple", (1, 28, 28), 10, rng).save(model_file)
    assert "--input-shape 1 H W" in refused([model_file, tmp_path / "a.onnx"])
    assert not (tmp_path / "a.onnx").exists()

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    err = refused([model_file, tmp_path / "b.onnx", "--input-shape", "1", "28", "28", "--check"])
    assert "--check needs onnxruntime: pip install 'gpucnn[onnx]'" in err
    assert not (tmp_path / "b.onnx").exists()  # checked before anything is written
