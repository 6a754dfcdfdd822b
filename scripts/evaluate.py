"""Evaluate a trained model on held-out test images: loss, accuracy and the confusion matrix.

    python scripts/evaluate.py runs/simple.npz              # on the data it was trained on
    python scripts/evaluate.py model.npz --dataset digits   # a Sequential.save file

A training checkpoint (from train.py --checkpoint) records its dataset, data folder and
test subset (--limit-test): they are used unless a flag says otherwise. A model file
(Sequential.save) records none: mnist unless --dataset says otherwise. The model takes
raw images: a run's input normalisation is its first layer. Bad input (a file that is
not a model, data it cannot take, an image folder it cannot read) exits with status 2
and one line.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/argtypes.py

from argtypes import ArgumentParser, positive_int  # noqa: E402
from cli_output import quiet_when_stdout_closes  # noqa: E402
from gpucnn.training.config import DATASETS, DEVICES, FILE_DATASETS  # noqa: E402
from gpucnn.data.images import parse_image_size  # noqa: E402

DATA_ROOT = REPO / "data"  # a named dataset's files are looked for in DATA_ROOT/<name>


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="evaluate.py", description=__doc__.strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a training checkpoint (train.py --checkpoint) or a model file (Sequential.save)")
    p.add_argument("--dataset", metavar="NAME|FILE.npz|FOLDER",
                   help=f"the test images to use: {', '.join(DATASETS)}, a .npz file or a folder of images with "
                        "one subfolder per class, read at the model's channels and image size "
                        "(default: the checkpoint's dataset; mnist for a model file)")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"folder of the dataset's files, only with --dataset {', '.join(FILE_DATASETS)} "
                        f"(default: the checkpoint's, else {DATA_ROOT}/<dataset>)")
    p.add_argument("--download", action="store_true",
                   help="fetch missing dataset files from the public mirrors, checksum-verified")
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="evaluate on a stratified subset of N test images "
                        "(default: the checkpoint's --limit-test, else all)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: the GPU when usable, else the CPU (default: auto)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="images per forward pass; only memory and speed depend on it "
                        "(default: the checkpoint's training --batch-size, else 256)")
    return p


def choose_data(args, recorded: dict | None):
    """(dataset, data_dir, limit_test, recorded-or-None, one line saying where they came from)."""
    dataset = args.dataset or (recorded["dataset"] if recorded else "mnist")
    same = recorded is not None and recorded.get("dataset") == dataset
    data_dir = None
    if dataset in FILE_DATASETS:
        data_dir = args.data_dir or (recorded.get("data_dir") if same else None) or str(DATA_ROOT / dataset)
    limit_test = args.limit_test if args.limit_test is not None else (recorded.get("limit_test") if same else None)
    if recorded is None:
        source = ("chosen by --dataset" if args.dataset else
                  "a model file records no dataset: mnist by default, --dataset chooses another")
    elif not same:
        source = f"chosen by --dataset; the checkpoint was trained on {recorded['dataset']}"
    else:
        source = "as recorded in the checkpoint" + (", test subset from --limit-test" if args.limit_test else "")
    return dataset, data_dir, limit_test, recorded if same else None, source


def folder_options(dataset: str, info: dict, recorded: dict | None) -> dict:
    """How a folder of images is read: as the training run read it (the same settings: its
    cache is used), else at the model's channels and image size when it records them;
    unreadable files are left out, saying how many."""
    if dataset in DATASETS or not os.path.isdir(dataset):
        return {}
    if recorded is not None:
        size = recorded.get("image_size")
        return {"channels": recorded.get("channels"), "image_size": parse_image_size(size) if size else None,
                "cache_dir": recorded.get("cache_dir"), "skip_bad_images": True, "log": print}
    shape = info.get("input_shape")
    return {"channels": shape[0] if shape else None, "image_size": tuple(shape[1:]) if shape else None,
            "skip_bad_images": True, "log": print}


def check_dataset_flags(p, args, dataset: str) -> None:
    """Exit 2 unless ``dataset`` is a name or an existing .npz file, and --data-dir /
    --download are given only for a dataset read from a data folder."""
    if dataset in DATASETS or os.path.isdir(dataset):
        pass
    elif dataset.lower().endswith(".npz"):
        if not os.path.isfile(dataset):
            p.error(f"argument --dataset: {dataset}: no such file")
    else:
        p.error(f"argument --dataset: expected one of {', '.join(DATASETS)}, the path of a .npz file or of a "
                f"folder of images, got {dataset!r}")
    for flag, given in (("--data-dir", args.data_dir is not None), ("--download", args.download)):
        if given and dataset not in FILE_DATASETS:
            p.error(f"argument {flag}: only used with --dataset {', '.join(FILE_DATASETS)}, "
                    f"the dataset is {dataset}")


@quiet_when_stdout_closes  # `evaluate.py CKPT | head -1` ends quietly, with 0
def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    from gpucnn.training.checkpoint import CheckpointError, read_model, rebuild
    try:
        architecture, params, meta = read_model(args.model)
        model = rebuild(architecture, params, args.model)
    except CheckpointError as exc:  # no such file, not a checkpoint or model file, damaged
        p.refuse(f"argument model: {exc}")
    dataset, data_dir, limit_test, recorded, source = choose_data(args, meta and meta["config"])
    if args.dataset is None and meta:  # the checkpoint's dataset: a file or folder that may be gone
        from gpucnn.training.config import FlagError
        from gpucnn.training.resume import check_recorded_dataset
        try:
            check_recorded_dataset(dataset, "evaluate on a copy of it")
        except FlagError as exc:
            p.error(f"argument model: {exc}")
    check_dataset_flags(p, args, dataset)

    from gpucnn.data import datasets
    from gpucnn.backends.backend import get_backend
    from gpucnn.training.checkpoint import read_data_info
    from gpucnn.data.batches import check_labels, is_download_failure
    from gpucnn.training.report import format_confusion
    from gpucnn.data.splits import SplitError, data_generator, plan_splits, plan_test_subset
    from gpucnn.training.run import EVAL_BATCH_SIZE, held_out_report

    info = read_data_info(args.model)  # input shape, class names
    try:
        data = datasets.load(dataset, data_dir, download=args.download, **folder_options(dataset, info, recorded))
        check_labels(data.test_y, data.num_classes, "test")
    except datasets.DataError as exc:  # missing, corrupt, an image folder with one class: bad input
        if not is_download_failure(exc):
            p.refuse(exc)
        print(f"error: {exc}", file=sys.stderr)  # a mirror or the network failed
        return 1
    except ImportError as exc:  # an image folder without Pillow: the line says what to install
        p.refuse(exc)
    # the same draws as the training run: its test subset, whatever else it limited
    settings = recorded or {"seed": 0, "limit_train": None, "val_fraction": 0.1}
    try:
        test = plan_splits(data.train_y, data.test_y, settings["limit_train"], settings["val_fraction"],
                           limit_test, data_generator(settings["seed"]), val_given=data.val_x is not None).test
    except SplitError:  # training images too few to split as a run would: only the test subset matters
        try:
            test = plan_test_subset(data.test_y, limit_test, data_generator(settings["seed"]))
        except SplitError as exc:  # --limit-test too small
            p.error(str(exc))
    test_x, test_y = (data.test_x, data.test_y) if test is None else (data.test_x[test], data.test_y[test])
    kind = f"checkpoint after epoch {meta['epoch']}" if meta else "model file"
    print(f"model: {args.model} ({kind})")
    print(f"data: {dataset} test images ({source})")
    trained_on = meta.get("input_shape") if meta else None  # (C, H, W), in checkpoints since issue 10
    try:
        model.summary((1, *data.input_shape))  # refuses a model built for other images
        if trained_on is not None and tuple(trained_on) != data.input_shape:
            raise ValueError(f"it was trained on images of shape {tuple(trained_on)}")
    except ValueError as exc:
        p.refuse(f"{args.model} does not take {dataset} images of shape {data.input_shape} ({exc}); "
                 "pass the --dataset it was trained on")
    backend = get_backend(args.device)
    model.to(backend)
    print(f"device: {backend.name}")
    batch_size = args.batch_size or (meta and meta["config"].get("batch_size")) or EVAL_BATCH_SIZE
    loss, acc, _, matrix = held_out_report(model, test_x, test_y, data.num_classes, batch_size)
    print(f"test: loss {loss:.4f}  accuracy {acc:.2%} on {len(test_y)} images")
    names = info.get("class_names") or data.class_names
    print("confusion matrix (rows: true class, columns: predicted):\n" + format_confusion(matrix, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
