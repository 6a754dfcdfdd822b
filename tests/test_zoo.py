"""The zoo's networks and JSON architectures: shapes from the data, clear refusals, learning."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gpucnn import Adam, SoftmaxCrossEntropy
from gpucnn.nn.layers import Dropout
from gpucnn.nn.zoo import ARCHS, build_model, read_architecture


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_every_zoo_network_takes_its_shapes_from_the_data(arch, shape):
    model = build_model(arch, shape, 7, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (2, 7) and logits.dtype == np.float32
    assert model.summary(shape)


def test_zoo_weights_come_from_the_generator_and_dropout_from_its_own():
    data_rng = np.random.default_rng(5)
    a = build_model("lenet-bn", (1, 28, 28), 10, np.random.default_rng(0), dropout_rng=data_rng)
    b = build_model("lenet-bn", (1, 28, 28), 10, np.random.default_rng(0))
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    assert all(layer.rng is data_rng for layer in a.layers if isinstance(layer, Dropout))


def test_json_architecture_round_trips(tmp_path):
    original = build_model("lenet-bn", (1, 28, 28), 10, np.random.default_rng(0))
    path = tmp_path / "net.json"
    path.write_text(json.dumps(original.architecture()))
    rebuilt = build_model(str(path), (1, 28, 28), 10, np.random.default_rng(0))
    assert rebuilt.architecture() == original.architecture()
    saved_model_form = tmp_path / "saved.json"
    saved_model_form.write_text(json.dumps({"format_version": 1, "layers": original.architecture()}))
    assert read_architecture(saved_model_form) == original.architecture()


def test_json_architecture_that_does_not_fit_names_the_first_layer(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(build_model("simple", (1, 28, 28), 10).architecture()))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D 1->32 5x5\) does not fit the data's images \(3, 32, 32\)"):
        build_model(str(path), (3, 32, 32), 10)
    with pytest.raises(ValueError, match=r"layer 4 \(Dense 4608->10\) does not fit the data's images \(1, 32, 32\)"):
        build_model(str(path), (1, 32, 32), 10)
    with pytest.raises(ValueError, match=r"outputs shape \(None, 10\), the data has 5 classes; .*Dense\(features, 5\)"):
        build_model(str(path), (1, 28, 28), 5)


@pytest.mark.parametrize("text, message", [
    ("{not json", r"not valid JSON"),
    ("[]", r"expected a non-empty list of layers"),
    ('[{"config": {}}]', r"malformed entry"),
    ('[{"type": "Conv3D", "config": {}}]', r"layer 0: unknown layer type 'Conv3D'"),
    ('[{"type": "Conv2D", "config": {"in_channels": 1}}]', r"layer 0 \(Conv2D\): .*missing"),
])
def test_bad_json_architectures_are_refused_clearly(tmp_path, text, message):
    path = tmp_path / "net.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        build_model(str(path), (1, 28, 28), 10)


def test_unknown_arch_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown arch 'resnet'; expected one of simple, lenet, lenet-bn, cifar-small"):
        build_model("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"cannot read the architecture file"):
        build_model("no/such/net.json", (1, 28, 28), 10)


def test_cifar_small_learns_a_synthetic_colour_task():
    """32x32x3 images whose class is the brightest colour channel, plus noise: after a
    few steps cifar-small separates them far above chance (1/3)."""
    rng = np.random.default_rng(0)
    n = 96
    labels = np.arange(n) % 3
    x = rng.uniform(0, 0.6, (n, 3, 32, 32)).astype(np.float32)
    x[np.arange(n), labels] += 0.4  # (N, 32, 32): the class channel is brighter
    model = build_model("cifar-small", (3, 32, 32), 3, np.random.default_rng(1),
                        dropout_rng=np.random.default_rng(2))
    optimizer, loss_fn = Adam(model, 3e-3), SoftmaxCrossEntropy()
    for step in range(12):
        batch = slice((step % 3) * 32, (step % 3 + 1) * 32)
        loss_fn(model.forward(x[batch]), labels[batch])
        model.backward(loss_fn.backward(), need_input_grad=False)
        optimizer.step()
    test = rng.uniform(0, 0.6, (60, 3, 32, 32)).astype(np.float32)
    test_labels = np.arange(60) % 3
    test[np.arange(60), test_labels] += 0.4
    assert (model.predict(test) == test_labels).mean() > 0.9
