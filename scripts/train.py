#!/usr/bin/env python
"""Train a CNN on MNIST (or scikit-learn's 8x8 digits): a thin CLI over gpucnn.train.

    python scripts/train.py                      # simple conv-pool-softmax net, 3 epochs
    python scripts/train.py --device gpu --arch lenet --epochs 5
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too

from gpucnn.train import ARCHS, DATASETS, DEVICES, OPTIMIZERS, TrainConfig  # noqa: E402

DEFAULTS = TrainConfig()


def number(convert, accept, expected):
    """An argparse type: ``convert`` the text, keep it if ``accept(value)``, else say
    what was ``expected`` and what was given."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a positive number")
open_fraction = number(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=DEVICES, default=DEFAULTS.device,
                   help="auto: the GPU when usable; gpu without one falls back to the CPU with a warning")
    p.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset,
                   help="digits: scikit-learn's bundled 8x8 digits, no files needed")
    p.add_argument("--data-dir", default=None,
                   help=f"folder of the MNIST IDX files (default: {REPO / 'data' / 'mnist'})")
    p.add_argument("--arch", choices=ARCHS, default=DEFAULTS.arch,
                   help="simple: conv-pool-softmax; lenet: deeper, more accurate")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="total epochs (also when resuming)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer)
    p.add_argument("--momentum", type=number(float, lambda v: 0 <= v < 1, "a number in [0, 1)"), default=None,
                   help=f"for --optimizer momentum (default: {DEFAULTS.momentum})")
    p.add_argument("--seed", type=non_negative_int, default=DEFAULTS.seed)
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N",
                   help="train (and validate) on a stratified subset of N training images")
    p.add_argument("--limit-test", type=positive_int, default=None, metavar="N",
                   help="test on a stratified subset of N test images")
    p.add_argument("--val-fraction", type=open_fraction, default=DEFAULTS.val_fraction,
                   help="fraction of the training set held out for validation")
    p.add_argument("--checkpoint", metavar="PATH", help="save after every epoch (atomically)")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint")
    p.add_argument("--metrics-json", metavar="PATH", help="write history and test metrics as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: curves, confusion matrix, first-layer kernels")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=DEFAULTS.verbose,
                   help="0: only the final test accuracy, 1: progress bars, 2: one line per epoch")
    args = p.parse_args(argv)
    # nothing the user gives is silently ignored
    if args.momentum is not None and args.optimizer != "momentum":
        p.error(f"argument --momentum: only used with --optimizer momentum, got --optimizer {args.optimizer}")
    if args.data_dir is not None and args.dataset != "mnist":
        p.error(f"argument --data-dir: only used with --dataset mnist, got --dataset {args.dataset}")
    args.momentum = DEFAULTS.momentum if args.momentum is None else args.momentum
    args.data_dir = str(REPO / "data" / "mnist") if args.data_dir is None else args.data_dir
    if args.resume and not Path(args.resume).is_file():
        p.error(f"argument --resume: no checkpoint file at {args.resume}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("argument --plot needs matplotlib: pip install 'gpucnn[plot]' (or leave out --plot)")
    return p, args


def one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def main(argv=None):
    warnings.formatwarning = one_line_warning  # e.g. the GPU fallback: one line, no source excerpt
    parser, args = parse_args(argv)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("metrics_json", "plot")})
    from gpucnn.data import DataError
    from gpucnn.train import NonFiniteLossError, run, write_metrics_json
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    say = print if config.verbose else (lambda *a, **k: None)
    try:
        result = run(config, log=say)
    except (DataError, NonFiniteLossError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.metrics_json:
        write_metrics_json(args.metrics_json, result)
        say(f"metrics written to {args.metrics_json}")
    if args.plot:
        from gpucnn.plot import plot_run
        plot_run(result, args.plot)
        say(f"plot written to {args.plot}")
    print(f"test accuracy: {result['test_acc']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
