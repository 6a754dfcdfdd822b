"""gpucnn.training.checkpoint: atomic saves that survive Ctrl-C, and one clear CheckpointError for
every file that cannot be read as what it is asked to be."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import gpucnn
from gpucnn.training.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, check_output_path, checkpoint_arrays,
                                        load_checkpoint, load_trained_model, read_model, save_checkpoint,
                                        write_checkpoint)
from gpucnn.training.config import TrainConfig, make_optimizer
from gpucnn.nn.zoo import build_model


@pytest.fixture
def trained(tmp_path):
    """A small model, its optimizer after one step, and a checkpoint of it at epoch 1."""
    rng = np.random.default_rng(0)
    model = build_model("simple", (1, 8, 8), 10, rng)
    optimizer = make_optimizer("adam", model, 1e-3)
    loss = gpucnn.SoftmaxCrossEntropy()
    loss.forward(model.forward(rng.random((4, 1, 8, 8), dtype=np.float32)), np.arange(4))
    model.backward(loss.backward(), need_input_grad=False)
    optimizer.step()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, optimizer, 1, rng, TrainConfig(dataset="digits"), [{"epoch": 1}])
    return model, optimizer, rng, path


def test_round_trip_keeps_weights_optimizer_state_and_rng(trained):
    model, optimizer, rng, path = trained
    saved = load_checkpoint(path)
    assert saved["meta"]["epoch"] == 1 and saved["meta"]["config"]["dataset"] == "digits"
    assert saved["meta"]["rng_state"] == rng.bit_generator.state
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(saved["params"][key], value)
    state = optimizer.state_dict()
    for key, buffers in state["state"].items():
        for name, value in buffers.items():
            np.testing.assert_array_equal(saved["optimizer_state"]["state"][key][name], value)
    np.testing.assert_array_equal(load_trained_model(path).state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_ctrl_c_inside_the_write_keeps_the_previous_file_and_no_temp_file(trained, monkeypatch):
    model, optimizer, rng, path = trained
    before = path.read_bytes()

    def interrupted(fd):
        raise KeyboardInterrupt  # as a second Ctrl-C while the new file is being written
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, optimizer, 2, rng, TrainConfig(dataset="digits"), [])
    assert path.read_bytes() == before and load_checkpoint(path)["meta"]["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.npz"]


def write_entries(path, **entries):
    np.savez(path, **entries)
    return path


def broken_files(tmp_path, good_checkpoint, model_file):
    """(name, path, message fragment) for every way a file can be wrong."""
    data = good_checkpoint.read_bytes()
    arrays = dict(np.load(good_checkpoint))
    meta = json.loads(str(arrays["meta"]))

    def checkpoint_with(name, **changes):
        entries = dict(arrays, meta=np.array(json.dumps({**meta, **changes})))
        return write_entries(tmp_path / name, **entries)

    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "array.npy", np.zeros(3))
    newer = checkpoint_with("newer.npz", format=CHECKPOINT_FORMAT + 1)
    lacking = write_entries(tmp_path / "lacking.npz", meta=np.array(json.dumps({"format": CHECKPOINT_FORMAT})))
    model_arrays = dict(np.load(model_file))
    model_meta = json.loads(str(model_arrays["architecture"]))
    newer_model = write_entries(tmp_path / "newer_model.npz", **dict(
        model_arrays, architecture=np.array(json.dumps({**model_meta, "format_version": 99}))))
    return [
        ("missing", tmp_path / "nothing.npz", "no such file"),
        ("folder", tmp_path, "is a folder, not a file"),
        ("truncated", tmp_path / "truncated.npz", "the file is truncated or damaged"),
        ("random bytes", tmp_path / "random.npz", "not an .npz file (it starts with bytes"),
        ("empty", tmp_path / "empty.npz", "the file is empty"),
        (".npy", tmp_path / "array.npy", "a single .npy array, not a gpucnn .npz file"),
        ("foreign .npz", write_entries(tmp_path / "foreign.npz", x=np.zeros(2)),
         "an .npz but not a gpucnn checkpoint or model file (its entries: x)"),
        ("bad JSON", write_entries(tmp_path / "json.npz", meta=np.array("{not json")), "entry is not valid JSON"),
        ("newer format", newer, f"checkpoint format {CHECKPOINT_FORMAT + 1}, this gpucnn reads format "
                                f"{CHECKPOINT_FORMAT}; upgrade gpucnn"),
        ("lacking keys", lacking, "the checkpoint lacks architecture, optimizer, epoch"),
        ("newer model file", newer_model, "model file format 99, this gpucnn reads format 1; upgrade gpucnn"),
        ("model file", model_file, "a model file (Sequential.save), not a training checkpoint"),
    ]


@pytest.mark.parametrize("case", range(12))
def test_every_broken_file_is_one_clear_checkpoint_error(case, trained, tmp_path):
    model, _, _, good = trained
    model_file = tmp_path / "model.npz"
    model.save(model_file)
    name, path, fragment = broken_files(tmp_path, good, model_file)[case]
    readers = [load_checkpoint] if name == "model file" else [load_checkpoint, read_model, gpucnn.load]
    if name == "newer model file":
        readers = [read_model, gpucnn.load]
    for reader in readers:
        with pytest.raises(CheckpointError) as info:
            reader(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and fragment in message, (reader.__name__, message)
        assert "\n" not in message and "pickle" not in message
        assert isinstance(info.value, ValueError)


def test_gpucnn_load_reads_model_files_and_the_model_in_a_checkpoint(trained, tmp_path):
    model, _, _, checkpoint = trained
    model.save(tmp_path / "model.npz")
    for path in (tmp_path / "model.npz", checkpoint):
        loaded = gpucnn.load(path)
        np.testing.assert_array_equal(loaded.state_dict()["4.weight"], model.state_dict()["4.weight"])


def test_a_file_of_another_architecture_cannot_be_rebuilt(trained, tmp_path):
    model, optimizer, rng, _ = trained
    arrays = checkpoint_arrays(model, optimizer, 1, rng, {"dataset": "digits"}, [])
    arrays["param/0.weight"] = np.zeros((3, 3), np.float32)
    write_checkpoint(tmp_path / "odd.npz", arrays)
    with pytest.raises(CheckpointError, match=r"odd\.npz: its model cannot be rebuilt \(parameter 0\.weight"):
        gpucnn.load(tmp_path / "odd.npz")


def test_output_path_check_probes_and_cleans_up(tmp_path):
    check_output_path(tmp_path / "new" / "deeper" / "c.npz")  # creatable: fine, nothing created
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    for path, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "c.npz", "is a file"),
                          ("/proc/c.npz", "cannot create files in /proc"),
                          ("/dev/null", "exists and is not a regular file")):
        with pytest.raises(ValueError, match=message):
            check_output_path(path)
