"""What a run reports about its classes and its time: the --plot figure names the classes
on the confusion matrix and on the per-class bars, starts the per-class axis at 0% and
keeps every legend off the data; the metrics JSON carries the class names; a fast epoch's
time keeps its digits."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from scripts_in_process import load_script, main  # noqa: E402

from gpucnn.training.plot import run_figure  # noqa: E402
from gpucnn.training.report import format_epoch, format_seconds, run_class_names, write_metrics_json  # noqa: E402
from gpucnn.nn.zoo import build_model  # noqa: E402

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def run_result(names=NAMES, classes=10, accuracies=None, epochs=6):
    """A :func:`gpucnn.training.run.run` result built by hand: a simple model (its data_info holding
    ``names``), a falling loss, rising accuracies and a confusion matrix whose per-class
    accuracies are ``accuracies`` (default: 90-100%, where an autoscaled axis would not start at 0)."""
    accuracies = np.linspace(0.9, 1.0, classes) if accuracies is None else np.asarray(accuracies)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for k, acc in enumerate(accuracies):
        matrix[k, k] = round(100 * acc)
        matrix[k, (k + 1) % classes] = 100 - matrix[k, k]
    model = build_model("simple", (3, 16, 16), classes, np.random.default_rng(0))
    if names is not None:
        model.data_info = {"class_names": list(names)}
    history = [{"epoch": e, "train_loss": 2 * 0.7 ** e, "val_loss": 2.1 * 0.72 ** e, "train_acc": 1 - 0.6 * 0.7 ** e,
                "val_acc": 1 - 0.62 * 0.72 ** e} for e in range(1, epochs + 1)]
    return {"device": "cpu", "config": {"arch": "simple", "dataset": "cifar10", "epochs": epochs},
            "history": history, "test_loss": 0.3, "test_acc": float(np.trace(matrix) / matrix.sum()),
            "confusion_matrix": matrix.tolist(), "model": model}


def drawn(result):
    """(panels by title, renderer) of the figure, laid out and drawn with Agg."""
    figure = run_figure(result)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return {ax.get_title(): ax for ax in figure.axes if ax.get_title()}, canvas.get_renderer()


def labels(axis) -> list:
    return [t.get_text() for t in axis.get_ticklabels()]


@pytest.mark.parametrize("names, expected", [(NAMES, NAMES), (None, [str(k) for k in range(10)]),
                                             ([str(k) for k in range(10)], [str(k) for k in range(10)])],
                         ids=["class-names", "none", "digits"])
def test_the_matrix_and_the_bars_are_labelled_with_the_class_names(names, expected):
    panels, _ = drawn(run_result(names))
    matrix = panels["test confusion matrix (1000 images)"]
    assert labels(matrix.xaxis) == expected and labels(matrix.yaxis) == expected
    bars = panels["test accuracy per class"]
    assert labels(bars.xaxis) == expected
    assert list(bars.get_xticks()) == list(range(10))  # one name under each bar


def test_long_names_are_turned_on_the_x_axes_and_digits_are_not():
    for names, angle in ((NAMES, 45), ([str(k) for k in range(10)], 0)):
        panels, _ = drawn(run_result(names))
        for title in ("test accuracy per class", "test confusion matrix (1000 images)"):
            assert {t.get_rotation() for t in panels[title].xaxis.get_ticklabels()} == {angle}
        assert {t.get_rotation() for t in panels["test confusion matrix (1000 images)"].yaxis.get_ticklabels()} == {0}


@pytest.mark.parametrize("accuracies", [np.linspace(0.9, 1.0, 10), np.linspace(0.0, 1.0, 10), np.full(10, 1.0)],
                         ids=["high", "spread", "perfect"])
def test_the_per_class_axis_starts_at_0_and_its_legend_hides_no_bar(accuracies):
    panels, renderer = drawn(run_result(accuracies=accuracies))
    ax = panels["test accuracy per class"]
    assert ax.get_ylim() == (0, 100)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    assert len(bars) == 10 and max(b.height for b in bars) > 0
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(legend.overlaps(bar) for bar in bars)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # off the plotting area altogether


@pytest.mark.parametrize("epochs", [1, 2, 30])
def test_the_curves_legends_cover_no_point_of_any_curve(epochs):
    panels, renderer = drawn(run_result(epochs=epochs))
    for title in ("loss", "accuracy"):
        ax = panels[title]
        legend = ax.get_legend().get_window_extent(renderer)
        assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["train", "validation"]
        for line in ax.get_lines():
            points = line.get_transform().transform(line.get_xydata())  # (n, 2) display coordinates
            assert not legend.count_contains(points), f"the {title} legend covers {line.get_label()}"
        assert not legend.overlaps(ax.get_window_extent(renderer))


def test_the_metrics_json_carries_the_class_names(tmp_path):
    path = tmp_path / "m.json"
    write_metrics_json(path, run_result())
    assert json.loads(path.read_text())["class_names"] == NAMES
    write_metrics_json(path, run_result(names=None))
    assert json.loads(path.read_text())["class_names"] is None
    assert run_class_names({"class_names": ("a", "b"), "model": None}) == ["a", "b"]  # an explicit entry wins


def test_the_metrics_json_of_a_digits_run_names_0_to_9(tmp_path, capsys):
    train_cli = load_script("train", "plot_names")
    path = tmp_path / "m.json"
    status, _, err = main(train_cli, ["--dataset", "digits", "--limit-train", "200", "--limit-test", "50",
                                      "--epochs", "1", "--verbose", "0", "--metrics-json", path], capsys)
    assert status == 0, err
    metrics = json.loads(path.read_text())
    assert metrics["class_names"] == [str(d) for d in range(10)] and len(metrics["confusion_matrix"]) == 10


@pytest.mark.parametrize("seconds, text", [(0.04321, "0.0432"), (0.04, "0.04"), (0.5, "0.5"), (0.999, "0.999"),
                                           (0.00123, "0.00123"), (1.0, "1.0"), (12.345, "12.3"), (250.0, "250.0")])
def test_epoch_times_keep_three_significant_digits_below_a_second(seconds, text):
    assert format_seconds(seconds) == text
    record = {"epoch": 1, "train_loss": 0.5, "train_acc": 0.9, "seconds": seconds, "images_per_s": 1000.0}
    assert f"  {text} s  1000 img/s" in format_epoch(record, 3)
