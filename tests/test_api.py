"""The library API a PyTorch or Keras user reaches for first (issue 8): a callable loss,
parameters() / zero_grad() / predict() on Sequential, and a summary that takes one
sample's shape and fits in 80 columns."""
from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, SoftmaxCrossEntropy
from gpucnn.backends.backend import array_module
from gpucnn.optim import SGD
from gpucnn.nn.zoo import ARCHS, build_model
from standin import standin_backend


def small_model(seed=0):
    r = np.random.default_rng(seed)
    return Sequential([Conv2D(1, 4, 3, padding=1, rng=r), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(4 * 4 * 4, 5, rng=r)])


def images(n, seed=1, shape=(1, 8, 8)):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


# -- finding 1: rng is optional --------------------------------------------------------------
def test_layers_need_no_rng():
    gpucnn.manual_seed(0)
    conv, dense = Conv2D(1, 8, 3), Dense(4, 2)
    assert conv.params["weight"].shape == (8, 1, 3, 3) and dense.params["weight"].shape == (4, 2)


# -- finding 2: the loss is callable ---------------------------------------------------------
def test_loss_is_callable_and_equals_forward():
    r = np.random.default_rng(0)
    logits, labels = r.standard_normal((6, 4)).astype(np.float32), r.integers(0, 4, 6)
    called, explicit = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    loss = called(logits, labels)
    assert np.ndim(loss) == 0 and loss.dtype == np.float32
    assert loss == explicit.forward(logits, labels)
    np.testing.assert_array_equal(called.backward(), explicit.backward())


def test_called_loss_stays_on_the_device_without_transfers():
    backend = standin_backend()
    r = np.random.default_rng(0)
    logits = backend.asarray(r.standard_normal((6, 4)).astype(np.float32))
    labels = backend.asarray(r.integers(0, 4, 6))
    backend.xp.reset_transfers()
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn(logits, labels)
    dlogits = loss_fn.backward()
    assert backend.xp.transfers == {"to_device": 0, "to_host": 0}
    assert array_module(loss) is backend.xp and loss.shape == ()
    assert array_module(dlogits) is backend.xp and dlogits.shape == (6, 4)


# -- finding 3: parameters(), zero_grad(), predict() -----------------------------------------
def test_parameters_are_the_arrays_in_named_order():
    model = small_model()
    expected = [layer.params[name] for _, layer, name in model.named_parameters()]
    assert len(model.parameters()) == 4
    assert all(p is q for p, q in zip(model.parameters(), expected))
    assert [p.shape for p in model.parameters()] == [(4, 1, 3, 3), (4,), (64, 5), (5,)]
    assert sum(p.size for p in model.parameters()) == model.num_params
    backend = standin_backend()
    model.to(backend)  # moving replaces the arrays: parameters() follows
    assert all(array_module(p) is backend.xp for p in model.parameters())
    assert model.parameters()[0] is model.layers[0].params["weight"]


def test_zero_grad_sets_grads_to_none_and_step_then_refuses():
    model = small_model()
    loss_fn = SoftmaxCrossEntropy()
    loss_fn(model(images(3)), np.array([0, 1, 2]))
    model.backward(loss_fn.backward(), need_input_grad=False)
    assert all(layer.grads[name] is not None for _, layer, name in model.named_parameters())
    model.zero_grad()
    assert all(layer.grads[name] is None for _, layer, name in model.named_parameters())
    assert all(set(layer.grads) == set(layer.params) for layer in model.layers)
    with pytest.raises(RuntimeError, match=r"has no gradient; run model.backward"):
        SGD(model, 0.1).step()


def test_len_iter_getitem_repr():
    model = small_model()
    assert len(model) == 5 and list(model) == model.layers and model[3] is model.layers[3]
    model.eval()
    head = model[:3]
    assert isinstance(head, Sequential) and head.layers == model.layers[:3]
    assert not head.training and not model.layers[0].training  # slicing keeps the mode
    x = images(2)
    np.testing.assert_array_equal(model[3:](head(x)), model(x))
    assert repr(model).splitlines()[1] == f"  (0): {model.layers[0]!r}"
    assert model.output_shape((7, 1, 8, 8)) == (7, 5)
    with pytest.raises(ValueError, match=r"Dense.*expected x of shape \(N, 64\), got \(7, 100\)"):
        model.output_shape((7, 1, 10, 10))


def _softmax64(logits):
    z = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_predict_and_predict_proba_agree_with_forward():
    model = small_model()
    x = images(37)
    logits = model.forward(x)
    ids, probs = model.predict(x, batch_size=8), model.predict_proba(x, batch_size=8)
    assert ids.shape == (37,) and ids.dtype == np.int64 and isinstance(ids, np.ndarray)
    assert probs.shape == (37, 5) and probs.dtype == np.float32
    np.testing.assert_array_equal(ids, logits.argmax(axis=1))
    np.testing.assert_allclose(probs, _softmax64(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(model.predict(x, batch_size=1000), ids)  # one batch, same ids
    np.testing.assert_array_equal(model.predict(x.astype(np.float64)), ids)  # host float64: cast
    assert model.predict(x[:0]).shape == (0,) and model.predict_proba(x[:0]).shape == (0, 5)


def test_predict_proba_of_a_float64_model_keeps_float64():
    r = np.random.default_rng(0)
    model = Sequential([Flatten(), Dense(64, 3, dtype=np.float64, rng=r)])
    assert model.predict_proba(images(4)).dtype == np.float64


@pytest.mark.parametrize("start_training", [True, False])
def test_predict_runs_in_eval_mode_and_restores_the_mode(start_training):
    model = small_model().train(start_training)
    seen = []
    forward = model.layers[-1].forward

    def spy(x):
        seen.append((model.training, model.layers[0].training))
        return forward(x)
    model.layers[-1].forward = spy
    model.predict(images(5), batch_size=2)
    assert seen == [(False, False)] * 3
    assert model.training is start_training
    assert all(layer.training is start_training for layer in model.layers)


def test_predict_restores_each_layers_mode_after_an_exception():
    model = small_model().train()
    model.layers[1].training = False  # a layer frozen in eval mode by the user stays so

    def broken(x):
        raise RuntimeError("boom")
    model.layers[-1].forward = broken
    with pytest.raises(RuntimeError, match="boom"):
        model.predict_proba(images(4))
    assert model.training and [layer.training for layer in model.layers] == [True, False, True, True, True]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_predict_refuses_bad_batch_size(bad):
    with pytest.raises(ValueError, match=r"Sequential.predict expected batch_size to be a positive int"):
        small_model().predict(images(2), batch_size=bad)


@pytest.mark.parametrize("x, error, message", [
    (images(2)[:, 0], ValueError, r"predict: layer 0: Conv2D.*expected x of shape \(N, 1, H, W\), "
                                  r"got \(2, 8, 8\); add a channel axis with x\[:, None\]"),
    (images(2, shape=(3, 8, 8)), ValueError, r"expected x of shape \(N, 1, H, W\), got \(2, 3, 8, 8\)"),
    (images(2, shape=(1, 10, 10)), ValueError, r"layer 4: Dense.*expected x of shape \(N, 64\), got \(2, 100\)"),
    (np.zeros((2, 1, 8, 8), np.int64), TypeError, r"Sequential.predict expected images of uint8 pixels 0..255 or "
                                                   r"float pixels in \[0, 1\], got dtype int64; cast pixels 0..255 with "
                                                   r"x.astype\(numpy.uint8\)"),
    (np.zeros((2, 1, 8, 8), bool), TypeError, r"expected images of uint8 pixels 0..255 or float pixels in \[0, 1\], "
                                              r"got dtype bool"),
    ([[0.0]], TypeError, r"expected x as an array \(N, C, H, W\), got list; convert with numpy.asarray"),
])
def test_predict_validates_x_up_front(x, error, message):
    model = small_model()
    calls = []
    model.layers[0].forward = lambda batch: calls.append(batch)  # must never be reached
    with pytest.raises(error, match=message):
        model.predict(x)
    assert calls == []


def test_predict_refuses_a_model_without_class_logits_and_x_of_another_device():
    r = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"expected the model to output logits of shape \(N, classes\), "
                                         r"got \(2, 2, 6, 6\); end the model with Flatten\(\) and Dense"):
        Sequential([Conv2D(1, 2, 3, rng=r)]).predict(images(2))
    device_x = standin_backend().asarray(images(2))
    with pytest.raises(TypeError, match=r"x on another device than the model \(on 'cpu'\)"):
        small_model().predict(device_x)


@pytest.mark.parametrize("where", ["host", "device"])
@pytest.mark.parametrize("kind", ["predict", "predict_proba"])
def test_predict_on_a_device_uploads_per_batch_and_downloads_once(where, kind):
    backend = standin_backend()
    x = images(37)
    expected = getattr(small_model(), kind)(x)
    model = small_model().to(backend)
    given = backend.asarray(x) if where == "device" else x
    backend.xp.reset_transfers()
    result = getattr(model, kind)(given, batch_size=8)
    uploads = 5 if where == "host" else 0  # ceil(37 / 8) batches
    assert backend.xp.transfers == {"to_device": uploads, "to_host": 1}
    assert isinstance(result, np.ndarray) and result.dtype == expected.dtype
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("where", ["host", "device"])
@pytest.mark.parametrize("kind", ["predict", "predict_proba"])
def test_predict_takes_uint8_pixels_as_the_same_floats_divided_by_255(where, kind):
    """uint8 images 0..255 predict exactly as their float32 / 255 copy; on a device the
    batches travel as uint8 (the same number of uploads) and become floats there."""
    pixels = np.random.default_rng(2).integers(0, 256, (37, 1, 8, 8), dtype=np.uint8)
    as_floats = pixels.astype(np.float32) / np.float32(255)
    expected = getattr(small_model(), kind)(as_floats, batch_size=8)
    np.testing.assert_array_equal(getattr(small_model(), kind)(pixels, batch_size=8), expected)
    backend = standin_backend()
    model = small_model().to(backend)
    given = backend.asarray(pixels) if where == "device" else pixels
    uploaded = []
    upload = backend._to_device
    backend._to_device = lambda a, dtype=None: uploaded.append(np.dtype(a.dtype)) or upload(a, dtype)
    backend.xp.reset_transfers()
    result = getattr(model, kind)(given, batch_size=8)
    assert backend.xp.transfers == {"to_device": 5 if where == "host" else 0, "to_host": 1}
    assert set(uploaded) == {np.dtype(np.uint8)}  # each batch is handed to the device as uint8
    assert result.dtype == expected.dtype
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)


# -- finding 4 and 14: summary ---------------------------------------------------------------
def test_describe_is_short_and_repr_unchanged():
    cases = [
        (Conv2D(1, 32, 5), "Conv2D 1->32 5x5"),
        (Conv2D(16, 32, 5, stride=2, padding=2), "Conv2D 16->32 5x5 s2 p2"),
        (Conv2D(16, 32, 3, padding="same"), "Conv2D 16->32 3x3 same"),
        (Conv2D(3, 8, (3, 5), padding=(1, 2)), "Conv2D 3->8 3x5 p(1,2)"),
        (Conv2D(3, 8, 2, padding=((1, 0), (0, 1))), "Conv2D 3->8 2x2 p(1,0,0,1)"),
        (Conv2D(3, 8, 3, padding="valid"), "Conv2D 3->8 3x3"),
        (MaxPool2D(2), "MaxPool2D 2x2"),
        (MaxPool2D(3, stride=2, padding=1), "MaxPool2D 3x3 s2 p1"),
        (AvgPool2D(2), "AvgPool2D 2x2"),
        (Dense(4608, 10), "Dense 4608->10"),
        (ReLU(), "ReLU"),
        (Flatten(), "Flatten"),
    ]
    for layer, text in cases:
        assert layer.describe() == text
    assert repr(Conv2D(1, 32, 5)) == "Conv2D(in_channels=1, out_channels=32, kernel_size=(5, 5), stride=1, padding=0)"


def five_layer_net():
    return Sequential([Conv2D(1, 32, 5), ReLU(), MaxPool2D(2), Flatten(), Dense(32 * 12 * 12, 10)])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_summary_of_every_built_model_fits_80_columns(arch, shape):
    text = build_model(arch, shape, 10, np.random.default_rng(0)).summary(shape)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_summary_table_rows_per_sample_and_batch():
    model = five_layer_net()
    per_sample = model.summary((1, 28, 28)).splitlines()
    assert max(len(line) for line in per_sample) <= 80
    assert per_sample[0].split() == ["Layer", "Output", "shape", "Param", "#"]
    rows = [line.split("  ") for line in per_sample[2:8]]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert rows == [
        ["Input", "(None, 1, 28, 28)"],
        ["0 Conv2D 1->32 5x5", "(None, 32, 24, 24)", "832"],
        ["1 ReLU", "(None, 32, 24, 24)", "0"],
        ["2 MaxPool2D 2x2", "(None, 32, 12, 12)", "0"],
        ["3 Flatten", "(None, 4608)", "0"],
        ["4 Dense 4608->10", "(None, 10)", "46,090"],
    ]
    assert per_sample[-3:] == ["Total params: 46,922", "Trainable params: 46,922", "Non-trainable params: 0"]
    batch = model.summary((16, 1, 28, 28))
    assert "(16, 1, 28, 28)" in batch and "(16, 4608)" in batch and "None" not in batch
    assert model.summary([1, 28, 28]) == "\n".join(per_sample)


def test_summary_of_a_dense_model_takes_features():
    model = Sequential([Dense(784, 10, rng=np.random.default_rng(0))])
    assert "(None, 10)" in model.summary((784,)) and "(32, 10)" in model.summary((32, 784))
    with pytest.raises(ValueError, match=r"expected a per-sample shape \(784,\) or a batch shape "
                                         r"\(N, 784\), got \(3, 28\)"):
        model.summary((3, 28))


def test_summary_counts_saved_state_as_non_trainable():
    model = five_layer_net()
    model.layers[1].state["running"] = np.zeros(7, np.float32)
    lines = model.summary((1, 28, 28)).splitlines()
    assert lines[4].split()[-1] == "7"
    assert lines[-3:] == ["Total params: 46,929", "Trainable params: 46,922", "Non-trainable params: 7"]


@pytest.mark.parametrize("shape", [(3, 28, 28), (28, 28), (4, 3, 28, 28), (1, 1, 1, 28, 28)])
def test_summary_mismatch_names_the_expected_channels(shape):
    with pytest.raises(ValueError) as info:
        five_layer_net().summary(shape)
    assert str(info.value) == (
        "Sequential.summary: the first layer, Conv2D 1->32 5x5, expected a per-sample shape "
        f"(1, H, W) or a batch shape (N, 1, H, W), got {shape}")
    assert "channel axis" not in str(info.value)


def test_summary_mismatch_deeper_in_the_model_names_the_layer():
    with pytest.raises(ValueError, match=r"summary\(\(1, 32, 32\)\) as a per-sample shape: layer 4: "
                                         r"Dense.*expected x of shape \(N, 4608\), got \(None, 6272\)"):
        five_layer_net().summary((1, 32, 32))
    with pytest.raises(ValueError, match=r"summary\(\(2, 1, 3, 3\)\) as a batch shape: layer 0: "
                                         r"Conv2D.*kernel 5x5 is larger than the padded input"):
        five_layer_net().summary((2, 1, 3, 3))


@pytest.mark.parametrize("bad", [28, (), (1, 0, 28), (1.0, 28, 28), None])
def test_summary_refuses_what_is_not_a_shape(bad):
    with pytest.raises(ValueError, match=r"summary expected a shape of positive ints such as \(1, 28, 28\)"):
        five_layer_net().summary(bad)
