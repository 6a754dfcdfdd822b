"""What defines a training run: TrainConfig (one field per CLI flag), its validation and
the optimizer it names.

Everything here is checked before any data loads, so a bad setting costs nothing:
``TrainConfig.validate()`` raises ValueError naming the flag. Whether a checkpoint can
continue a run, and what a resume may change, is gpucnn.training.resume's (it raises FlagError,
defined here).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..data.augment import parse_augment
from .checkpoint import check_output_path
from ..data.datasets import DATASETS, DEFAULT_DATA_DIRS
from ..optim.optimizers import SGD, Adam, AdamW
from ..optim.schedules import SCHEDULES
from ..nn.zoo import ARCHS, read_architecture

__all__ = ["TrainConfig", "FlagError", "make_optimizer", "ARCHS", "DATASETS", "DEVICES", "OPTIMIZERS",
           "SCHEDULE_NAMES", "FILE_DATASETS"]

DEVICES = ("auto", "cpu", "gpu")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULE_NAMES = tuple(SCHEDULES)  # constant, step, cosine, onecycle
FILE_DATASETS = tuple(DEFAULT_DATA_DIRS)  # the named datasets read from files in a data folder
DIGIT_DATASETS = ("mnist", "digits")  # where a horizontal flip turns a sample into another symbol
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov")
# the settings that name a file or folder: recorded as absolute paths (TrainConfig.to_dict)
PATH_FIELDS = ("dataset", "arch", "data_dir", "cache_dir", "checkpoint", "resume", "log_dir")


class FlagError(ValueError):
    """A setting that cannot work with this data or this checkpoint (the CLI exits with 2)."""


@dataclass
class TrainConfig:
    """Everything that defines a run; the CLI flags map one to one onto these fields.

    ``dataset``: a name in DATASETS or the path of a .npz file; ``data_dir``: the folder
    of a named file dataset (None: gpucnn.data.datasets.DEFAULT_DATA_DIRS, relative to the
    working folder); ``arch``: a name in ARCHS or the path of a JSON architecture file;
    ``weight_decay`` None means 0.01 for adamw, 0 otherwise; ``augment``: a
    gpucnn.data.augment spec ("shift:2", "shift:4,flip", "none").
    """

    device: str = "auto"
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    arch: str = "simple"
    normalize: bool = True
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    augment: str = "none"
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    val_fraction: float = 0.1
    checkpoint: str | None = None
    resume: str | None = None
    verbose: int = 1
    distributed: bool = False  # data-parallel over the ranks of an MPI launch (gpucnn.distributed)
    # an image folder (gpucnn.data.datasets.folder): channels 1|3 and "HxW" (None: from the images),
    # where the decoded cache lives (None: gpucnn.data.datasets.default_cache_dir()), unreadable files
    channels: int | None = None
    image_size: str | None = None
    cache_dir: str | None = None
    skip_bad_images: bool = False
    log_dir: str | None = None  # TensorBoard event files (gpucnn.training.tensorboard)
    patience: int | None = None  # early stopping: epochs without a better validation loss (None: off)
    save_best: bool = False  # keep the best validation epoch beside --checkpoint (gpucnn.training.run.best_checkpoint_path)

    # flags that must match when resuming: they define the data, the model, its optimizer and
    # schedule (what may change instead: RESUME_MAY_CHANGE in gpucnn.training.resume)
    RUN_DEFINING = ("dataset", "arch", "normalize", "optimizer", "schedule", "warmup_epochs", "seed",
                    "limit_train", "val_fraction", "channels", "image_size", "skip_bad_images")
    # what a checkpoint written before a flag existed was trained with
    BEFORE_FLAG = {"normalize": False, "schedule": "constant", "warmup_epochs": 0, "channels": None,
                   "image_size": None, "skip_bad_images": False}

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 0.0

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field (before any data is loaded); checks
        that the --checkpoint path can be written by writing (and deleting) a probe file."""
        def fail(name, expected):
            raise ValueError(f"--{name.replace('_', '-')} expected {expected}, got {getattr(self, name)!r}")

        for name, choices in (("device", DEVICES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULE_NAMES)):
            if getattr(self, name) not in choices:
                fail(name, f"one of {', '.join(choices)}")
        self._validate_data_source(fail)
        self._validate_arch(fail)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "a positive integer")
        if not _number(self.lr) or self.lr <= 0:
            fail("lr", "a positive finite number")
        if not _number(self.momentum) or not 0 <= self.momentum < 1:
            fail("momentum", "a number in [0, 1)")
        if self.optimizer == "nesterov" and self.momentum == 0:
            fail("momentum", "a number in (0, 1) for --optimizer nesterov")
        if self.weight_decay is not None and (not _number(self.weight_decay) or self.weight_decay < 0):
            fail("weight_decay", "a non-negative number (0 turns it off)")
        if not _number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "a number in [0, 1); 0.1 is the usual choice")
        self._validate_schedule(fail)
        self._validate_augment()
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(name, "a positive integer (or leave it out for all samples)")
        if not _number(self.val_fraction) or not 0 < self.val_fraction < 1:
            fail("val_fraction", "a fraction strictly between 0 and 1")
        if self.verbose not in (0, 1, 2):
            fail("verbose", "0 (quiet), 1 (progress bars) or 2 (one line per epoch)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "a non-negative integer")
        if not isinstance(self.distributed, bool):
            fail("distributed", "True or False")
        if self.checkpoint is not None:
            try:
                check_output_path(self.checkpoint)
            except ValueError as exc:
                raise ValueError(f"--checkpoint: {exc}") from None
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            fail("patience", "a positive integer: epochs without a better validation loss before training stops")
        if not isinstance(self.save_best, bool):
            fail("save_best", "True or False")
        if self.save_best and self.checkpoint is None:
            raise ValueError("--save-best expected --checkpoint PATH beside it (the best epoch goes to PATH's "
                             ".best.npz), got no --checkpoint; add --checkpoint runs/NAME.npz")
        if self.log_dir is not None:
            from .tensorboard import check_log_dir
            check_log_dir(self.log_dir)  # ValueError "--log-dir ...": tensorboardX missing, not writable
        return self

    @property
    def image_folder(self) -> bool:
        """True when ``dataset`` names a folder of images (a name in DATASETS never does)."""
        return self.dataset not in DATASETS and os.path.isdir(str(self.dataset))

    def _validate_data_source(self, fail) -> None:
        if self.image_folder:
            self._validate_image_folder()
        elif str(self.dataset).lower().endswith(".npz"):
            if not os.path.isfile(self.dataset):
                raise ValueError(f"--dataset {self.dataset}: no such file; give the path of a .npz file "
                                 "holding x_train, y_train, x_test, y_test")
        elif self.dataset not in DATASETS:
            fail("dataset", f"one of {', '.join(DATASETS)}, the path of a .npz file or of a folder of images "
                            "with one subfolder per class")
        else:
            self._warn_if_a_folder_is_shadowed()
            for name in ("channels", "image_size", "cache_dir", "skip_bad_images"):
                if getattr(self, name) not in (None, False):
                    raise ValueError(f"--{name.replace('_', '-')}: only used with --dataset FOLDER (a folder of "
                                     f"images), got --dataset {self.dataset}")
        for name, given in (("data-dir", self.data_dir is not None), ("download", self.download)):
            if given and self.dataset not in FILE_DATASETS:
                raise ValueError(f"--{name}: only used with --dataset {', '.join(FILE_DATASETS[:-1])} or "
                                 f"{FILE_DATASETS[-1]}, got --dataset {self.dataset}")

    def _warn_if_a_folder_is_shadowed(self) -> None:
        """A folder ./digits (named like a built-in dataset) is not what --dataset digits
        loads: warn, once, saying how to name the folder (unless it is the data folder read)."""
        name = str(self.dataset)
        if not os.path.isdir(name):
            return
        if name in FILE_DATASETS and os.path.realpath(name) == os.path.realpath(
                self.data_dir or DEFAULT_DATA_DIRS[name]):
            return  # the folder of the dataset's own files, read as --data-dir
        warnings.warn(f"--dataset {name} loads the built-in {name} dataset, not the folder ./{name} here; "
                      f"give --dataset ./{name} to train on the folder")

    def _validate_image_folder(self) -> None:
        from ..data.images import PILLOW_MISSING, parse_image_size

        if self.channels not in (None, 1, 3):
            raise ValueError(f"--channels expected 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if self.image_size is not None:
            try:
                parse_image_size(self.image_size)
            except ValueError as exc:
                raise ValueError(f"--image-size {exc}") from None
        if not isinstance(self.skip_bad_images, bool):
            raise ValueError(f"--skip-bad-images expected True or False, got {self.skip_bad_images!r}")
        try:
            import PIL  # noqa: F401  (the folder is decoded with Pillow)
        except ImportError:
            raise ValueError(f"--dataset {self.dataset}: {PILLOW_MISSING}") from None
        if self.cache_dir is not None:
            try:
                check_output_path(os.path.join(self.cache_dir, "probe.npz"))
            except ValueError as exc:
                raise ValueError(f"--cache-dir: {exc}") from None
        from ..data.datasets.folder import check_image_folder
        from ..data.batches import DataError
        try:  # the folder's layout, before anything is printed or decoded (unreadable files: when decoding)
            check_image_folder(self.dataset)
        except DataError as exc:
            raise ValueError(f"--dataset {exc}") from None

    def _validate_arch(self, fail) -> None:
        if self.arch in ARCHS:
            return
        if not str(self.arch).lower().endswith(".json"):
            fail("arch", f"one of {', '.join(ARCHS)}, or the path of a .json architecture file")
        if not os.path.isfile(self.arch):
            raise ValueError(f"--arch {self.arch}: no such file; give the path of a JSON file holding "
                             "what Sequential.architecture() returns")
        read_architecture(self.arch)  # ValueError "--arch PATH: ..." when it is not one

    def _validate_schedule(self, fail) -> None:
        value = self.warmup_epochs
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail("warmup_epochs", "a non-negative integer")
        if value and self.schedule == "onecycle":
            raise ValueError(f"--warmup-epochs: not used with --schedule onecycle, which starts with its own "
                             f"warm-up (its first 30% of the steps); leave --warmup-epochs out")
        if value >= self.epochs:
            fail("warmup_epochs", f"fewer epochs than --epochs {self.epochs}")

    def _validate_augment(self) -> None:
        try:
            augment = parse_augment(self.augment)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--augment: {exc}") from None
        if augment.flip and self.dataset in DIGIT_DATASETS:
            raise ValueError(f"--augment {self.augment}: flip is refused for --dataset {self.dataset}: a mirrored "
                             "digit is another symbol (or none); use shift:K alone")

    def to_dict(self) -> dict:
        """The settings as a checkpoint and the metrics JSON record them: every file or
        folder (PATH_FIELDS: --dataset FOLDER|FILE.npz, --arch FILE.json, --data-dir,
        --cache-dir, --checkpoint, --resume, --log-dir) as an absolute path, so that
        evaluate.py and --resume read the same files from any working folder.

        Absolute rather than relative to the checkpoint file: a checkpoint is what gets
        moved or copied (into another folder, next to an export), while the data stays where
        it was trained on; a path relative to the checkpoint breaks with each such move, an
        absolute one only when the data itself moves, and then --resume and evaluate.py name
        the missing path and take --dataset PATH instead (gpucnn.training.resume.check_recorded_dataset)."""
        settings = dataclasses.asdict(self)
        for name in PATH_FIELDS:
            if not _built_in(name, settings[name]):
                settings[name] = os.path.abspath(os.fspath(settings[name]))
        return settings

    def applicable(self) -> dict:
        """The settings that matter for this run (what the run prints): a data folder only
        for the file datasets, momentum only for the optimizers that use it, the weight
        decay actually used, no warm-up for onecycle, nothing left unset."""
        settings = self.to_dict()
        if self.dataset in FILE_DATASETS:
            settings["data_dir"] = self.data_dir or DEFAULT_DATA_DIRS[self.dataset]
        else:
            del settings["data_dir"], settings["download"]
        if self.optimizer not in MOMENTUM_OPTIMIZERS:
            del settings["momentum"]
        settings["weight_decay"] = self.effective_weight_decay
        if self.schedule == "onecycle":
            del settings["warmup_epochs"]
        if not self.distributed:
            del settings["distributed"]
        if self.image_folder:
            from ..data.datasets import default_cache_dir
            settings["cache_dir"] = self.cache_dir or str(default_cache_dir())
        else:
            del settings["skip_bad_images"]
        return {k: v for k, v in settings.items() if v is not None}


def _built_in(name: str, value) -> bool:
    """True when the setting ``name`` is unset or names no file: a built-in dataset or
    architecture."""
    return value is None or (name == "dataset" and value in DATASETS) or (name == "arch" and value in ARCHS)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def make_optimizer(name: str, model, lr: float, momentum: float = 0.9, weight_decay: float | None = None):
    """The optimizer called ``name`` (one of OPTIMIZERS) over ``model``'s parameters;
    ``weight_decay`` None: 0.01 for adamw (torch's default), 0 for the others."""
    decay = (0.01 if name == "adamw" else 0.0) if weight_decay is None else weight_decay
    if name == "sgd":
        return SGD(model, lr, weight_decay=decay)
    if name in MOMENTUM_OPTIMIZERS:
        return SGD(model, lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=decay)
    if name == "adam":
        return Adam(model, lr, weight_decay=decay)
    if name == "adamw":
        return AdamW(model, lr, weight_decay=decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
