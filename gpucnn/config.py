"""What defines a training run: TrainConfig (one field per CLI flag), its validation,
the optimizer it names, and whether a checkpoint can continue it.

Everything here is checked before any data loads, so a bad setting costs nothing:
``TrainConfig.validate()`` raises ValueError naming the flag, ``check_resume`` raises
FlagError when a checkpoint cannot continue as asked.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from .augment import parse_augment
from .checkpoint import check_output_path
from .datasets import DATASETS, DEFAULT_DATA_DIRS
from .optim import SGD, Adam, AdamW
from .schedules import SCHEDULES
from .zoo import ARCHS, read_architecture

__all__ = ["TrainConfig", "FlagError", "make_optimizer", "check_resume", "resume_config", "flag_words", "ARCHS", "DATASETS", "DEVICES",
           "OPTIMIZERS", "SCHEDULE_NAMES", "FILE_DATASETS"]

DEVICES = ("auto", "cpu", "gpu")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULE_NAMES = tuple(SCHEDULES)  # constant, step, cosine, onecycle
FILE_DATASETS = tuple(DEFAULT_DATA_DIRS)  # the named datasets read from files in a data folder
DIGIT_DATASETS = ("mnist", "digits")  # where a horizontal flip turns a sample into another symbol
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov")


class FlagError(ValueError):
    """A setting that cannot work with this data or this checkpoint (the CLI exits with 2)."""


@dataclass
class TrainConfig:
    """Everything that defines a run; the CLI flags map one to one onto these fields.

    ``dataset``: a name in DATASETS or the path of a .npz file; ``data_dir``: the folder
    of a named file dataset (None: gpucnn.datasets.DEFAULT_DATA_DIRS, relative to the
    working folder); ``arch``: a name in ARCHS or the path of a JSON architecture file;
    ``weight_decay`` None means 0.01 for adamw, 0 otherwise; ``augment``: a
    gpucnn.augment spec ("shift:2", "shift:4,flip", "none").
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
    # an image folder (gpucnn.datasets.folder): channels 1|3 and "HxW" (None: from the images),
    # where the decoded cache lives (None: gpucnn.datasets.default_cache_dir()), unreadable files
    channels: int | None = None
    image_size: str | None = None
    cache_dir: str | None = None
    skip_bad_images: bool = False
    log_dir: str | None = None  # TensorBoard event files (gpucnn.tensorboard)

    # flags that must match when resuming: they define the data, the model and its schedule
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
            for name in ("channels", "image_size", "cache_dir", "skip_bad_images"):
                if getattr(self, name) not in (None, False):
                    raise ValueError(f"--{name.replace('_', '-')}: only used with --dataset FOLDER (a folder of "
                                     f"images), got --dataset {self.dataset}")
        for name, given in (("data-dir", self.data_dir is not None), ("download", self.download)):
            if given and self.dataset not in FILE_DATASETS:
                raise ValueError(f"--{name}: only used with --dataset {', '.join(FILE_DATASETS[:-1])} or "
                                 f"{FILE_DATASETS[-1]}, got --dataset {self.dataset}")

    def _validate_image_folder(self) -> None:
        from .images import PILLOW_MISSING, parse_image_size

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
        return dataclasses.asdict(self)

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
            from .datasets import default_cache_dir
            settings["cache_dir"] = self.cache_dir or str(default_cache_dir())
        else:
            del settings["skip_bad_images"]
        return {k: v for k, v in settings.items() if v is not None}


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


# this run's own settings when resuming: where and how it runs, not what it trains
RESUME_OWN = ("device", "epochs", "resume", "verbose", "distributed", "download")
# how a setting reads when it is not given (None) or switched off (False)
UNSET_WORDS = {"limit_train": "all training images", "limit_test": "all test images",
               "channels": "as the images are", "image_size": "the most common size",
               "weight_decay": "the optimizer's default", "data_dir": "the default folder",
               "cache_dir": "the default cache folder", "checkpoint": "no checkpoint", "log_dir": "no log"}
BOOLEAN_FLAGS = ("normalize",)  # --x / --no-x; the other booleans are plain --x switches


def flag_words(name: str, value) -> str:
    """A setting as the command line writes it: "--arch lenet", "--no-normalize",
    "no --limit-train (all training images)"; never a Python None."""
    flag = f"--{name.replace('_', '-')}"
    if name in BOOLEAN_FLAGS:
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if value is None:
        return f"no {flag}" + (f" ({UNSET_WORDS[name]})" if name in UNSET_WORDS else "")
    return f"{flag} {value}"


def _same(name: str, was, now) -> bool:
    if name == "dataset" and was not in DATASETS and now not in DATASETS and was is not None and now is not None:
        return os.path.realpath(str(was)) == os.path.realpath(str(now))  # a file or folder, however written
    return was == now


def _contradictions(path, saved: dict, asked: dict) -> None:
    """FlagError listing every run-defining setting in ``asked`` that differs from ``saved``."""
    wrong = []
    for name in TrainConfig.RUN_DEFINING:
        if name not in asked:
            continue
        was = saved.get(name, TrainConfig.BEFORE_FLAG.get(name))
        if not _same(name, was, asked[name]):
            wrong.append(f"{flag_words(name, asked[name])} (the checkpoint: {flag_words(name, was)})")
    if wrong:
        many = len(wrong) > 1
        raise FlagError(f"{path}: {len(wrong)} setting{'s' * many} contradict{'s' * (not many)} the "
                        f"checkpoint's run: {'; '.join(wrong)}; leave {'them' if many else 'it'} out to continue "
                        "the run with the checkpoint's settings, or start a new run without --resume")


def resume_config(meta: dict, given: dict) -> TrainConfig:
    """The TrainConfig that continues the run of the checkpoint ``meta``: every setting
    from the checkpoint's config, except this run's own (RESUME_OWN: device, epochs, ...)
    and the fields in ``given`` (the flags given explicitly, at least "resume"). A given
    flag that contradicts a run-defining setting raises FlagError listing all of them;
    --lr, --momentum, --weight-decay, --label-smoothing, --augment, --limit-test,
    --checkpoint, --log-dir and --cache-dir may change."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"resume_config: unknown settings {', '.join(unknown)}; expected TrainConfig fields")
    saved = {k: v for k, v in meta["config"].items() if k in fields and k not in RESUME_OWN}
    saved.update({k: v for k, v in TrainConfig.BEFORE_FLAG.items() if k not in meta["config"]})
    _contradictions(given.get("resume"), saved, given)
    return TrainConfig(**{**saved, **given})


def check_resume(config: TrainConfig, meta: dict) -> None:
    """FlagError unless the checkpoint ``meta`` can continue as ``config`` asks: the same
    data, model and schedule (every difference named in one message), fewer epochs done
    than ``config.epochs``, and, for a schedule that changes the rate, no more epochs
    (and the same batches) than it was planned for: its length is fixed when the run starts."""
    saved = meta["config"]
    _contradictions(config.resume, saved, {name: getattr(config, name) for name in TrainConfig.RUN_DEFINING})
    done = meta["epoch"]
    if done >= config.epochs:
        raise FlagError(f"{config.resume} already holds {done} epoch{'s' * (done != 1)}; "
                        f"pass --epochs {done + 1} or more to continue")
    schedule = meta.get("schedule")
    if schedule is None or schedule["state"]["name"] == "constant":
        return
    planned, name = schedule["epochs"], schedule["state"]["name"]
    if config.epochs > planned:
        raise FlagError(f"--epochs {config.epochs}: the {name} schedule of {config.resume} was planned for "
                        f"{planned} epoch{'s' * (planned != 1)} and its length is fixed; resume with "
                        f"--epochs {planned}, or start a new run to train longer")
    if saved.get("batch_size") != config.batch_size:
        raise FlagError(f"--batch-size {config.batch_size}: the {name} schedule of {config.resume} counts "
                        f"batches of {saved.get('batch_size')}; resume with --batch-size {saved.get('batch_size')}")
