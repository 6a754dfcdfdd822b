#!/usr/bin/env python
"""Export a trained model (a --checkpoint file or a Sequential.save file) to ONNX.

    python scripts/export.py runs/simple.npz runs/simple.onnx
    python scripts/export.py model.npz model.onnx --input-shape 1 28 28 --check

A checkpoint (and a model file saved from a trained model) records its images' shape
(C, H, W); a model file whose first layer does not fix it (a Conv2D knows C, not H and W)
needs --input-shape C H W. A run's input normalisation is the model's first layer, so
the ONNX file takes raw images too. The class names and training-image statistics the
model keeps go into the file's metadata, for scripts/predict.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py

from argtypes import positive_int  # noqa: E402

ONNXRUNTIME_MISSING = "--check needs onnxruntime: pip install 'gpucnn[onnx]'"


def check_against_onnxruntime(model, path, input_shape, batch: int = 8) -> float:
    """Run the exported file once in ONNX Runtime and gpucnn on the same random batch;
    returns the largest absolute difference of the logits."""
    import numpy as np
    import onnxruntime

    x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"images": x})[0]
    gpucnn_logits = model.backend.to_numpy(model.eval().forward(model.backend.asarray(x)))
    return float(np.max(np.abs(onnx_logits - gpucnn_logits)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="checkpoint (.npz from --checkpoint) or model file (Sequential.save)")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--input-shape", type=positive_int, nargs="+", metavar="DIM",
                   help="shape of one input, C H W for images (default: from the checkpoint or model)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--check", action="store_true",
                   help="run the exported file in ONNX Runtime on a random batch and print the "
                        "largest difference from gpucnn's logits")
    args = p.parse_args(argv)
    if not Path(args.model).is_file():
        p.error(f"argument model: no file at {args.model}")
    if args.check:
        try:
            import onnxruntime  # noqa: F401  (checked before anything is written)
        except ImportError:
            print(f"error: {ONNXRUNTIME_MISSING}", file=sys.stderr)
            return 1

    from gpucnn.checkpoint import CheckpointError, read_data_info, read_model, rebuild
    from gpucnn.export import to_onnx

    try:
        architecture, params, meta = read_model(args.model)
        model = rebuild(architecture, params, args.model)
        model.data_info = read_data_info(args.model)  # class names, image statistics: into the metadata
    except CheckpointError as exc:
        print(f"error: cannot read {args.model} as a gpucnn checkpoint or model file ({exc})", file=sys.stderr)
        return 1
    recorded = meta.get("input_shape") if meta else None  # (C, H, W): checkpoints since issue 10
    try:
        input_shape = tuple(args.input_shape or recorded or ()) or None
        proto = to_onnx(model, args.output, input_shape=input_shape, opset=args.opset)
    except (ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    print(f"wrote {args.output}: {len(model.layers)} layers as {len(proto.graph.node)} ONNX nodes, "
          f"opset {args.opset}, input images ({', '.join(map(str, shape))})")
    if args.check:
        difference = check_against_onnxruntime(model, args.output, shape[1:])
        print(f"check: ONNX Runtime vs gpucnn on 8 random inputs: largest logit difference {difference:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
