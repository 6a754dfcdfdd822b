"""One figure per run: loss and accuracy curves, the test confusion matrix and the learned
first-layer kernels, under a title naming the run. matplotlib is an optional extra
(pip install 'gpucnn[plot]'); any format it writes works (.png, .pdf, .svg, ...)."""
from __future__ import annotations

import io
import os

import numpy as np

from ..backends.backend import to_host
from .report import run_class_names


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure  # no pyplot: no window, no global figure state
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'gpucnn[plot]'") from exc
    return matplotlib, Figure


def check_plot_path(path) -> None:
    """Raise ValueError unless matplotlib can write a figure in the format named by the
    extension of ``path`` here (asks the canvas for its file types, then renders a tiny
    figure with text in memory: .pgf, for one, also needs LaTeX)."""
    _, Figure = _matplotlib()
    figure = Figure(figsize=(1, 1))
    formats = sorted(figure.canvas.get_supported_filetypes())
    listed = ", ".join(f".{f}" for f in formats)
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if not extension:
        raise ValueError(f"{path} has no extension to choose the format; end it in .png or one of {listed}")
    if extension not in formats:
        raise ValueError(f"matplotlib cannot write .{extension} files; use one of {listed}")
    figure.text(0.5, 0.5, "1%")
    try:
        figure.savefig(io.BytesIO(), format=extension)
    except Exception as exc:  # a missing LaTeX or image plugin: whatever it is, say it now
        raise ValueError(f"matplotlib cannot write .{extension} files here ({exc}); use .png") from None


def kernel_mosaic(kernels: np.ndarray) -> np.ndarray:
    """(K, kh, kw) kernels -> one (rows*(kh+1)-1, cols*(kw+1)-1) image, row-major, a
    one-pixel NaN line between neighbours and NaN in unused tiles."""
    count, kh, kw = kernels.shape
    rows, cols = _tile_shape(count)
    tiles = np.full((rows * cols, kh + 1, kw + 1), np.nan, dtype=np.float32)
    tiles[:count, :kh, :kw] = kernels
    mosaic = tiles.reshape(rows, cols, kh + 1, kw + 1).transpose(0, 2, 1, 3)  # (rows, kh+1, cols, kw+1)
    return mosaic.reshape(rows * (kh + 1), cols * (kw + 1))[:-1, :-1]  # (rows*(kh+1)-1, cols*(kw+1)-1)


def _tile_shape(count: int) -> tuple[int, int]:
    """(rows, cols) for ``count`` tiles: an exact rectangle (32 -> 4 x 8) when one is no
    more than twice as wide as tall, else the nearest square with spare tiles."""
    side = int(np.ceil(np.sqrt(count)))
    for cols in range(side, 2 * side + 1):
        if count % cols == 0 and cols <= 2 * (count // cols):
            return count // cols, cols
    return int(np.ceil(count / side)), side


def run_title(result: dict) -> str:
    config = result.get("config") or {}
    epochs = len(result["history"]) if result.get("history") else config.get("epochs", "?")
    return (f"{config.get('arch', 'model')} on {config.get('dataset', 'data')}, "
            f"{epochs} epoch{'s' * (epochs != 1)}: test accuracy {result['test_acc']:.2%}")


def plot_run(result: dict, path) -> None:
    """Write the figure of a :func:`gpucnn.training.run.run` result to ``path`` (its extension
    names the format), creating its folder if needed."""
    figure = run_figure(result)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)


def run_figure(result: dict):
    """The matplotlib Figure of a :func:`gpucnn.training.run.run` result: loss and accuracy (%)
    per epoch, the test confusion matrix, the test accuracy per class (from 0%) and the
    first-layer kernels as one image, under a title naming architecture, dataset, epochs
    and accuracy. The matrix and the bars are labelled with the class names when the run
    has them (:func:`gpucnn.training.report.run_class_names`), else the class numbers; every
    legend sits outside its axes, so it hides no curve and no bar."""
    matplotlib, Figure = _matplotlib()
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    history = result["history"]
    epochs = [h["epoch"] for h in history]
    has_val = bool(history) and "val_loss" in history[0]
    fig = Figure(figsize=(17, 7.5), layout="constrained")
    fig.suptitle(run_title(result), fontsize=15)
    grid = fig.add_gridspec(2, 3, width_ratios=[1.25, 1.15, 1.35])

    loss_ax = fig.add_subplot(grid[0, 0])
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if has_val:
        loss_ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss_ax.set(title="loss", ylabel="cross-entropy loss")
    acc_ax = fig.add_subplot(grid[1, 0], sharex=loss_ax)
    acc_ax.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    if has_val:
        acc_ax.plot(epochs, [100 * h["val_acc"] for h in history], "o-", label="validation")
    acc_ax.axhline(100 * result["test_acc"], color="black", linestyle="--", linewidth=1,
                   label=f"test {result['test_acc']:.2%}")
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    acc_ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    acc_ax.yaxis.set_major_formatter(PercentFormatter(decimals=0 if _span(acc_ax) > 5 else 1))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _legend_outside(ax)

    matrix = np.asarray(result["confusion_matrix"])
    classes = len(matrix)
    names = run_class_names(result)
    if names is None or len(names) != classes:  # no names (or not these classes): the numbers
        names = [str(k) for k in range(classes)]
    ax = fig.add_subplot(grid[:, 1])
    image = ax.imshow(matrix, cmap="Blues")
    digits = len(str(matrix.max()))
    fontsize = max(7, min(13, 130 // max(classes, 1), 45 // max(digits, 3)))  # fits a cell
    for (i, j), v in np.ndenumerate(matrix):  # one label per cell (classes**2 of them)
        ax.text(j, i, str(v), ha="center", va="center", fontsize=fontsize,
                color="white" if v > matrix.max() / 2 else "black")
    ax.set(title=f"test confusion matrix ({matrix.sum()} images)", xlabel="predicted class",
           ylabel="true class", xticks=range(classes), yticks=range(classes))
    _class_ticks(ax.xaxis, names)
    _class_ticks(ax.yaxis, names)
    fig.colorbar(image, ax=ax, shrink=0.6, label="images")

    ax = fig.add_subplot(grid[1, 2])
    per_class = 100 * np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)  # (classes,) recall in %
    ax.bar(range(classes), per_class, color="tab:blue")
    ax.axhline(100 * result["test_acc"], color="black", linestyle="--", linewidth=1,
               label=f"all classes {result['test_acc']:.2%}")
    ax.set(title="test accuracy per class", xlabel="true class", ylabel="accuracy (%)",
           xticks=range(classes), ylim=(0, 100))  # from 0: bar heights compare as ratios
    _class_ticks(ax.xaxis, names)
    ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax)

    convs = [layer for layer in result["model"].layers if getattr(layer.params.get("weight"), "ndim", 0) == 4]
    if not convs:  # e.g. a JSON architecture of Dense layers: no kernels to show
        return fig
    kernels = to_host(convs[0].params["weight"])  # (C_out, C_in, kh, kw); a Normalize layer may come first
    ax = fig.add_subplot(grid[0, 2])
    limit = float(np.abs(kernels[:, 0]).max()) or 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    image = ax.imshow(kernel_mosaic(kernels[:, 0]), cmap=cmap, vmin=-limit, vmax=limit,
                      interpolation="nearest")
    channel = " (input channel 0)" if kernels.shape[1] > 1 else ""
    ax.set_title(f"first-layer kernels{channel}: {kernels.shape[0]} of "
                 f"{kernels.shape[2]}x{kernels.shape[3]}")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, orientation="horizontal", shrink=0.8, aspect=40, label="weight")
    return fig


def _legend_outside(ax) -> None:
    """The legend of ``ax`` right of its plotting area, top-aligned: it covers no data
    (the constrained layout makes room for it)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize="small")


def _class_ticks(axis, names: list) -> None:
    """Label the ticks 0..K-1 of ``axis`` with the K class ``names``; the x axis turns
    them 45 degrees (anchored at the tick) when any is longer than 2 characters."""
    axis.set_ticks(range(len(names)), labels=names)
    if axis.axis_name == "x" and max(len(n) for n in names) > 2:
        for label in axis.get_ticklabels():
            label.set(rotation=45, ha="right", rotation_mode="anchor")


def _span(ax) -> float:
    low, high = ax.get_ylim()
    return high - low
