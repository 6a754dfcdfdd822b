"""The flags of scripts/train.py: its argparse parser, the TrainConfig the flags make
(with --resume: the checkpoint's settings, the flags given on top), and every check that
needs no data, which exits with status 2 and one line (argparse's ``p.error``)."""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from argtypes import (ArgumentParser, non_negative_float, non_negative_int, open_fraction, positive_float,
                      positive_int, unit_interval)
from gpucnn.training.config import ARCHS, DEVICES, FILE_DATASETS, OPTIMIZERS, SCHEDULE_NAMES, TrainConfig
from gpucnn.training.resume import RESUME_MAY_CHANGE

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = TrainConfig()
DATA_ROOT = REPO / "data"  # a named dataset's files are looked for in DATA_ROOT/<name>
NOT_CONFIG = ("metrics_json", "plot")  # flags of the command, not of the run


def _flags(names) -> str:
    return ", ".join(f"--{name.replace('_', '-')}" for name in names)


# what --resume takes from the checkpoint, refuses and lets change: gpucnn.training.config decides, --help says
RESUME_HELP = ("continue the run of a --checkpoint file with the settings it records (--resume PATH --epochs N "
               f"is enough). Refused when given other than the checkpoint's: {_flags(TrainConfig.RUN_DEFINING)} "
               "(the data, the model, its optimizer and schedule; --dataset may name a new place for the data "
               f"only when the recorded file or folder is gone). May change: {_flags(RESUME_MAY_CHANGE)}; "
               "except that a step, cosine or onecycle schedule keeps --epochs within the epochs it was "
               "planned for, and it and a warm-up that has not ended keep --batch-size (they count batches). "
               "The run's first lines name every setting changed")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows each option's default once, after its
    help, unless the help already says it or there is none to show (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def build_parser(description: str = "") -> argparse.ArgumentParser:
    """train.py's parser; ``description``: the text --help shows above the flags (the
    command's docstring)."""
    p = ArgumentParser(prog="train.py", description=description, formatter_class=HelpFormatter)
    data = p.add_argument_group("data", "what is trained on, and how it is split and augmented")
    model = p.add_argument_group("model")
    training = p.add_argument_group("training", "the optimisation, and continuing a run (--resume)")
    output = p.add_argument_group("output", "what is written and printed")
    device = p.add_argument_group("device", "where it runs")
    device.add_argument("--device", choices=DEVICES, default=DEFAULTS.device,
                        help="auto: the GPU when usable; gpu without one falls back to the CPU with a warning")
    data.add_argument("--dataset", default=DEFAULTS.dataset, metavar="NAME|FILE.npz|FOLDER",
                      help=f"{', '.join(FILE_DATASETS)}: files in --data-dir; digits: scikit-learn's bundled "
                           "8x8 digits, no files; your own .npz file holding x_train, y_train, x_test, y_test "
                           "(images (N, H, W[, C]), uint8 or float in [0, 1], optionally class_names); or a folder "
                           "of images with one subfolder per class (.png .jpg .jpeg .bmp .gif .webp; train/ and "
                           "test/ [and val/] subfolders are used as given, else 20%% of each class is held out "
                           "for testing); needs Pillow: pip install 'gpucnn[images]'")
    data.add_argument("--channels", type=int, choices=(1, 3),
                      help="--dataset FOLDER: read the images as grayscale (1) or RGB (3) (default: 1 when every "
                           "image is grayscale, else 3)")
    data.add_argument("--image-size", metavar="HxW",
                      help="--dataset FOLDER: resize every image to H x W pixels (default: the most common size)")
    data.add_argument("--cache-dir", metavar="DIR",
                      help="--dataset FOLDER: where the decoded images are cached, keyed by the files' names, "
                           "sizes and times and the decoding settings (default: $XDG_CACHE_HOME/gpucnn/images "
                           "or ~/.cache/gpucnn/images)")
    data.add_argument("--skip-bad-images", action="store_true",
                      help="--dataset FOLDER: leave out files that cannot be decoded, saying how many "
                           "(without it they are listed and nothing trains)")
    data.add_argument("--data-dir", metavar="DIR",
                      help=f"folder of the dataset's files, only with --dataset {', '.join(FILE_DATASETS)} "
                           f"(default: {DATA_ROOT}/<dataset>)")
    data.add_argument("--download", action="store_true",
                      help="fetch missing dataset files from the public mirrors, checksum-verified")
    data.add_argument("--limit-train", type=positive_int, metavar="N",
                      help="train (and validate) on a stratified subset of N training images (default: all)")
    data.add_argument("--limit-test", type=positive_int, metavar="N",
                      help="test on a stratified subset of N test images (default: all)")
    data.add_argument("--val-fraction", type=open_fraction, default=DEFAULTS.val_fraction, metavar="F",
                      help="fraction of the training images held out for validation (stratified)")
    model.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=DEFAULTS.normalize,
                       help="first layer: Normalize by the training split's per-channel mean and std, saved "
                            "with the model, so it takes raw images [0, 1] (default: on)")
    data.add_argument("--augment", default=DEFAULTS.augment, metavar="SPEC",
                      help="training-batch augmentation: shift:K (random translation by up to K pixels), "
                           "flip (random horizontal mirror; refused for mnist and digits: a mirrored digit is "
                           "another symbol), both with a comma (shift:4,flip), or none")
    model.add_argument("--arch", default=DEFAULTS.arch, metavar="NAME|FILE.json",
                       help=f"{', '.join(ARCHS)}, or a JSON file holding the layer list that "
                            "Sequential.architecture() writes; checked against the data's shapes before training")
    training.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, metavar="N",
                          help="total epochs, also when resuming")
    training.add_argument("--patience", type=positive_int, metavar="N",
                          help="early stopping: end training after N epochs without a lower validation loss, "
                               "then test as after the last epoch (default: off; may change on --resume)")
    training.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, metavar="N",
                          help="images per training step")
    training.add_argument("--lr", type=positive_float, default=DEFAULTS.lr,
                          help="learning rate; the peak rate of a --schedule")
    training.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer,
                          help="sgd: plain gradient descent; momentum / nesterov: SGD with (Nesterov) --momentum; "
                               "adam: Adam; adamw: Adam with decoupled weight decay")
    training.add_argument("--momentum", type=unit_interval, metavar="BETA",
                          help=f"momentum of --optimizer momentum or nesterov, only with them "
                               f"(default: {DEFAULTS.momentum})")
    training.add_argument("--weight-decay", type=non_negative_float, metavar="W",
                          help="L2 penalty added to the gradient (sgd, momentum, nesterov, adam: as torch), "
                               "decoupled decay for adamw (default: 0, and 0.01 for adamw)")
    training.add_argument("--label-smoothing", type=unit_interval, default=DEFAULTS.label_smoothing, metavar="E",
                          help="train against (1 - E) * one-hot + E / classes, as torch; validation and test "
                               "losses stay plain cross-entropy")
    training.add_argument("--schedule", choices=SCHEDULE_NAMES, default=DEFAULTS.schedule,
                          help="learning rate per batch: constant; step (x0.1 after each third); cosine (to 0); "
                               "onecycle (rises for 30%%, then falls). It spans the --epochs of the first run, "
                               "so a run with a step, cosine or onecycle schedule resumes only up to those epochs")
    training.add_argument("--warmup-epochs", type=non_negative_int, default=DEFAULTS.warmup_epochs, metavar="N",
                          help="raise the rate linearly from 0 over the first N epochs; not with onecycle, "
                               "which warms up itself")
    training.add_argument("--seed", type=non_negative_int, default=DEFAULTS.seed,
                          help="seeds the weights, the data subsets, the validation split, the batch order, "
                               "the augmentations and the dropout masks")
    output.add_argument("--checkpoint", metavar="PATH",
                        help="save weights, optimizer, schedule and RNG state after every epoch (atomically)")
    output.add_argument("--save-best", action="store_true",
                        help="with --checkpoint PATH: also keep the epoch of the best validation accuracy (ties: "
                             "the lower validation loss) in PATH's .best.npz (runs/x.npz -> runs/x.best.npz); a "
                             "--resume that does worse never replaces it")
    training.add_argument("--resume", metavar="PATH", help=RESUME_HELP)
    output.add_argument("--metrics-json", metavar="PATH", help="write history and test metrics as JSON")
    output.add_argument("--plot", metavar="PATH",
                        help="write a figure (.png, .pdf, .svg, ...): curves, confusion matrix, first-layer kernels")
    output.add_argument("--log-dir", metavar="DIR",
                        help="write TensorBoard event files while training (tensorboard --logdir DIR): per step the "
                             "training loss and learning rate, per epoch losses and accuracies, at the end the "
                             "first layer's filters; needs pip install 'gpucnn[tensorboard]'")
    output.add_argument("--verbose", type=int, choices=(0, 1, 2), default=DEFAULTS.verbose,
                        help="0: only the final test accuracy, 1: progress bars on a terminal, "
                             "2: one line per epoch")
    device.add_argument("--distributed", action="store_true",
                        help="data-parallel training over the processes of an MPI launch: mpiexec -n N python "
                             "-m mpi4py scripts/train.py --distributed ...; --batch-size is the global batch "
                             "(a multiple of N); on GPUs rank r uses GPU local_rank %% device_count over NCCL; "
                             "only rank 0 prints and writes files")
    return p


def config_from(args) -> TrainConfig:
    fields = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    fields["momentum"] = DEFAULTS.momentum if args.momentum is None else args.momentum
    if args.data_dir is None and args.dataset in FILE_DATASETS:
        fields["data_dir"] = str(DATA_ROOT / args.dataset)  # the checkout's data, from any working folder
    return TrainConfig(**fields)


def given_flags(argv) -> set:
    """The destinations of the flags given on the command line ``argv`` (None: sys.argv),
    whatever their value: a parser whose every default is "absent" parses it again."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def resumed_config(p, args, given: set) -> TrainConfig:
    """The config that continues --resume's run: its settings, this run's given flags on top;
    exits with 2 listing every given flag that contradicts it."""
    from gpucnn.training.checkpoint import CheckpointError, load_checkpoint
    from gpucnn.training.config import FlagError
    from gpucnn.training.resume import resume_config
    try:
        meta = load_checkpoint(args.resume)["meta"]
        asked = {dest: getattr(args, dest) for dest in given if dest not in NOT_CONFIG}
        if asked.get("dataset") in FILE_DATASETS and "data_dir" not in asked:
            asked["data_dir"] = str(DATA_ROOT / asked["dataset"])
        return resume_config(meta, {**asked, "resume": args.resume})
    except (CheckpointError, FlagError) as exc:
        p.error(f"argument --resume: {exc}")


def check_args(p, args, given: set | None = None) -> TrainConfig:
    """Everything that can be checked without loading data; exits with 2 on the first problem.
    ``given``: the flags on the command line (with --resume the others come from the checkpoint)."""
    config = resumed_config(p, args, given if given is not None else set(vars(args))) if args.resume else None
    optimizer = config.optimizer if config is not None else args.optimizer
    # nothing the user gives is silently ignored
    if args.momentum is not None and optimizer not in ("momentum", "nesterov"):
        p.error(f"argument --momentum: only used with --optimizer momentum or nesterov, "
                f"got --optimizer {optimizer}")
    if args.distributed:
        from importlib.util import find_spec
        from gpucnn.distributed import MPI_MISSING
        if find_spec("mpi4py") is None:
            p.error(f"argument {MPI_MISSING}")
    launched, launch_rank = launched_by_mpiexec()
    if launched > 1 and not args.distributed and launch_rank == 0:
        warnings.warn(f"mpiexec started {launched} processes but --distributed is not given: each trains "
                      "alone on all the data (and they write the same files); add --distributed")
    config = config_from(args) if config is None else config
    try:
        config.validate()  # also probes the --checkpoint folder
    except (ValueError, ImportError) as exc:
        p.error(f"argument {exc}")

    from gpucnn.training.checkpoint import check_output_path
    outputs = {"--checkpoint": config.checkpoint, "--metrics-json": args.metrics_json, "--plot": args.plot}
    for flag in ("--metrics-json", "--plot"):
        if outputs[flag] is None:
            continue
        try:
            check_output_path(outputs[flag])
            if flag == "--plot":
                from gpucnn.training.plot import check_plot_path
                check_plot_path(outputs[flag])
        except (ValueError, ImportError) as exc:
            p.error(f"argument {flag}: {exc}")
    given = [(flag, os.path.realpath(path)) for flag, path in outputs.items() if path is not None]
    if args.resume:
        given.append(("--resume", os.path.realpath(args.resume)))
    for i, (flag, path) in enumerate(given):
        for other, other_path in given[:i]:
            if path == other_path and {flag, other} != {"--checkpoint", "--resume"}:
                p.error(f"argument {flag}: the same file as {other} ({path}); give each output its own file")

    if args.resume:
        from gpucnn.training.checkpoint import CheckpointError, load_checkpoint
        from gpucnn.training.config import FlagError
        from gpucnn.training.resume import check_resume
        try:
            check_resume(config, load_checkpoint(args.resume)["meta"])
        except (CheckpointError, FlagError) as exc:
            p.error(f"argument --resume: {exc}")
    return config


def launched_by_mpiexec() -> tuple[int, int]:
    """(processes, this one's rank) that MPICH's or Open MPI's mpiexec says it started, from
    the environment it sets (MPI itself is not started); (1, 0) without a launcher."""
    for size, rank in (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")):
        if os.environ.get(size, "").isdigit() and os.environ.get(rank, "").isdigit():
            return int(os.environ[size]), int(os.environ[rank])
    return 1, 0
