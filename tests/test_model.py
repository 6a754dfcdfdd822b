"""Sequential: summary, save/load round trips, device moves, optimizer state."""
from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, SoftmaxCrossEntropy
from gpucnn.optim import SGD, Adam


def lenet_like(seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    return Sequential([Conv2D(1, 6, 5, padding=2, dtype=dtype, rng=r), ReLU(), MaxPool2D(2),
                       Conv2D(6, 16, 5, dtype=dtype, rng=r), ReLU(), AvgPool2D(2),
                       Flatten(), Dense(16 * 5 * 5, 10, dtype=dtype, rng=r)])


def test_summary_shapes_and_counts_without_data():
    model = lenet_like()
    text = model.summary((1, 1, 28, 28))
    assert "(1, 6, 28, 28)" in text and "(1, 16, 5, 5)" in text and "(1, 400)" in text
    assert f"{6 * 25 + 6:,}" in text and f"{16 * 6 * 25 + 16:,}" in text and f"{4010:,}" in text
    lines = text.splitlines()
    assert f"Total params: {model.num_params:,}" in lines and f"Trainable params: {model.num_params:,}" in lines
    rows = lines[3:3 + len(model.layers)]  # header, rule, input row, then one row per layer
    assert sum(int(row.split()[-1].replace(",", "")) for row in rows) == model.num_params
    cells = lambda t: [line.split() for line in t.splitlines() if not line.startswith("-")]
    assert cells(model.summary((1, 28, 28))) == cells(text.replace("(1, ", "(None, "))  # one sample's shape
    with pytest.raises(ValueError, match=r"expected a per-sample shape \(1, H, W\) or a batch shape "
                                         r"\(N, 1, H, W\), got \(1, 3, 28, 28\)"):
        model.summary((1, 3, 28, 28))


def test_save_load_round_trip(tmp_path):
    model = lenet_like(seed=1)
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(np.float32)
    expected = model.forward(x)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = gpucnn.load(path)
    assert [repr(l) for l in loaded.layers] == [repr(l) for l in model.layers]
    np.testing.assert_array_equal(loaded.forward(x), expected)
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # no temp file left


def test_save_from_device_leaves_model_on_device(tmp_path):
    from standin import standin_backend
    b = standin_backend()
    model = lenet_like(seed=3).to(b)
    model.save(tmp_path / "m.npz")
    assert all(b.xp is gpucnn.backends.backend.array_module(layer.params[k])
               for layer in model.layers for k in layer.params)
    loaded = gpucnn.load(tmp_path / "m.npz")  # loads on a CPU-only machine
    assert loaded.backend.name == "cpu"
    np.testing.assert_array_equal(loaded.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_load_refuses_other_architecture():
    model = lenet_like()
    other = Sequential([Dense(3, 2, rng=np.random.default_rng(0))])
    with pytest.raises(ValueError, match=r"different architecture"):
        other.load_state_dict(model.state_dict())


@pytest.mark.parametrize("make_opt", [lambda m: SGD(m, 0.05, momentum=0.9), lambda m: Adam(m, 1e-2)])
def test_optimizer_state_save_restore_continues_identically(make_opt):
    """Train 2 steps, snapshot model + optimizer, train 2 more; a restored copy
    trained the same 2 steps ends bit-identical."""
    r = np.random.default_rng(4)
    x = r.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = r.integers(0, 10, 8)

    def steps(model, opt, n):
        loss = SoftmaxCrossEntropy()
        for _ in range(n):
            loss.forward(model.forward(x), y)
            model.backward(loss.backward(), need_input_grad=False)
            opt.step()

    model = lenet_like(5)
    opt = make_opt(model)
    steps(model, opt, 2)
    weights, opt_state = model.state_dict(), opt.state_dict()
    steps(model, opt, 2)

    restored = lenet_like(99)
    restored.load_state_dict(weights)
    restored_opt = make_opt(restored)
    restored_opt.load_state_dict(opt_state)
    steps(restored, restored_opt, 2)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value)


def test_optimizer_state_of_another_type_is_refused():
    model = lenet_like()
    with pytest.raises(ValueError, match=r"saved from 'Adam', cannot load it into SGD"):
        SGD(model, 0.1).load_state_dict(Adam(model).state_dict())


def test_relu_maxpool_reordering_changes_no_number():
    """Sequential runs ReLU after a following MaxPool2D; values and gradients equal
    running the layers one by one in the declared order, ties and negatives included
    (the Conv2D's weight gradient to rounding: it runs with the pool as one unit)."""
    from gpucnn.nn.model import execution_order
    r = np.random.default_rng(11)
    layers = [Conv2D(2, 3, 3, padding=1, dtype=np.float64, rng=r), ReLU(), MaxPool2D(2),
              ReLU(), MaxPool2D(3, stride=2, padding=1), Flatten(), Dense(3 * 2 * 2, 4, dtype=np.float64, rng=r)]
    model = Sequential(layers)
    assert execution_order(layers) == [0, 2, 1, 4, 3, 5, 6]
    x = r.standard_normal((5, 2, 8, 8))
    x[:, :, :4] = np.round(x[:, :, :4])  # many exact ties, many windows with no positive value
    dy = r.standard_normal((5, 4))
    y = model.forward(x)
    dx = model.backward(dy)
    grads = {k: layer.grads[name].copy() for k, layer, name in model.named_parameters()}
    h = x
    for layer in layers:
        h = layer.forward(h)
    np.testing.assert_array_equal(y, h)
    d = dy
    for layer in reversed(layers):
        d = layer.backward(d)
    np.testing.assert_array_equal(dx, d)
    for k, layer, name in model.named_parameters():
        if isinstance(layer, Conv2D):  # run with the pool as one unit (gpucnn.nn.execution_units): its weight
            # gradient adds the same products in another order
            np.testing.assert_allclose(grads[k], layer.grads[name], rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(grads[k], layer.grads[name])
