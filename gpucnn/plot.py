"""One PNG per run: loss and accuracy curves, the test confusion matrix, and the
learned first-layer kernels. matplotlib is an optional extra (pip install 'gpucnn[plot]')."""
from __future__ import annotations

import numpy as np

from .backend import to_host


def plot_run(result: dict, path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'gpucnn[plot]'") from exc

    history = result["history"]
    epochs = [h["epoch"] for h in history]
    kernels = to_host(result["model"].layers[0].params["weight"])  # (C_out, C_in, kh, kw)
    fig = plt.figure(figsize=(14, 8))
    grid = fig.add_gridspec(2, 3)

    ax = fig.add_subplot(grid[0, 0])
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax.set(title="loss", xlabel="epoch")
    ax.legend()
    ax = fig.add_subplot(grid[1, 0])
    ax.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    ax.set(title=f"accuracy (test {result['test_acc']:.2%})", xlabel="epoch")
    ax.legend()

    for axis in fig.axes:
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))

    ax = fig.add_subplot(grid[:, 1])
    matrix = np.asarray(result["confusion_matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > matrix.max() / 2 else "black")
    ax.set(title="test confusion matrix", xlabel="predicted", ylabel="true",
           xticks=range(len(matrix)), yticks=range(len(matrix)))

    sub = grid[:, 2].subgridspec(*_tile_shape(len(kernels)))
    for k, kernel in enumerate(kernels):
        kax = fig.add_subplot(sub[k])
        kax.imshow(kernel[0], cmap="gray")
        kax.axis("off")
    fig.text(0.83, 0.95, "first-layer kernels", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _tile_shape(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / cols)), cols
