"""The benchmark's sweep: how training throughput grows with the batch size and the image
size, for gpucnn and PyTorch, as a table and (``--plot``) a figure."""
from __future__ import annotations

SWEEP_BATCHES = (16, 32, 64, 128, 256, 512)  # at 28x28
SWEEP_IMAGE_SIDES = (28, 32, 64)  # at batch 64
QUICK_BATCHES, QUICK_IMAGE_SIDES = (16, 32), (28, 32)


def scaling_points(archs, quick=False):
    """(arch, batch, input_shape) for every point of the sweep, each once."""
    batches, sides = (QUICK_BATCHES, QUICK_IMAGE_SIDES) if quick else (SWEEP_BATCHES, SWEEP_IMAGE_SIDES)
    points = []
    for arch in archs:
        points += [(arch, b, (1, 28, 28)) for b in batches]
        points += [(arch, batches[-1] if quick else 64, (1, s, s)) for s in sides]
    return list(dict.fromkeys(points))


def scaling_table(points) -> str:
    """Markdown: training and evaluation images/s per point, gpucnn and PyTorch."""
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    lines = ["| network | input | batch | gpucnn train img/s | torch train img/s | train ratio | "
             "gpucnn eval img/s | torch eval img/s |", "|" + "---|" * 8]
    for r in sorted(points, key=lambda r: (r["arch"], r["input"], r["batch"])):
        lines.append(f"| {r['arch']} | {'x'.join(map(str, r['input']))} | {r['batch']} | {r['train_img_s']:.0f} | "
                     f"{f(r.get('torch_train_img_s'), '.0f')} | {f(r.get('train_ratio'), '.2f')} | "
                     f"{r['eval_img_s']:.0f} | {f(r.get('torch_eval_img_s'), '.0f')} |")
    return "\n".join(lines)


def plot_scaling(points, path, title=""):
    """Two panels, training images/s against batch size (28x28 images) and against image
    side (one batch size); gpucnn solid, PyTorch dashed, one colour per network."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["arch"] for r in points))
    side_batch = max((r["batch"] for r in points if r["input"][1] != 28), default=64)
    fig, (by_batch, by_side) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for colour, arch in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), archs):
        mine = [r for r in points if r["arch"] == arch]
        batch_rows = sorted((r for r in mine if r["input"][1] == 28), key=lambda r: r["batch"])
        side_rows = sorted((r for r in mine if r["batch"] == side_batch), key=lambda r: r["input"][1])
        for key, style, who in (("train_img_s", "-o", "gpucnn"), ("torch_train_img_s", "--s", "PyTorch")):
            if all(key in r for r in mine):
                by_batch.plot([r["batch"] for r in batch_rows], [r[key] for r in batch_rows], style,
                              color=colour, label=f"{arch}, {who}", markersize=4)
                by_side.plot([r["input"][1] for r in side_rows], [r[key] for r in side_rows], style,
                             color=colour, label=f"{arch}, {who}", markersize=4)
    by_batch.set(xscale="log", yscale="log", xlabel="batch size (28x28 images)",
                 ylabel="training images/s")
    batches = sorted({r["batch"] for r in points if r["input"][1] == 28})
    by_batch.set_xticks(batches, labels=[str(b) for b in batches])
    by_side.set(yscale="log", xlabel=f"image side, pixels (batch {side_batch})", ylabel="training images/s")
    by_side.legend(fontsize=7)
    from matplotlib.ticker import LogLocator, NullFormatter, NullLocator, ScalarFormatter
    for ax in (by_batch, by_side):
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_locator(NullLocator())
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)
