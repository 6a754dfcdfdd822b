#!/usr/bin/env python
"""Export a trained model (a --checkpoint file or a Sequential.save file) to ONNX.

    python scripts/export.py runs/simple.npz runs/simple.onnx
    python scripts/export.py model.npz model.onnx --input-shape 1 28 28 --check

A checkpoint (and a model file saved from a trained model) records its images' shape
(C, H, W); a model file whose first layer does not fix it (a Conv2D knows C, not H and W)
needs --input-shape C H W. A run's input normalisation is the model's first layer, so
the ONNX file takes raw images too. The class names and training-image statistics the
model keeps go into the file's metadata, for scripts/predict.py. Bad input (a file that
is not a model, a shape it cannot take, an output it cannot write) exits with status 2
and one line.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py

from argtypes import ArgumentParser, positive_int  # noqa: E402
from cli_output import quiet_when_stdout_closes  # noqa: E402

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


def checked_input_shape(p, args, model, meta) -> tuple:
    """(C, H, W) of one input: --input-shape, else the checkpoint's or the model file's
    record, else what the first layer fixes; exits with 2 saying what to pass when there is
    none or the model cannot take it (the flag's words, not to_onnx's keywords)."""
    from gpucnn.export import infer_input_shape, output_shapes

    recorded = (meta or {}).get("input_shape") or model.data_info.get("input_shape")  # (C, H, W)
    shape = tuple(args.input_shape or recorded or ())
    if not shape:
        try:
            shape = infer_input_shape(model)
        except ValueError:
            channels = next((layer.in_channels for layer in model.layers if hasattr(layer, "in_channels")), "C")
            p.refuse(f"argument --input-shape: {args.model} records no image shape and its first layer does not "
                     f"fix the height and width; pass --input-shape {channels} H W, e.g. --input-shape "
                     f"{channels if channels != 'C' else 1} 28 28 for MNIST-sized images")
    try:
        output_shapes(model, shape)
    except ValueError as exc:  # the layer that cannot take it says why
        given = "--input-shape " + " ".join(map(str, shape)) if args.input_shape else f"the recorded shape {shape}"
        p.refuse(f"argument --input-shape: {args.model} cannot take {given}: {exc.__cause__ or exc}")
    return shape


def check_opset(p, opset: int) -> None:
    """Exit with 2 unless the installed onnx (needed) knows ``opset`` and gpucnn's converters can use it."""
    from gpucnn.export import MIN_OPSET
    try:
        import onnx
    except ImportError:
        p.refuse("ONNX export needs the onnx package: pip install 'gpucnn[onnx]'")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        p.error(f"argument --opset: expected {MIN_OPSET} to {newest} (the installed onnx's newest), got {opset}")


@quiet_when_stdout_closes
def main(argv=None):
    p = ArgumentParser(prog="export.py", description=__doc__.splitlines()[0])
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
        p.refuse(f"argument model: no file at {args.model}")
    if args.check:
        try:
            import onnxruntime  # noqa: F401  (checked before anything is written)
        except ImportError:
            p.refuse(f"argument {ONNXRUNTIME_MISSING}")

    from gpucnn.training.checkpoint import CheckpointError, check_output_path, read_data_info, read_model, rebuild
    from gpucnn.export import to_onnx

    try:
        check_output_path(args.output)
    except ValueError as exc:  # a folder, a special file, a folder that cannot be made or written
        p.refuse(f"argument output: {exc}")
    except OSError as exc:  # DiskFullError: the device is full, a failure
        print(f"export.py: error: {exc}", file=sys.stderr)
        return 1
    try:
        architecture, params, meta = read_model(args.model)
        model = rebuild(architecture, params, args.model)
        model.data_info = read_data_info(args.model)  # class names, image statistics: into the metadata
    except CheckpointError as exc:  # not a checkpoint or model file, damaged
        p.refuse(f"argument model: {exc}")
    input_shape = checked_input_shape(p, args, model, meta)
    check_opset(p, args.opset)
    try:
        proto = to_onnx(model, args.output, input_shape=input_shape, opset=args.opset)
    except (ImportError, ValueError) as exc:  # onnx not installed, a layer without a converter
        p.refuse(exc)
    except OSError as exc:  # the write failed (a full disk): a failure, not bad input
        print(f"export.py: error: could not write {args.output}: {exc.strerror or exc}", file=sys.stderr)
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
