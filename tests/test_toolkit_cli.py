"""Issue 10's toolkit as the CLI and run() see it: zoo and JSON architectures, datasets by
name or .npz, input normalisation from the training split, optimizers, weight decay,
label smoothing, schedules, augmentation, train/eval modes, and exact resume with all
of them at once.

Runs on scikit-learn's digits or a tiny .npz written here, on the CPU (the stand-in
backend's random module is not strict yet: Dropout and augmentation through fit are
tested on the CPU only).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gpucnn
import gpucnn.training.loops
import gpucnn.training.run
from gpucnn.training.checkpoint import load_checkpoint
from gpucnn.data.datasets import channel_stats, load_digits
from gpucnn.nn.layers import BatchNorm2D, Dropout, Normalize
from gpucnn.data.splits import data_generator, plan_splits
from gpucnn.training.run import TrainConfig, evaluate, run
from gpucnn.nn.zoo import build_model
from test_cli import error_lines, load_script, main

train_cli = load_script("train")
evaluate_cli = load_script("evaluate")
export_cli = load_script("export")


def quiet(*args, **kwargs):
    pass


@pytest.fixture
def no_data(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded (or a model built) before the flags were checked")
    monkeypatch.setattr(gpucnn.training.run, "load_dataset", forbidden)
    monkeypatch.setattr(gpucnn.training.run, "build_model", forbidden)


def write_npz(path, channels=1, size=12, classes=3, n_train=150, n_test=45, test_offset=0, seed=0):
    """A tiny learnable .npz: class k is a bright horizontal band at rows 3k..3k+2, plus noise;
    uint8 (N, H, W) for one channel, (N, H, W, C) otherwise, channel 2 constant."""
    rng = np.random.default_rng(seed)

    def images(n, offset):
        labels = np.arange(n) % classes
        x = rng.integers(0, 90, (n, size, size, channels))
        rows = 3 * labels[:, None] + np.arange(3)  # (n, 3)
        x[np.arange(n)[:, None], rows] += 150  # (n, 3, size, channels)
        if channels > 2:
            x[..., 2] = 77  # a constant channel: its std is 0
        x = np.clip(x + offset, 0, 255).astype(np.uint8)
        return (x[..., 0] if channels == 1 else x), labels

    x_train, y_train = images(n_train, 0)
    x_test, y_test = images(n_test, test_offset)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


# -- flags checked before any data ---------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--arch", "resnet"], "argument --arch expected one of simple, lenet, lenet-bn, cifar-small, or the path "
                           "of a .json architecture file, got 'resnet'"),
    (["--arch", "no/such/net.json"], "argument --arch no/such/net.json: no such file"),
    (["--dataset", "imagenet"], "argument --dataset expected one of mnist, fashion-mnist, cifar10, digits, "
                                "the path of a .npz file or of a folder of images with one subfolder per "
                                "class, got 'imagenet'"),
    (["--dataset", "no/such/data.npz"], "argument --dataset no/such/data.npz: no such file"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--optimizer", "adamw", "--momentum", "0.5"],
     "argument --momentum: only used with --optimizer momentum or nesterov, got --optimizer adamw"),
    (["--optimizer", "nesterov", "--momentum", "0"], "argument --momentum expected a number in (0, 1) for "
                                                     "--optimizer nesterov, got 0.0"),
    (["--weight-decay", "-1"], "argument --weight-decay: expected a non-negative number, got '-1'"),
    (["--label-smoothing", "1"], "argument --label-smoothing: expected a number in [0, 1), got '1'"),
    (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["--schedule", "onecycle", "--warmup-epochs", "1"],
     "argument --warmup-epochs: not used with --schedule onecycle, which starts with its own warm-up"),
    (["--warmup-epochs", "3"], "argument --warmup-epochs expected fewer epochs than --epochs 3, got 3"),
    (["--augment", "rotate"], "argument --augment: augmentation spec 'rotate': unknown part 'rotate'"),
    (["--augment", "shift:2,flip"], "argument --augment shift:2,flip: flip is refused for --dataset mnist: "
                                    "a mirrored digit is another symbol"),
    (["--dataset", "digits", "--augment", "flip"], "flip is refused for --dataset digits"),
])
def test_bad_toolkit_flags_exit_2_with_one_line_before_loading_data(flags, message, capsys, no_data):
    status, out, err = main(train_cli, flags, capsys)
    assert status == 2
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0], err
    assert out == ""


def test_data_dir_and_download_are_refused_for_an_npz_dataset(tmp_path, capsys, no_data):
    data = write_npz(tmp_path / "tiny.npz")
    for flags in (["--data-dir", tmp_path], ["--download"]):
        status, _, err = main(train_cli, ["--dataset", data, *flags], capsys)
        assert status == 2
        assert f"only used with --dataset mnist, fashion-mnist or cifar10, got --dataset {data}" in err


def test_a_malformed_json_architecture_exits_2_before_loading_data(tmp_path, capsys, no_data):
    path = tmp_path / "net.json"
    path.write_text("{not json")
    status, _, err = main(train_cli, ["--arch", path], capsys)
    assert status == 2 and f"argument --arch {path}: not valid JSON" in error_lines(err)[0]


# -- --arch: a JSON file ---------------------------------------------------------------------
def test_a_json_architecture_from_a_models_architecture_trains(tmp_path, capsys):
    arch, ckpt = tmp_path / "net.json", tmp_path / "c.npz"
    arch.write_text(json.dumps(build_model("lenet", (1, 8, 8), 10).architecture()))
    status, out, err = main(train_cli, ["--dataset", "digits", "--arch", arch, "--epochs", "2", "--lr", "0.01",
                                        "--verbose", "2", "--checkpoint", ckpt], capsys)
    assert status == 0, err
    accuracy = float(out.splitlines()[-1].removeprefix("test accuracy: ").rstrip("%"))
    assert accuracy > 60  # chance is 10
    saved = load_checkpoint(ckpt)["meta"]
    assert saved["architecture"][0]["type"] == "Normalize"
    assert saved["architecture"][1:] == json.loads(arch.read_text())

    # a saved run's architecture starts with its Normalize: trained again, it gets this data's statistics
    again = tmp_path / "again.json"
    again.write_text(json.dumps([{**saved["architecture"][0], "config": {"mean": [0.5], "std": [2.0]}},
                                 *saved["architecture"][1:]]))
    status, _, err = main(train_cli, ["--dataset", "digits", "--arch", again, "--epochs", "1", "--verbose", "0",
                                      "--checkpoint", ckpt], capsys)
    assert status == 0, err
    assert load_checkpoint(ckpt)["meta"]["architecture"] == saved["architecture"]  # one Normalize, the data's


def test_a_json_architecture_that_does_not_fit_the_data_exits_2_naming_the_layer(tmp_path, capsys):
    arch, ckpt = tmp_path / "net.json", tmp_path / "c.npz"
    arch.write_text(json.dumps(build_model("simple", (1, 28, 28), 10).architecture()))
    status, out, err = main(train_cli, ["--dataset", "digits", "--arch", arch, "--verbose", "0",
                                        "--checkpoint", ckpt], capsys)
    assert status == 2
    assert error_lines(err) == [f"train.py: error: --arch {arch}: layer 4 (Dense 4608->10) does not fit the "
                                "data's images (1, 8, 8): Dense(in_features=4608, out_features=10) expected x of "
                                "shape (N, 4608), got (None, 128)"]
    assert not ckpt.exists() and "epoch" not in out


# -- --dataset: your own .npz ----------------------------------------------------------------
def test_an_npz_dataset_trains_evaluates_and_exports_from_the_cli(tmp_path, capsys):
    data, ckpt = write_npz(tmp_path / "bands.npz"), tmp_path / "c.npz"
    status, out, err = main(train_cli, ["--dataset", data, "--epochs", "3", "--lr", "0.01", "--verbose", "2",
                                        "--checkpoint", ckpt], capsys)
    assert status == 0, err
    config = json.loads(out.splitlines()[0].removeprefix("config: "))
    assert config["dataset"] == str(data) and "data_dir" not in config and "download" not in config
    assert "data: bands: 135 train, 15 validation, 45 test images of shape (1, 12, 12)" in out
    assert out.splitlines()[-1] == "test accuracy: 100.00%"  # three bright bands: easy
    meta = load_checkpoint(ckpt)["meta"]
    assert (meta["input_shape"], meta["num_classes"], meta["class_names"]) == ([1, 12, 12], 3, None)

    status, out, err = main(evaluate_cli, [ckpt], capsys)
    assert status == 0, err
    assert f"data: {data} test images (as recorded in the checkpoint)" in out
    assert "accuracy 100.00% on 45 images" in out

    status, out, err = main(export_cli, [ckpt, tmp_path / "bands.onnx"], capsys)
    assert status == 0, err
    assert "input images (N, 1, 12, 12)" in out  # from the checkpoint's meta: no shape table knows 12x12


def test_named_datasets_are_found_in_the_checkouts_data_folder_from_any_working_folder(tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = main(train_cli, ["--limit-train", "300", "--limit-test", "100", "--epochs", "1",
                                        "--verbose", "2"], capsys)
    assert status == 0, err
    config = json.loads(out.splitlines()[0].removeprefix("config: "))
    assert config["data_dir"] == str(train_cli.DATA_ROOT / "mnist")


# -- normalisation ----------------------------------------------------------------------------
def normalize_layer(checkpoint):
    first = load_checkpoint(checkpoint)["meta"]["architecture"][0]
    assert first["type"] == "Normalize"
    return first["config"]


def test_normalisation_statistics_come_from_the_training_split_only(tmp_path):
    """The test images (and the validation images) leave the Normalize layer unchanged:
    its mean and std are exactly those of the training split."""
    configs = []
    for offset in (0, 60):  # the second file differs only in its (brighter) test images
        data = write_npz(tmp_path / f"d{offset}.npz", channels=3, test_offset=offset)
        run(TrainConfig(dataset=str(data), epochs=1, verbose=0, checkpoint=str(tmp_path / f"c{offset}.npz")),
            log=quiet)
        configs.append(normalize_layer(tmp_path / f"c{offset}.npz"))
    assert configs[0] == configs[1]

    dataset = gpucnn.data.datasets.load(str(tmp_path / "d0.npz"))
    splits = plan_splits(dataset.train_y, dataset.test_y, None, 0.1, None, data_generator(0))
    mean, std = channel_stats(dataset.train_x[splits.train])
    assert configs[0]["mean"] == mean  # exactly: computed once, kept through the JSON round trip
    assert configs[0]["std"][:2] == std[:2] and std[2] == 0 and configs[0]["std"][2] == 1.0  # constant channel
    _, all_std = channel_stats(dataset.train_x)
    assert all_std[0] != std[0]  # the validation images would have changed it


def test_no_normalize_trains_on_the_images_as_they_are(tmp_path):
    ckpt = tmp_path / "c.npz"
    run(TrainConfig(dataset="digits", epochs=1, normalize=False, verbose=0, checkpoint=str(ckpt)), log=quiet)
    assert [layer["type"] for layer in load_checkpoint(ckpt)["meta"]["architecture"]][:2] == ["Conv2D", "ReLU"]


def test_predict_on_raw_images_after_loading_equals_the_runs_predictions(tmp_path):
    """lenet-bn (BatchNorm, Dropout) behind a Normalize layer: the loaded model and its
    ONNX export take raw [0, 1] images and predict what the run predicted."""
    import onnxruntime

    ckpt = tmp_path / "c.npz"
    result = run(TrainConfig(dataset="digits", arch="lenet-bn", epochs=2, lr=0.01, verbose=0, checkpoint=str(ckpt)),
                 log=quiet)
    raw_test = load_digits().test_x  # float32 in [0, 1], as the loader gives them
    loaded = gpucnn.load(ckpt)
    np.testing.assert_array_equal(loaded.predict(raw_test), result["predictions"])
    assert result["test_acc"] > 0.5

    assert export_cli.main([str(ckpt), str(tmp_path / "m.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": raw_test})[0]
    np.testing.assert_array_equal(logits.argmax(axis=1), result["predictions"])


# -- optimizers, weight decay, label smoothing, schedules, augmentation ------------------------
@pytest.mark.parametrize("flags, optimizer_type, hyper", [
    (["--optimizer", "sgd", "--lr", "0.05"], "SGD", {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}),
    (["--optimizer", "momentum", "--lr", "0.05", "--momentum", "0.8"], "SGD", {"momentum": 0.8, "nesterov": False}),
    (["--optimizer", "nesterov", "--lr", "0.05", "--weight-decay", "5e-4"], "SGD",
     {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    (["--optimizer", "adam", "--weight-decay", "1e-4"], "Adam", {"weight_decay": 1e-4}),
    (["--optimizer", "adamw"], "AdamW", {"weight_decay": 0.01}),
    (["--optimizer", "adamw", "--weight-decay", "0"], "AdamW", {"weight_decay": 0.0}),
])
def test_each_optimizer_trains_with_the_hyperparameters_it_prints(flags, optimizer_type, hyper, tmp_path, capsys):
    ckpt = tmp_path / "c.npz"
    status, out, err = main(train_cli, ["--dataset", "digits", "--epochs", "2", "--verbose", "2",
                                        "--checkpoint", ckpt, *flags], capsys)
    assert status == 0, err
    config = json.loads(out.splitlines()[0].removeprefix("config: "))
    meta = load_checkpoint(ckpt)["meta"]
    assert meta["optimizer"]["type"] == optimizer_type
    for name, value in hyper.items():
        assert meta["optimizer"]["hyper"][name] == value, name
        if name in ("momentum", "weight_decay") and (name != "momentum" or hyper.get("momentum")):
            assert config[name] == value, name  # the printed config shows the value used
    losses = [h["train_loss"] for h in meta["history"]]
    assert losses[1] < losses[0]


def test_label_smoothing_is_in_the_training_loss_not_in_the_validation_loss():
    """With smoothing e the training loss cannot fall below the entropy of the smoothed
    target; the validation loss is plain cross-entropy and falls below it."""
    e, k = 0.3, 10
    floor = -(1 - e + e / k) * math.log(1 - e + e / k) - (k - 1) * (e / k) * math.log(e / k)  # 1.18
    smoothed = run(TrainConfig(dataset="digits", epochs=4, lr=0.01, label_smoothing=e, verbose=0), log=quiet)
    for h in smoothed["history"]:
        assert h["train_loss"] >= floor - 1e-4
    assert smoothed["history"][-1]["val_loss"] < floor - 0.3
    plain = run(TrainConfig(dataset="digits", epochs=4, lr=0.01, verbose=0), log=quiet)
    assert plain["history"][-1]["train_loss"] < floor - 0.3


BATCHES = math.ceil(1293 / 64)  # an epoch on digits: 1293 training images after the validation split


@pytest.mark.parametrize("schedule, warmup, last_lr", [
    ("constant", 1, 0.01),
    ("step", 0, 0.01 * 0.1 ** 2),  # x0.1 after each third of the 63 batches: the last one is in the third third
    ("cosine", 1, 0.01 * (1 + math.cos(math.pi * (2 * BATCHES - 1) / (2 * BATCHES))) / 2),  # 1 batch before 0
    ("onecycle", 0, 0.01 / 25 / 1e4),  # torch's final rate: max_lr / div_factor / final_div_factor
])
def test_schedules_step_every_batch_over_the_planned_epochs(schedule, warmup, last_lr, tmp_path):
    """The history's "lr" is the rate of each epoch's last batch."""
    ckpt = tmp_path / "c.npz"
    result = run(TrainConfig(dataset="digits", epochs=3, lr=0.01, schedule=schedule, warmup_epochs=warmup,
                             limit_test=50, verbose=0, checkpoint=str(ckpt)), log=quiet)
    batches = BATCHES
    saved = load_checkpoint(ckpt)["meta"]["schedule"]
    assert saved["epochs"] == 3 and saved["state"]["name"] == schedule
    assert saved["state"]["step_count"] == 3 * batches
    assert result["history"][-1]["lr"] == pytest.approx(last_lr, abs=1e-12)
    if warmup:  # the warm-up's last batch, one step below the peak
        assert result["history"][0]["lr"] == pytest.approx(0.01 * (batches - 1) / batches, abs=1e-12)


def test_a_fixed_length_schedule_cannot_be_resumed_past_its_epochs(tmp_path, capsys):
    ckpt = tmp_path / "c.npz"
    run(TrainConfig(dataset="digits", epochs=1, schedule="cosine", verbose=0, checkpoint=str(ckpt)), log=quiet)
    status, _, err = main(train_cli, ["--dataset", "digits", "--schedule", "cosine", "--epochs", "2",
                                      "--resume", ckpt], capsys)
    assert status == 2
    assert error_lines(err) == [f"train.py: error: argument --resume: --epochs 2: the cosine schedule of {ckpt} "
                                "was planned for 1 epoch and its length is fixed; resume with --epochs 1, "
                                "or start a new run to train longer"]
    status, _, err = main(train_cli, ["--dataset", "digits", "--schedule", "constant", "--epochs", "2",
                                      "--resume", ckpt], capsys)
    assert status == 2 and "--schedule constant (the checkpoint: --schedule cosine)" in err


def test_augmentation_changes_the_batches_reproducibly():
    base = dict(dataset="digits", epochs=2, lr=0.01, limit_test=50, verbose=0)
    shifted = [run(TrainConfig(augment="shift:2", **base), log=quiet)["history"] for _ in range(2)]
    plain = run(TrainConfig(**base), log=quiet)["history"]
    assert [h["train_loss"] for h in shifted[0]] == [h["train_loss"] for h in shifted[1]]
    assert shifted[0][0]["train_loss"] != plain[0]["train_loss"]


# -- modes -------------------------------------------------------------------------------------
def test_evaluate_runs_in_eval_mode_and_restores_the_previous_mode():
    rng = np.random.default_rng(0)
    model = build_model("lenet-bn", (1, 8, 8), 10, rng, dropout_rng=np.random.default_rng(1))
    x, y = rng.random((50, 1, 8, 8), dtype=np.float32), np.arange(50) % 10
    bn = next(layer for layer in model.layers if isinstance(layer, BatchNorm2D))
    before = {k: v.copy() for k, v in bn.state.items()}
    model.layers[3].training = False  # a layer's own mode comes back too
    first = evaluate(model, x, y, batch_size=16)
    second = evaluate(model, x, y, batch_size=16)
    assert first[0] == second[0] and (first[2] == second[2]).all()  # no Dropout, no batch statistics
    assert model.training and [layer.training for layer in model.layers].count(False) == 1
    for key, value in bn.state.items():
        np.testing.assert_array_equal(value, before[key])  # running statistics untouched
    np.testing.assert_array_equal(first[2], model.eval().forward(x).argmax(axis=1))


def test_fit_trains_in_training_mode_after_an_eval_mode_model():
    """A model left in eval mode is trained in training mode: BatchNorm's running
    statistics move and Dropout's masks are drawn."""
    rng = np.random.default_rng(0)
    model = build_model("lenet-bn", (1, 8, 8), 10, rng, dropout_rng=np.random.default_rng(1)).eval()
    bn = next(layer for layer in model.layers if isinstance(layer, BatchNorm2D))
    x, y = rng.random((64, 1, 8, 8), dtype=np.float32), np.arange(64) % 10
    gpucnn.training.run.fit(model, gpucnn.Adam(model, 1e-3), (x, y), (x, y), epochs=1, batch_size=32, rng=rng, verbose=0)
    assert not np.array_equal(bn.state["running_mean"], np.zeros_like(bn.state["running_mean"]))
    assert model.training and all(layer.training for layer in model.layers if isinstance(layer, Dropout))


# -- exact resume with everything at once -------------------------------------------------------
def test_two_epochs_equal_one_epoch_plus_resume_with_the_whole_toolkit(tmp_path, capsys, monkeypatch):
    """lenet-bn (BatchNorm running statistics, Dropout masks) + shift:2 augmentation +
    cosine schedule with a warm-up epoch + AdamW + label smoothing + normalisation, on
    digits: a 2-epoch run interrupted after epoch 1 and resumed ends bit for bit where
    the uninterrupted run ends."""
    flags = ["--dataset", "digits", "--arch", "lenet-bn", "--augment", "shift:2", "--schedule", "cosine",
             "--warmup-epochs", "1", "--optimizer", "adamw", "--label-smoothing", "0.1", "--lr", "0.003",
             "--epochs", "2", "--limit-test", "100", "--seed", "5", "--verbose", "0"]
    straight, resumed = tmp_path / "straight.npz", tmp_path / "resumed.npz"
    status, out, err = main(train_cli, [*flags, "--checkpoint", straight], capsys)
    assert status == 0, err

    real, calls = gpucnn.training.loops.train_epoch, []

    def interrupt_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(gpucnn.training.loops, "train_epoch", interrupt_second_epoch)
        status, _, err = main(train_cli, [*flags, "--checkpoint", resumed], capsys)
    assert status == 130 and f"epoch 1 is saved in {resumed}" in err
    half = load_checkpoint(resumed)["meta"]
    assert half["epoch"] == 1 and half["schedule"]["state"]["step_count"] == math.ceil(1293 / 64)
    status, out_resumed, err = main(train_cli, [*flags, "--resume", resumed, "--checkpoint", resumed], capsys)
    assert status == 0, err

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert set(a["params"]) == set(b["params"]) and any(k.endswith(".running_mean") for k in a["params"])
    for key, value in a["params"].items():
        np.testing.assert_array_equal(b["params"][key], value, err_msg=key)
    for key, buffers in a["optimizer_state"]["state"].items():
        for name, value in buffers.items():
            np.testing.assert_array_equal(b["optimizer_state"]["state"][key][name], value, err_msg=f"{key}/{name}")
    for name in ("rng_state", "schedule", "architecture", "optimizer", "input_shape", "num_classes", "class_names"):
        assert a["meta"][name] == b["meta"][name], name
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in a["meta"]["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")}
                     for h in b["meta"]["history"]]
    assert out.splitlines()[-1] == out_resumed.splitlines()[-1]  # the same test accuracy
    assert a["meta"]["class_names"] == [str(d) for d in range(10)]


def test_training_backward_stops_at_the_first_layer_with_parameters(monkeypatch):
    """A Normalize layer in front costs no backward work: without the input gradient the
    backward pass ends at the first Conv2D, which skips its own dL/dx; with it, dL/dx is
    the Conv2D's dL/dx divided by the std."""
    rng = np.random.default_rng(0)
    inner = build_model("simple", (1, 8, 8), 10, rng)
    model = gpucnn.Sequential([Normalize([0.5], [0.25]), *inner.layers])
    x, y = rng.random((4, 1, 8, 8), dtype=np.float32), np.arange(4)
    calls = []
    # the Conv2D runs with the pool after it as one unit (gpucnn.nn.execution_units): backward_blocks
    real_conv_backward = type(model[1]).backward_blocks

    def conv_backward(layer, dy, need_input_grad=True):
        calls.append(need_input_grad)
        return real_conv_backward(layer, dy, need_input_grad)
    monkeypatch.setattr(type(model[1]), "backward_blocks", conv_backward)
    monkeypatch.setattr(Normalize, "backward", lambda *a, **k: pytest.fail("Normalize.backward ran"))
    loss = gpucnn.SoftmaxCrossEntropy()
    loss(model(x), y)
    assert model.backward(loss.backward(), need_input_grad=False) is None
    assert calls == [False] and model[1].grads["weight"] is not None
    monkeypatch.undo()
    dx = model.backward(loss.backward(), need_input_grad=True)
    np.testing.assert_allclose(dx, inner.backward(loss.backward(), need_input_grad=True) / 0.25, rtol=1e-6)
