"""Optimizers against torch.optim (same weights, same gradients), a tiny model against its
torch twin, hyperparameter validation, zero_grad, exact resume, float32 and transfers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpucnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, SoftmaxCrossEntropy
from gpucnn.backends.backend import get_backend
from gpucnn.optim import SGD, Adam, AdamW
from standin import optimizer_table_uploads

F = torch.nn.functional

# (ours, torch's) for the same hyperparameters
CONFIGS = {
    "sgd": (lambda m: SGD(m, 0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-wd": (lambda m: SGD(m, 0.1, weight_decay=0.05), lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05)),
    "momentum": (lambda m: SGD(m, 0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "nesterov-wd": (lambda m: SGD(m, 0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
                    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2)),
    "adam": (lambda m: Adam(m, 0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam-wd": (lambda m: Adam(m, 0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (lambda m: AdamW(m, 0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    "adamw-wd": (lambda m: AdamW(m, 0.02, betas=(0.5, 0.9), weight_decay=0.3),
                 lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.5, 0.9), weight_decay=0.3)),
}


def tiny_model(seed=0):
    r = np.random.default_rng(seed)
    return Sequential([Conv2D(1, 3, 3, padding=1, rng=r), ReLU(), MaxPool2D(2), Flatten(), Dense(3 * 4 * 4, 5, rng=r)])


def torch_twin(model):
    """Leaf tensors holding copies of the model's parameters, in its key order."""
    return {key: torch.tensor(layer.params[name].copy(), requires_grad=True)
            for key, layer, name in model.named_parameters()}


def torch_forward(p, x):
    """The tiny model in torch: conv -> relu -> 2x2 max pool -> flatten -> dense ((in, out) weight)."""
    h = F.max_pool2d(F.relu(F.conv2d(x, p["0.weight"], p["0.bias"], padding=1)), 2)
    return h.flatten(1) @ p["4.weight"] + p["4.bias"]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_optimizer_matches_torch_on_fed_gradients(config):
    """Five steps from the same float32 weights, the same random gradients fed to both,
    and an lr changed between steps as a schedule does."""
    make_ours, make_theirs = CONFIGS[config]
    model = tiny_model(1)
    ours = make_ours(model)
    twin = torch_twin(model)
    theirs = make_theirs(list(twin.values()))
    r = np.random.default_rng(2)
    for step in range(5):
        if step == 3:
            ours.lr *= 0.5
            for group in theirs.param_groups:
                group["lr"] *= 0.5
        for key, layer, name in model.named_parameters():
            g = r.standard_normal(layer.params[name].shape).astype(np.float32)
            layer.grads[name] = g
            twin[key].grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    for key, layer, name in model.named_parameters():
        assert layer.params[name].dtype == np.float32
        np.testing.assert_allclose(layer.params[name], twin[key].detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{config} {key}")


@pytest.mark.parametrize("config", ["nesterov-wd", "adam-wd", "adamw-wd"])
def test_tiny_model_trains_like_its_torch_twin(config):
    """Real steps: forward, label-smoothed loss, backward, update, four times, against torch."""
    make_ours, make_theirs = CONFIGS[config]
    model = tiny_model(3)
    twin = torch_twin(model)
    ours, theirs = make_ours(model), make_theirs(list(twin.values()))
    loss_fn = SoftmaxCrossEntropy(label_smoothing=0.1)
    r = np.random.default_rng(4)
    x = r.standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = r.integers(0, 5, 6)
    for _ in range(4):
        ours.zero_grad()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        ours.step()
        theirs.zero_grad()
        t_loss = F.cross_entropy(torch_forward(twin, torch.from_numpy(x)), torch.from_numpy(y), label_smoothing=0.1)
        t_loss.backward()
        theirs.step()
        assert float(loss) == pytest.approx(t_loss.item(), rel=1e-5)
    for key, layer, name in model.named_parameters():
        np.testing.assert_allclose(layer.params[name], twin[key].detach().numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=key)


def test_zero_grad_sets_grads_to_none_and_step_then_fails_clearly():
    model = tiny_model()
    opt = SGD(model, 0.1)
    x = np.ones((2, 1, 8, 8), dtype=np.float32)
    model.backward(model.forward(x))
    opt.step()
    opt.zero_grad()
    assert all(layer.grads[name] is None for _, layer, name in model.named_parameters())
    before = model.state_dict()
    with pytest.raises(RuntimeError, match=r"parameter 0.weight of Conv2D.*has no gradient; run model.backward"):
        opt.step()
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-updated
    assert opt.steps == 1


def test_step_with_one_missing_gradient_updates_nothing():
    model = tiny_model()
    opt = Adam(model)
    model.backward(model.forward(np.ones((2, 1, 8, 8), dtype=np.float32)))
    model.layers[4].grads["bias"] = None
    before = model.state_dict()
    with pytest.raises(RuntimeError, match=r"parameter 4.bias"):
        opt.step()
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("make, message", [
    (lambda m: SGD(m, 0), r"SGD expected lr > 0, got 0; try lr="),
    (lambda m: SGD(m, float("nan")), r"SGD expected lr > 0, got nan"),
    (lambda m: SGD(m, 0.1, momentum=-0.1), r"SGD expected 0 <= momentum < 1, got -0.1"),
    (lambda m: SGD(m, 0.1, nesterov=True), r"SGD\(nesterov=True\) expected momentum > 0, got momentum=0.0; "
                                           r"pass momentum=0.9 or nesterov=False"),
    (lambda m: SGD(m, 0.1, weight_decay=-1e-4), r"SGD expected weight_decay >= 0, got -0.0001; typical values"),
    (lambda m: Adam(m, betas=(0.9, 1.0)), r"Adam expected betas = \(beta1, beta2\), each in \[0, 1\), got \(0.9, 1.0\)"),
    (lambda m: Adam(m, betas=0.9), r"Adam expected betas = \(beta1, beta2\)"),
    (lambda m: Adam(m, betas=(-0.1, 0.9)), r"each in \[0, 1\)"),
    (lambda m: Adam(m, eps=0), r"Adam expected eps > 0, got 0; the usual choice is 1e-8"),
    (lambda m: AdamW(m, weight_decay=-0.01), r"AdamW expected weight_decay >= 0, got -0.01"),
    (lambda m: AdamW(m, lr=-1), r"AdamW expected lr > 0, got -1"),
])
def test_bad_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make(tiny_model())


def test_nesterov_must_be_a_bool():
    with pytest.raises(TypeError, match=r"SGD expected nesterov True or False, got 'yes'"):
        SGD(tiny_model(), 0.1, momentum=0.9, nesterov="yes")


def _train(model, opt, x, y, steps, label_smoothing=0.0):
    loss_fn = SoftmaxCrossEntropy(label_smoothing=label_smoothing)
    for _ in range(steps):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()


@pytest.mark.parametrize("config", list(CONFIGS))
def test_resume_is_bit_identical(config):
    """k steps, save (hyperparameters through JSON, as a checkpoint does), restore into a
    fresh model and an optimizer built with other hyperparameters, continue: bit-identical
    to the uninterrupted run."""
    make = CONFIGS[config][0]
    r = np.random.default_rng(5)
    x = r.standard_normal((8, 1, 8, 8)).astype(np.float32)
    y = r.integers(0, 5, 8)
    model = tiny_model(6)
    opt = make(model)
    _train(model, opt, x, y, 3)
    weights, state = model.state_dict(), opt.state_dict()
    buffers = state.pop("state")
    saved = dict(json.loads(json.dumps(state)), state=buffers)
    _train(model, opt, x, y, 3)

    restored = tiny_model(99)
    restored.load_state_dict(weights)
    other = {"SGD": lambda m: SGD(m, 0.7), "Adam": lambda m: Adam(m, 0.3), "AdamW": lambda m: AdamW(m, 0.3)}
    restored_opt = other[state["type"]](restored)
    restored_opt.load_state_dict(saved)
    assert restored_opt.hyperparameters() == opt.hyperparameters()
    _train(restored, restored_opt, x, y, 3)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value, err_msg=key)


def test_state_dict_carries_hyperparameters():
    state = SGD(tiny_model(), 0.05, momentum=0.9, nesterov=True, weight_decay=5e-4).state_dict()
    assert state["hyper"] == {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    state = AdamW(tiny_model(), 2e-3, betas=(0.8, 0.95), eps=1e-7).state_dict()
    assert state["type"] == "AdamW"
    assert state["hyper"] == {"lr": 2e-3, "betas": [0.8, 0.95], "eps": 1e-7, "weight_decay": 0.01}
    json.dumps(state["hyper"])


def test_load_refuses_other_type_wrong_shapes_and_bad_hyperparameters():
    model = tiny_model()
    opt = SGD(model, 0.1, momentum=0.9)
    model.backward(model.forward(np.ones((2, 1, 8, 8), dtype=np.float32)))
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"saved from 'SGD', cannot load it into AdamW"):
        AdamW(model).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved from 'Adam', cannot load it into AdamW"):
        AdamW(model).load_state_dict(Adam(model).state_dict())
    wrong = dict(state, state={**state["state"], "0.weight": {"velocity": np.zeros((2, 2), np.float32)}})
    with pytest.raises(ValueError, match=r"buffer 0.weight/velocity expected shape \(3, 1, 3, 3\), got \(2, 2\)"):
        SGD(model, 0.1).load_state_dict(wrong)
    with pytest.raises(ValueError, match=r"SGD expected 0 <= momentum < 1, got 3"):
        SGD(model, 0.1).load_state_dict(dict(state, hyper={"momentum": 3}))


def test_older_state_without_new_hyperparameters_loads():
    """A checkpoint written before nesterov/weight_decay existed: those keep the constructor's values."""
    model = tiny_model()
    old = {"type": "SGD", "hyper": {"lr": 0.2, "momentum": 0.5}, "steps": 4, "state": {}}
    opt = SGD(model, 0.1)
    opt.load_state_dict(old)
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay, opt.steps) == (0.2, 0.5, False, 0.0, 4)


@pytest.mark.parametrize("config", ["nesterov-wd", "adam-wd", "adamw-wd"])
def test_device_updates_match_cpu_stay_float32_and_transfer_nothing(config, device_backend):
    """Three steps with a label-smoothed loss on the device backend: the same numbers as
    on the CPU, float32 parameters and buffers, no host<->device copy in the loop."""
    make = CONFIGS[config][0]
    r = np.random.default_rng(7)
    x = r.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = r.integers(0, 5, 4)
    results = []
    for backend in (get_backend("cpu"), device_backend):
        model = tiny_model(8).to(backend)
        opt = make(model)
        xb, yb = backend.asarray(x), backend.asarray(y)
        if backend is device_backend and hasattr(backend.xp, "reset_transfers"):
            backend.xp.reset_transfers()
        _train(model, opt, xb, yb, 3, label_smoothing=0.1)
        if backend is device_backend and hasattr(backend.xp, "transfers"):
            # no copy in the loop; the fused optimizer's one-time table (tests/standin)
            assert backend.xp.transfers == {"to_device": optimizer_table_uploads(backend), "to_host": 0}
        for bufs in opt.state.values():
            assert all(b.dtype == np.float32 for b in bufs.values())
        results.append(model.state_dict())
    for key, value in results[0].items():
        assert results[1][key].dtype == np.float32
        np.testing.assert_allclose(results[1][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
