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
background polarity, its size) gets one "note:" line saying so and what to try. Files
that cannot be read are named on one "error:" line on stderr after the others are
classified, and the exit status is 2, as for a bad command line or model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py

from argtypes import ArgumentParser, positive_int  # noqa: E402
from cli_output import quiet_when_stdout_closes  # noqa: E402

SHOWN_BAD = 3  # unreadable files named in the error line; the count says how many more


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="predict.py", description=__doc__.strip(),
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


def unreadable(results) -> str:
    """The error line for the images that could not be read, e.g. "expected image files
    ... that can be read, got 1 of 20 that cannot: notes.txt (not an image file); the
    others were classified"."""
    from gpucnn.data.images import IMAGE_EXTENSIONS

    bad = [r for r in results if r.error is not None]
    shown = "; ".join(f"{r.path} ({r.error})" for r in bad[:SHOWN_BAD])
    more = f" and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
    others = "; the others were classified" if len(bad) < len(results) else ""
    return (f"expected image files ({' '.join(IMAGE_EXTENSIONS)}) that can be read, "
            f"got {len(bad)} of {len(results)} that cannot: {shown}{more}{others}")


@quiet_when_stdout_closes  # `predict.py ... | head -1` ends quietly, with 0
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not Path(args.model).is_file():
        p.refuse(f"argument model: no file at {args.model}")
    from gpucnn.training.checkpoint import CheckpointError
    from gpucnn.classify import classify_images, load_classifier

    try:
        classifier = load_classifier(args.model, args.device)
        results = classify_images(classifier, args.images, top_k=args.top_k, invert=args.invert)
    except ImportError as exc:  # Pillow, or onnxruntime for an .onnx model: the line says what to install
        p.refuse(exc)
    except (CheckpointError, ValueError) as exc:  # not a model file, damaged, not an image model
        p.refuse(f"argument model: {exc}")
    if not results:
        p.error(f"argument IMAGE_OR_FOLDER: no image files in {', '.join(args.images)}")
    if args.json:
        print(json.dumps({"model": args.model, "images": [r.to_dict() for r in results]}, indent=2))
    for r in results:
        if r.error is None and not args.json:
            print(f"{r.path}: " + ", ".join(f"{name} {p:.3f}" for name, p in zip(r.names, r.probabilities)))
            if r.note:
                print(f"  note: {r.note}")
    if any(r.error is not None for r in results):
        sys.stdout.flush()  # the results first, then the error line
        p.refuse(unreadable(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
