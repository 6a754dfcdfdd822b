"""gpucnn's default generator, the training flag and saved layer state."""
from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn import Conv2D, Dense, Flatten, ReLU, Sequential


def _model(rng=None):
    return Sequential([Conv2D(1, 2, 3, rng=rng), ReLU(), Flatten(), Dense(2 * 4 * 4, 3, rng=rng)])


def test_manual_seed_makes_models_without_rng_identical():
    gpucnn.manual_seed(7)
    a = _model().state_dict()
    gpucnn.manual_seed(7)
    b = _model().state_dict()
    c = _model().state_dict()  # the stream moved on: different weights
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_explicit_generator_wins_over_the_default():
    gpucnn.manual_seed(1)
    a = _model(np.random.default_rng(3)).state_dict()
    gpucnn.manual_seed(2)
    b = _model(np.random.default_rng(3)).state_dict()
    np.testing.assert_array_equal(a["0.weight"], b["0.weight"])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_manual_seed_refuses_non_integers(bad):
    with pytest.raises(ValueError, match="manual_seed expected a non-negative int"):
        gpucnn.manual_seed(bad)


def test_train_eval_set_the_flag_on_model_and_layers():
    model = _model()
    assert model.training and all(layer.training for layer in model.layers)
    assert model.eval() is model
    assert not model.training and not any(layer.training for layer in model.layers)
    model.train()
    assert model.training and all(layer.training for layer in model.layers)


def test_saved_state_round_trips_and_may_be_missing():
    model = _model(np.random.default_rng(0))
    model.layers[1].state["seen"] = np.arange(3, dtype=np.float32)  # a layer with saved state
    saved = model.state_dict()
    assert "1.seen" in saved
    other = _model(np.random.default_rng(1))
    other.layers[1].state["seen"] = np.zeros(3, dtype=np.float32)
    other.load_state_dict(saved)
    np.testing.assert_array_equal(other.layers[1].state["seen"], [0, 1, 2])
    old_file = {k: v for k, v in saved.items() if k != "1.seen"}  # written before state existed
    fresh = _model(np.random.default_rng(1))
    fresh.layers[1].state["seen"] = np.zeros(3, dtype=np.float32)
    fresh.load_state_dict(old_file)
    np.testing.assert_array_equal(fresh.layers[1].state["seen"], 0)
    with pytest.raises(ValueError, match="different architecture"):
        fresh.load_state_dict({**saved, "9.bogus": np.zeros(1)})
