"""fit(..., callbacks=[...]): Keras's hooks in their order, batch hooks that cost no device
sync unless asked, model.stop_training, EarlyStopping (alone, in fit, across a resume and
over two MPI ranks), the older on_epoch_end / on_batches arguments, and the choice of
progress bar (terminal, notebook widget, notebook text bar)."""
from __future__ import annotations

import re
import sys
import types
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn import Callback, EarlyStopping
from gpucnn.training import loops
from gpucnn.training import report
from gpucnn.training.callbacks import CallbackList, better_epoch
from gpucnn.data.batches import batch_slices, load_digits
from gpucnn.distributed import SingleProcess
from gpucnn.training.run import fit, make_optimizer
from gpucnn.nn.zoo import build_model
from mpirun import run_mpi
from standin import standin_backend

N_TRAIN, BATCH = 200, 64
STEPS = len(batch_slices(N_TRAIN, BATCH))  # 4: three full batches and one of 8


def quiet(*args, **kwargs):
    pass


def digits(backend=None):
    """A small simple net on 200 digits, validating on 100: (model, optimizer, train, val)."""
    data = load_digits()
    backend = gpucnn.get_backend("cpu") if backend is None else backend
    model = build_model("simple", data.input_shape, 10, np.random.default_rng(0)).to(backend)
    train = (data.train_x[:N_TRAIN], data.train_y[:N_TRAIN])
    val = (data.train_x[N_TRAIN:N_TRAIN + 100], data.train_y[N_TRAIN:N_TRAIN + 100])
    return model, make_optimizer("adam", model, 1e-2), train, val


def train(callbacks, epochs=3, val=True, log=quiet, backend=None, **options):
    model, opt, train_set, val_set = digits(backend)
    history = fit(model, opt, train_set, val_set if val else None, epochs=epochs, batch_size=BATCH,
                  rng=np.random.default_rng(1), verbose=2, log=log, callbacks=callbacks, **options)
    return model, history


class Recorder(Callback):
    """Every hook call, in order, as (hook, epoch or batch, a copy of the logs)."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None): self.calls.append(("train_begin", None, dict(logs)))
    def on_train_end(self, logs=None): self.calls.append(("train_end", None, dict(logs)))
    def on_epoch_begin(self, epoch, logs=None): self.calls.append(("epoch_begin", epoch, dict(logs)))
    def on_epoch_end(self, epoch, logs=None): self.calls.append(("epoch_end", epoch, logs))
    def on_train_batch_begin(self, batch, logs=None): self.calls.append(("batch_begin", batch, dict(logs)))
    def on_train_batch_end(self, batch, logs=None): self.calls.append(("batch_end", batch, dict(logs)))

    def on_epoch_batches(self, epoch, losses, sizes):
        self.calls.append(("epoch_batches", epoch, (losses.copy(), sizes.copy())))


# -- the hooks ----------------------------------------------------------------------------------
def test_hooks_run_in_keras_order_with_the_epoch_numbers_the_log_prints():
    recorder = Recorder()
    model, history = train([recorder], epochs=2)
    hooks = [(hook, n) for hook, n, _ in recorder.calls]
    one_epoch = lambda e: [("epoch_begin", e), *[(h, b) for b in range(STEPS) for h in ("batch_begin", "batch_end")],
                           ("epoch_batches", e), ("epoch_end", e)]
    assert hooks == [("train_begin", None), *one_epoch(1), *one_epoch(2), ("train_end", None)]
    assert recorder.model is model and model.stop_training is False
    assert recorder.params == {"epochs": 2, "start_epoch": 0, "steps": STEPS, "verbose": 2,
                               "metrics": ["train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                                           "images_per_s"]}
    # on_epoch_end's logs are the history's records themselves; on_train_end gets the last
    ends = [logs for hook, _, logs in recorder.calls if hook == "epoch_end"]
    assert ends[0] is history[0] and ends[1] is history[1]
    assert recorder.calls[-1][2] == history[-1]
    # batch logs: this step's images, and no loss (nobody asked for it)
    sizes = [logs["size"] for hook, _, logs in recorder.calls if hook == "batch_end"]
    assert sizes == [64, 64, 64, 8] * 2
    assert all("loss" not in logs for hook, _, logs in recorder.calls if hook == "batch_end")
    losses, batch_sizes = recorder.calls[2 * STEPS + 2][2]  # epoch 1's on_epoch_batches
    assert losses.shape == (STEPS,) and batch_sizes.tolist() == [64, 64, 64, 8]
    assert np.sum(losses * batch_sizes) / N_TRAIN == pytest.approx(history[0]["train_loss"])


def test_an_entry_a_callback_adds_to_the_logs_is_kept_in_the_history():
    class Gap(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["gap"] = logs["train_acc"] - logs["val_acc"]

    _, history = train([Gap()], epochs=1)
    assert history[0]["gap"] == pytest.approx(history[0]["train_acc"] - history[0]["val_acc"])


class BatchLoss(Callback):
    batch_loss = True

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])

    def on_epoch_batches(self, epoch, losses, sizes):
        self.epoch_losses = losses.copy()


class EpochsOnly(Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.last = epoch


def test_batch_hooks_read_the_device_only_for_a_callback_that_asks_for_the_loss():
    """On the CuPy stand-in, which counts device->host copies: callbacks without batch hooks
    add none (the batch loop calls nothing); asking for each batch's loss adds one per step."""
    copies = {}
    for name, callbacks in (("none", []), ("epoch hooks", [EpochsOnly(), EarlyStopping(patience=5)]),
                            ("batch loss", [BatchLoss()])):
        backend = standin_backend()
        model, opt, train_set, val_set = digits(backend)
        backend.xp.reset_transfers()
        fit(model, opt, train_set, val_set, epochs=2, batch_size=BATCH, rng=np.random.default_rng(1),
            verbose=0, callbacks=callbacks)
        copies[name] = backend.xp.transfers["to_host"]
        if name == "batch loss":
            asked = callbacks[0]
    assert CallbackList([EpochsOnly(), EarlyStopping()], None, {}).batch_hooks is False
    assert copies["epoch hooks"] == copies["none"]
    assert copies["batch loss"] == copies["none"] + 2 * STEPS
    np.testing.assert_allclose(asked.losses[-STEPS:], asked.epoch_losses, rtol=1e-6)


def test_a_callback_that_sets_stop_training_ends_fit_after_that_epoch():
    class StopAtTwo(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model.stop_training = True

    recorder, lines = Recorder(), []
    _, history = train([StopAtTwo(), recorder], epochs=5, log=lines.append)
    assert [h["epoch"] for h in history] == [1, 2]
    assert recorder.calls[-1][0] == "train_end"  # the run ends as after its last epoch
    assert lines[-1] == "early stop after epoch 2: a callback set model.stop_training"
    assert lines[-2].startswith("epoch 2/5")  # the epoch's own line comes first


def test_callbacks_must_be_callback_objects():
    with pytest.raises(TypeError, match="subclass gpucnn.training.callbacks.Callback, got function"):
        train([lambda epoch, logs: None], epochs=1)


def test_the_older_single_function_arguments_still_run_after_the_callbacks():
    seen = []
    recorder = Recorder()

    def on_epoch_end(epoch, history):
        seen.append(("epoch_end", epoch, len(history), recorder.calls[-1][0]))

    def on_batches(epoch, losses, sizes):
        seen.append(("batches", epoch, len(losses), int(sizes.sum())))

    train([recorder], epochs=2, on_epoch_end=on_epoch_end, on_batches=on_batches)
    assert seen == [("batches", 1, STEPS, N_TRAIN), ("epoch_end", 1, 1, "epoch_end"),
                    ("batches", 2, STEPS, N_TRAIN), ("epoch_end", 2, 2, "epoch_end")]


# -- EarlyStopping --------------------------------------------------------------------------------
class Scripted(Callback):
    """Replaces each epoch's val_loss / val_acc with the next scripted value (runs first)."""

    def __init__(self, val_loss=(), val_acc=()):
        self.val_loss, self.val_acc = list(val_loss), list(val_acc)

    def on_epoch_end(self, epoch, logs=None):
        if self.val_loss:
            logs["val_loss"] = self.val_loss.pop(0)
        if self.val_acc:
            logs["val_acc"] = self.val_acc.pop(0)


def feed(stopper, values, model=None):
    """Epochs 1.. with ``values`` of the monitored metric; -> the epoch it stopped at (0: none)."""
    stopper.set_model(model or types.SimpleNamespace(stop_training=False))
    stopper.set_params({"start_epoch": 0})  # a new run
    stopper.on_train_begin()
    for epoch, value in enumerate(values, 1):
        stopper.on_epoch_end(epoch, {stopper.monitor: value})
        if stopper.model.stop_training:
            return epoch
    return 0


def test_early_stopping_counts_epochs_without_improvement_as_keras():
    assert feed(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.96, 0.5]) == 4
    assert feed(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.8, 0.85]) == 0  # the count restarts at 0.8
    assert feed(EarlyStopping(patience=0), [1.0, 1.0]) == 2  # equal is no improvement
    # min_delta: 1.0 -> 0.9 is better by more than 0.05, 0.9 -> 0.89 is not
    stopper = EarlyStopping(patience=1, min_delta=0.05)
    assert feed(stopper, [1.0, 0.9, 0.89]) == 3
    assert (stopper.best, stopper.best_epoch, stopper.wait, stopper.stopped_epoch) == (0.9, 2, 1, 3)
    assert stopper.reason == "no better validation loss for 1 epoch"


def test_early_stopping_infers_the_mode_from_the_name():
    assert EarlyStopping("val_acc").mode == "max" and EarlyStopping("train_acc").mode == "max"
    assert EarlyStopping("val_loss").mode == "min" and EarlyStopping("val_acc", mode="min").mode == "min"
    stopper = EarlyStopping("val_acc", patience=2)
    assert feed(stopper, [0.5, 0.7, 0.6, 0.7]) == 4 and stopper.best == 0.7 and stopper.best_epoch == 2
    assert stopper.reason == "no better validation accuracy for 2 epochs"


@pytest.mark.parametrize("kwargs, match", [
    (dict(patience=-1), "patience to be a non-negative integer"),
    (dict(patience=1.5), "patience to be a non-negative integer"),
    (dict(min_delta=-0.1), "min_delta >= 0"),
    (dict(mode="bigger"), "mode 'auto', 'min' or 'max', got 'bigger'"),
    (dict(monitor=""), "monitor to name an epoch metric"),
])
def test_early_stopping_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_early_stopping_in_fit_stops_logs_why_and_restores_the_best_weights():
    stopper, lines = EarlyStopping(patience=2, restore_best_weights=True), []
    snapshots = {}

    class Weights(Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = self.model.state_dict()

    model, history = train([Scripted(val_loss=[0.5, 0.4, 0.45, 0.47, 0.3]), stopper, Weights()], epochs=5,
                           log=lines.append)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert lines[-1] == "early stop after epoch 4: no better validation loss for 2 epochs"
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.4, 2, 4)
    for key, value in model.state_dict().items():  # epoch 2's weights, not epoch 4's
        np.testing.assert_array_equal(value, snapshots[2][key], err_msg=key)
    assert any((snapshots[4][key] != value).any() for key, value in snapshots[2].items())


def test_early_stopping_on_a_metric_fit_does_not_record_fails_before_training():
    recorder = Recorder()
    with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='val_loss'\) expected a metric fit records, "
                                         r"one of train_loss, train_acc, seconds, images_per_s; got 'val_loss'; "
                                         r"pass val=\(x, y\) to fit"):
        train([EarlyStopping(), recorder], val=False)
    assert recorder.calls == []


def test_early_stopping_state_carries_across_a_resume_and_replays_from_a_history():
    first = EarlyStopping(patience=3)
    assert feed(first, [0.5, 0.4, 0.6]) == 0
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate([0.5, 0.4, 0.6], 1)]
    loaded, replayed = EarlyStopping(patience=3), EarlyStopping(patience=3)
    loaded.load_state_dict(first.state_dict())
    replayed.replay(history)
    assert loaded.state_dict() == replayed.state_dict() == {"monitor": "val_loss", "best": 0.4, "best_epoch": 2,
                                                           "wait": 1}
    with pytest.raises(ValueError, match="a state of the same monitor, got 'val_loss'"):
        EarlyStopping("val_acc").load_state_dict(first.state_dict())
    # fit continuing a run (start_epoch > 0) keeps the count: two more epochs without improvement stop it
    lines = []
    model, opt, train_set, val_set = digits()
    history = fit(model, opt, train_set, val_set, epochs=6, batch_size=BATCH, start_epoch=3, history=history,
                  rng=np.random.default_rng(1), verbose=2, log=lines.append,
                  callbacks=[Scripted(val_loss=[0.7, 0.8, 0.1]), loaded])
    assert history[-1]["epoch"] == 5 and lines[-1] == "early stop after epoch 5: no better validation loss for 3 epochs"
    # ... while a fit from epoch 0 starts a new count, as Keras
    assert feed(loaded, [0.9, 0.95]) == 0 and loaded.best == 0.9


def test_better_epoch_is_higher_accuracy_then_lower_loss():
    best = {"val_acc": 0.9, "val_loss": 0.3}
    assert better_epoch(best, None)
    assert better_epoch({"val_acc": 0.91, "val_loss": 0.5}, best)
    assert better_epoch({"val_acc": 0.9, "val_loss": 0.2}, best)
    assert not better_epoch({"val_acc": 0.9, "val_loss": 0.3}, best)  # a tie keeps the earlier epoch
    assert not better_epoch({"val_acc": 0.89, "val_loss": 0.1}, best)


# -- several ranks: every rank makes the same decision -----------------------------------------------
class OtherRank(SingleProcess):
    """Rank 0 of 2 whose partner contributes ``theirs`` to every host sum."""

    size = 2

    def __init__(self, theirs):
        self.theirs = theirs

    def allreduce_host(self, values, op="sum"):
        return np.asarray(values, dtype=np.float64) + self.theirs


def test_every_rank_stops_when_any_rank_asks():
    model = types.SimpleNamespace(stop_training=False)
    assert loops._stop_training(model, OtherRank(theirs=1)) is True  # the other rank's callback asked
    assert loops._stop_training(model, OtherRank(theirs=0)) is False
    model.stop_training = True
    assert loops._stop_training(model, OtherRank(theirs=0)) is True


RANKS_PROGRAM = '''
import sys
import numpy as np
from gpucnn import Callback, EarlyStopping
from gpucnn.backends.backend import get_backend
from gpucnn.data.batches import load_digits
from gpucnn.distributed import get_communicator, parameters_of, state_of
from gpucnn.optim import Adam
from gpucnn.training.run import fit
from gpucnn.nn.zoo import build_model

backend = get_backend("cpu")
comm = get_communicator(backend)
data = load_digits()

class RankOneStops(Callback):  # decides from something only rank 1 has
    def on_epoch_end(self, epoch, logs=None):
        if comm.rank == 1 and epoch == 2:
            self.model.stop_training = True

for callbacks in ([EarlyStopping(patience=1)], [RankOneStops()]):
    model = build_model("simple", data.input_shape, 10, np.random.default_rng(0)).to(backend)
    comm.bcast_(parameters_of(model) + state_of(model))
    history = fit(model, Adam(model, 0.05), (data.train_x[:256], data.train_y[:256]),
                  (data.train_x[256:356], data.train_y[256:356]), epochs=8, batch_size=32,
                  rng=np.random.default_rng(1), verbose=0, comm=comm, callbacks=callbacks)
    sys.stdout.write(f"rank {comm.rank}: {type(callbacks[0]).__name__} stopped after {len(history)}\\n")
    sys.stdout.flush()
'''


def test_two_ranks_stop_after_the_same_epoch(tmp_path):
    program = tmp_path / "ranks_stop.py"
    program.write_text(RANKS_PROGRAM)
    rc, out, err, _ = run_mpi(2, program, timeout=120)
    assert rc == 0, f"{out}\n{err[-3000:]}"
    found = re.findall(r"rank (\d): (\w+) stopped after (\d+)", out)  # ranks' lines may interleave
    for name in ("EarlyStopping", "RankOneStops"):
        stops = {rank: epochs for rank, callback, epochs in found if callback == name}
        assert set(stops) == {"0", "1"} and len(set(stops.values())) == 1, out
    assert ("0", "RankOneStops", "2") in found  # rank 1 asked; rank 0 stopped with it


# -- the progress bar: terminal, notebook widget, notebook text bar --------------------------------
def fake_kernel(monkeypatch, kernel):
    """sys.modules as inside a Jupyter kernel (``kernel`` not None) or a terminal IPython (None)."""
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def test_a_notebook_is_an_ipython_shell_with_a_kernel(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert report.in_notebook() is False
    fake_kernel(monkeypatch, kernel=None)  # IPython in a terminal
    assert report.in_notebook() is False
    fake_kernel(monkeypatch, kernel=object())
    assert report.in_notebook() is True
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace())  # no get_ipython: not a kernel
    assert report.in_notebook() is False


@pytest.mark.parametrize("notebook, widgets, terminal, kind", [
    (True, True, False, "widget"),
    (True, False, False, "text"),
    (True, False, True, "text"),
    (False, True, True, "terminal"),
    (False, True, False, None),
])
def test_the_bar_is_a_widget_in_a_notebook_with_ipywidgets_else_text(monkeypatch, notebook, widgets, terminal,
                                                                      kind):
    monkeypatch.setattr(report, "in_notebook", lambda: notebook)
    monkeypatch.setattr(report, "_widgets_usable", lambda: widgets)
    monkeypatch.setattr(report, "stderr_is_terminal", lambda: terminal)
    assert report.progress_bar_kind() == kind
    assert report.progress_bar_shown() is (kind is not None)


def test_the_widget_bar_is_tqdms_notebook_bar(monkeypatch):
    made = []

    class NotebookBar:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "tqdm.notebook", types.SimpleNamespace(tqdm=NotebookBar))
    progress = report.Progress(5, "epoch 1/3", gpucnn.get_backend("cpu"), kind="widget")
    assert isinstance(progress.bar, NotebookBar) and made[0]["total"] == 5 and made[0]["desc"] == "epoch 1/3"
    progress.close()


def test_a_notebook_without_ipywidgets_gets_the_text_bar_and_no_warning(monkeypatch, capsys):
    from tqdm.std import tqdm as text_bar

    monkeypatch.setattr(report, "in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not importable
    assert report._widgets_usable() is False
    made = []
    real = loops.Progress

    def recording_progress(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(loops, "Progress", recording_progress)
    monkeypatch.setattr(report.Progress, "DELAY", 0)  # draw at once
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm's "IProgress not found" would fail the test
        model, opt, train_set, val_set = digits()
        fit(model, opt, train_set, val_set, epochs=1, batch_size=BATCH, rng=np.random.default_rng(1), verbose=1,
            log=quiet)
    assert len(made) == 1 and made[0].kind == "text" and type(made[0].bar) is text_bar
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "IProgress" not in err
