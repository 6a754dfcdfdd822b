#!/usr/bin/env python
"""Classify image files with a trained model: the top classes of each image, with their
probabilities (and class names where the model knows them).

    python scripts/predict.py runs/shapes.npz photo.png               # a checkpoint
    python scripts/predict.py model.npz photos/ --top-k 3 --json      # a model file, a folder
    python scripts/predict.py runs/shapes.onnx photo.png              # an export, via ONNX Runtime
    python scripts/predict.py runs/mnist.npz seven.jpg --invert       # black-on-white for MNIST

MODEL is a training checkpoint (train.py --checkpoint), a model file (Sequential.save)
or an .onnx file (scripts/export.py; needs onnxruntime). Each image is prepared as the
training images were: the model's channels (grayscale or RGB), resized to its image size,
pixels / 255; the model normalises it itself. An image unlike the training images (its
background polarity, its size) gets one "note:" line saying so and what to try. A file
that cannot be read gets one "error:" line on stderr; the others are still classified,
and the exit status is 1 when any failed (2 for a bad command line or model).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py

from argtypes import positive_int  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__.strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a training checkpoint, a model file (Sequential.save) or an exported .onnx file")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files (.png .jpg .jpeg .bmp .gif .webp), or folders: every image in them")
    p.add_argument("--top-k", type=positive_int, default=3, metavar="K",
                   help="classes shown per image, most probable first (default: 3)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: {model, images: [{path, classes, names, probabilities, "
                        "note, error}]}")
    p.add_argument("--invert", action="store_true",
                   help="use 255 - pixels: a dark-on-light image for a model trained on light-on-dark "
                        "ones (MNIST), or the other way round")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where a gpucnn model runs (an .onnx file runs in ONNX Runtime on the CPU) "
                        "(default: auto)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not Path(args.model).is_file():
        p.error(f"argument model: no file at {args.model}")
    from gpucnn.checkpoint import CheckpointError
    from gpucnn.classify import classify_images, load_classifier

    try:
        classifier = load_classifier(args.model, args.device)
        results = classify_images(classifier, args.images, top_k=args.top_k, invert=args.invert)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError) as exc:
        p.error(f"argument model: {exc}")
    if not results:
        p.error(f"argument IMAGE_OR_FOLDER: no image files in {', '.join(args.images)}")
    if args.json:
        print(json.dumps({"model": args.model, "images": [r.to_dict() for r in results]}, indent=2))
    for r in results:
        if r.error is not None:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
        elif not args.json:
            print(f"{r.path}: " + ", ".join(f"{name} {p:.3f}" for name, p in zip(r.names, r.probabilities)))
            if r.note:
                print(f"  note: {r.note}")
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
