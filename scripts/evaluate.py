#!/usr/bin/env python
"""Evaluate a trained model (a --checkpoint file or a Sequential.save file) on the
held-out test set: loss, accuracy and the confusion matrix.

    python scripts/evaluate.py runs/simple.npz
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpucnn.train import DATASETS, DEVICES  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="checkpoint (.npz from --checkpoint) or model file (Sequential.save)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", default=str(REPO / "data" / "mnist"))
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=1000)
    args = p.parse_args(argv)
    if not Path(args.model).is_file():
        p.error(f"argument model: no file at {args.model}")
    if args.batch_size < 1:
        p.error(f"argument --batch-size: expected a positive integer, got {args.batch_size}")

    from gpucnn.backend import get_backend
    from gpucnn.data import DataError, check_labels, load_digits, load_mnist
    from gpucnn.train import format_confusion, load_trained_model, held_out_report

    backend = get_backend(args.device)
    try:
        model = load_trained_model(args.model, backend)
        data = load_digits() if args.dataset == "digits" else load_mnist(args.data_dir)
        check_labels(data.test_y, data.num_classes, "test")
        model.summary((1, *data.input_shape))  # refuses a model built for other images
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    loss, acc, _, matrix = held_out_report(model, data.test_x, data.test_y, data.num_classes, args.batch_size)
    print(f"device: {backend.name}")
    print(f"test: loss {loss:.4f}  accuracy {acc:.2%} on {len(data.test_y)} images")
    print(format_confusion(matrix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
