"""Learning-rate schedules: the per-batch sequence against torch.optim.lr_scheduler, exact
resume from state_dict, and argument validation."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from gpucnn import Dense, Sequential, SoftmaxCrossEntropy
from gpucnn.optim import SGD, Adam
from gpucnn.optim.schedules import Cosine, OneCycle, make_schedule

L = torch.optim.lr_scheduler
T, W, LR = 50, 7, 0.1


def optimizer(lr=LR, seed=0):
    return SGD(Sequential([Dense(3, 2, rng=np.random.default_rng(seed))]), lr, momentum=0.9)


def our_lrs(schedule, steps):
    """The lr of each of ``steps`` batches, and the one after the last."""
    out = []
    for _ in range(steps):
        out.append(schedule.optimizer.lr)
        assert schedule.lr == schedule.optimizer.lr
        schedule.step()
    return np.array(out + [schedule.optimizer.lr])


def torch_lrs(make, steps):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's epoch-argument deprecation warning
        schedule = make(opt)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
    return np.array(out + [opt.param_groups[0]["lr"]])


def warmed(opt, then, start_factor=0.25):
    """torch's linear warm-up for W steps followed by ``then``: LinearLR + SequentialLR.
    Its per-step composition gives the same numbers as our closed form (checked below)."""
    return L.SequentialLR(opt, [L.LinearLR(opt, start_factor, total_iters=W), then], milestones=[W])


# (our make_schedule arguments, torch's scheduler); each over T batches
CASES = {
    "constant": (dict(name="constant"), lambda o: L.ConstantLR(o, 1.0, total_iters=0)),
    "constant-warmup": (dict(name="constant", warmup_steps=W, warmup_start_factor=0.25),
                        lambda o: warmed(o, L.ConstantLR(o, 1.0, total_iters=0))),
    "step": (dict(name="step", step_size=9, gamma=0.5), lambda o: L.StepLR(o, 9, gamma=0.5)),
    "step-warmup": (dict(name="step", warmup_steps=W, warmup_start_factor=0.25, step_size=9, gamma=0.5),
                    lambda o: warmed(o, L.StepLR(o, 9, gamma=0.5))),
    "cosine": (dict(name="cosine"), lambda o: L.CosineAnnealingLR(o, T)),
    "cosine-warmup": (dict(name="cosine", warmup_steps=W, warmup_start_factor=0.25, eta_min=1e-3),
                      lambda o: warmed(o, L.CosineAnnealingLR(o, T - W, eta_min=1e-3))),
    "onecycle": (dict(name="onecycle"), lambda o: L.OneCycleLR(o, max_lr=LR, total_steps=T, cycle_momentum=False)),
    "onecycle-options": (dict(name="onecycle", pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
                         lambda o: L.OneCycleLR(o, max_lr=LR, total_steps=T, pct_start=0.25, div_factor=10.0,
                                                final_div_factor=100.0, cycle_momentum=False)),
}


def build(case, opt=None, total=T):
    kwargs = dict(CASES[case][0])
    return make_schedule(kwargs.pop("name"), opt or optimizer(), total, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_lr_sequence_matches_torch(case):
    ours = our_lrs(build(case), T)
    theirs = torch_lrs(CASES[case][1], T)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_default_warmup_starts_at_zero_and_reaches_the_base_rate():
    lrs = our_lrs(make_schedule("cosine", optimizer(), T, warmup_steps=W), T)
    np.testing.assert_allclose(lrs[:W + 1], LR * np.arange(W + 1) / W, rtol=1e-12)
    assert lrs[W] == LR and np.all(np.diff(lrs[W:]) <= 0)
    assert lrs[T] == pytest.approx(0.0, abs=1e-18)
    assert lrs[T - 1] == pytest.approx(LR * (1 + math.cos(math.pi * (T - 1 - W) / (T - W))) / 2, rel=1e-12)


def test_step_decay_default_drops_twice():
    lrs = our_lrs(make_schedule("step", optimizer(), 30), 30)[:30]
    np.testing.assert_allclose(lrs, np.repeat([LR, LR * 0.1, LR * 0.01], 10), rtol=1e-12)


def test_cosine_holds_eta_min_after_total_steps():
    schedule = make_schedule("cosine", optimizer(), 10, eta_min=1e-4)
    lrs = our_lrs(schedule, 15)
    np.testing.assert_allclose(lrs[10:], 1e-4, rtol=1e-12)


def test_onecycle_refuses_to_step_past_total_steps_as_torch():
    schedule = make_schedule("onecycle", optimizer(), 10)
    for _ in range(10):
        schedule.step()
    with pytest.raises(ValueError, match=r"OneCycle was stepped 11 times, more than its total_steps = 10"):
        schedule.step()


def test_construction_sets_the_first_rate():
    opt = optimizer()
    schedule = make_schedule("onecycle", opt, T)
    assert opt.lr == schedule.lr == pytest.approx(LR / 25)
    assert schedule.base_lr == LR


@pytest.mark.parametrize("case", list(CASES))
def test_save_restore_midway_reproduces_the_rest(case):
    """Step k times, save (through JSON, as a checkpoint), restore into a schedule built
    over another optimizer with another lr and total: the remaining rates are identical."""
    k = 19
    uninterrupted = our_lrs(build(case), T)
    first = build(case)
    for _ in range(k):
        first.step()
    state = json.loads(json.dumps(first.state_dict()))
    opt = optimizer(lr=0.9, seed=1)
    second = build(case, opt, total=T + 20)
    second.load_state_dict(state)
    assert opt.lr == uninterrupted[k]
    np.testing.assert_array_equal(our_lrs(second, T - k), uninterrupted[k:])


def test_training_resume_with_optimizer_and_schedule_is_bit_identical():
    r = np.random.default_rng(3)
    x, y = r.standard_normal((8, 5)).astype(np.float32), r.integers(0, 4, 8)

    def train(model, opt, schedule, steps):
        loss_fn = SoftmaxCrossEntropy()
        for _ in range(steps):
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
            schedule.step()

    def fresh(seed):
        model = Sequential([Dense(5, 4, rng=np.random.default_rng(seed))])
        opt = Adam(model, 1e-2, weight_decay=1e-3)
        return model, opt, make_schedule("cosine", opt, 12, warmup_steps=3)

    model, opt, schedule = fresh(0)
    train(model, opt, schedule, 5)
    saved = model.state_dict(), opt.state_dict(), json.loads(json.dumps(schedule.state_dict()))
    train(model, opt, schedule, 6)

    model2, opt2, schedule2 = fresh(1)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    schedule2.load_state_dict(saved[2])
    train(model2, opt2, schedule2, 6)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[key], value)
    assert opt2.lr == opt.lr


@pytest.mark.parametrize("call, error, message", [
    (lambda o: make_schedule("linear", o, T), ValueError,
     r"unknown schedule 'linear'; expected one of constant, step, cosine, onecycle"),
    (lambda o: make_schedule("cosine", o, T, gamma=0.5), TypeError,
     r"schedule 'cosine' got unknown option\(s\) \['gamma'\]; it accepts eta_min, warmup_start_factor"),
    (lambda o: make_schedule("cosine", o, 0), ValueError, r"Cosine expected total_steps, a positive int, got 0; "
                                                          r"use epochs \* batches per epoch"),
    (lambda o: make_schedule("constant", o, 10.5), ValueError, r"got 10.5"),
    (lambda o: make_schedule("cosine", o, 10, warmup_steps=10), ValueError,
     r"Cosine expected 0 <= warmup_steps < total_steps = 10, got 10"),
    (lambda o: make_schedule("cosine", o, 10, warmup_steps=-1), ValueError, r"got -1"),
    (lambda o: make_schedule("cosine", o, 10, warmup_steps=2, warmup_start_factor=1.5), ValueError,
     r"expected 0 <= warmup_start_factor <= 1, got 1.5"),
    (lambda o: make_schedule("step", o, T, step_size=0), ValueError, r"StepDecay expected step_size, a positive int"),
    (lambda o: make_schedule("step", o, T, gamma=0.0), ValueError, r"StepDecay expected 0 < gamma <= 1, got 0.0"),
    (lambda o: make_schedule("cosine", o, T, eta_min=1.0), ValueError,
     r"Cosine expected 0 <= eta_min <= lr = 0.1, got 1.0"),
    (lambda o: make_schedule("onecycle", o, T, warmup_steps=5), ValueError,
     r"OneCycle expected warmup_steps=0, got 5: its first phase is the warm-up; set its length with pct_start"),
    (lambda o: make_schedule("onecycle", o, T, pct_start=1.0), ValueError, r"OneCycle expected 0 < pct_start < 1"),
    (lambda o: make_schedule("onecycle", o, T, div_factor=0), ValueError, r"OneCycle expected div_factor > 0"),
    (lambda o: make_schedule("onecycle", o, 3), ValueError,
     r"OneCycle expected pct_start \* total_steps > 1 so the rise has two or more steps, got 0.3 \* 3"),
    (lambda o: Cosine(object(), T), TypeError, r"Cosine expected an optimizer with a positive lr attribute"),
])
def test_bad_arguments_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call(optimizer())


def test_loading_another_schedule_is_refused():
    state = make_schedule("cosine", optimizer(), T).state_dict()
    with pytest.raises(ValueError, match=r"saved from 'cosine', cannot load it into 'onecycle'; resume with the same"):
        OneCycle(optimizer(), T).load_state_dict(state)
    del state["step_count"]
    with pytest.raises(ValueError, match=r"lacks \['step_count'\]"):
        make_schedule("cosine", optimizer(), T).load_state_dict(state)
