"""Resuming a run from its checkpoint: which settings a resume may change and which it
refuses, the config that continues the run, the check that the checkpoint can continue as
asked, and the settings a resume changed, in the flags' words.

The rule (``--help`` of scripts/train.py prints it from these lists): the settings that
define the data, the model and its schedule (TrainConfig.RUN_DEFINING) are refused;
RESUME_MAY_CHANGE may change, --epochs and --batch-size only as far as the checkpoint's
schedule allows.
"""
from __future__ import annotations

import dataclasses
import os

from .config import PATH_FIELDS, FlagError, TrainConfig, _built_in

__all__ = ["RESUME_MAY_CHANGE", "check_recorded_dataset", "check_resume", "flag_words", "resume_changes",
           "resume_config"]


# what a resumed run may change (every other setting but --resume is in RUN_DEFINING): the
# rate, the length and the batches of the training, its regularisation and outputs, where it
# runs. --epochs and --batch-size only as far as a step-based schedule allows (check_resume).
RESUME_MAY_CHANGE = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "label_smoothing", "augment",
                     "limit_test", "checkpoint", "log_dir", "data_dir", "cache_dir", "download", "device",
                     "distributed", "verbose", "patience", "save_best")
# this run's own settings when resuming: where and how it runs, not what it trains
RESUME_OWN = ("device", "epochs", "resume", "verbose", "distributed", "download")
NOT_A_CHANGE = ("resume", "verbose", "download")  # how this run starts and prints: never listed as changed
# how a setting reads when it is not given (None) or switched off (False)
UNSET_WORDS = {"limit_train": "all training images", "limit_test": "all test images",
               "channels": "as the images are", "image_size": "the most common size",
               "weight_decay": "the optimizer's default", "data_dir": "the default folder",
               "cache_dir": "the default cache folder", "checkpoint": "no checkpoint", "log_dir": "no log",
               "patience": "no early stopping"}
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


def _same_setting(name: str, was, now) -> bool:
    """``was == now``; for a file or folder, the same one however written."""
    if name in PATH_FIELDS and not _built_in(name, was) and not _built_in(name, now):
        return os.path.realpath(os.fspath(was)) == os.path.realpath(os.fspath(now))
    return was == now


def _same(name: str, was, now) -> bool:
    """Whether a resume keeps the run-defining setting ``name``."""
    if name == "dataset" and not _built_in(name, was) and not _built_in(name, now) and not os.path.exists(was):
        return True  # the recorded data moved or is gone: the path given stands in for it
    return _same_setting(name, was, now)


def check_recorded_dataset(dataset, action: str) -> None:
    """FlagError naming ``dataset`` (a checkpoint's recorded --dataset) when it is a file or
    folder that cannot be found from here; ``action``: what --dataset PATH would let the
    user do ("evaluate on a copy of it"). Checkpoints record an absolute path (TrainConfig.to_dict);
    older ones the path as given, relative to the folder they were trained in."""
    if _built_in("dataset", dataset) or os.path.exists(dataset):
        return
    kind = "file" if str(dataset).lower().endswith(".npz") else "folder"
    where = ("no longer exists" if os.path.isabs(dataset) else
             f"is not in {os.getcwd()} (recorded relative to the folder it was trained in)")
    raise FlagError(f"the checkpoint's dataset {kind} {dataset} {where}; pass --dataset PATH to {action}")


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
    RESUME_MAY_CHANGE may change (--epochs and --batch-size within the schedule:
    check_resume). A recorded dataset file or folder that is gone raises FlagError naming
    it, unless ``given`` has another "dataset"."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"resume_config: unknown settings {', '.join(unknown)}; expected TrainConfig fields")
    saved = {k: v for k, v in meta["config"].items() if k in fields and k not in RESUME_OWN}
    saved.update({k: v for k, v in TrainConfig.BEFORE_FLAG.items() if k not in meta["config"]})
    if "dataset" not in given:
        check_recorded_dataset(saved.get("dataset"), "resume on a copy of it")
    _contradictions(given.get("resume"), saved, given)
    return TrainConfig(**{**saved, **given})


def check_resume(config: TrainConfig, meta: dict) -> None:
    """FlagError unless the checkpoint ``meta`` can continue as ``config`` asks: the same
    data, model and schedule (every difference named in one message), fewer epochs done
    than ``config.epochs``, and, for a schedule that changes the rate, no more epochs
    (and the same batches) than it was planned for: its length is fixed when the run starts.
    A warm-up that has not ended counts batches too: the batch size stays until it ends."""
    saved = meta["config"]
    _contradictions(config.resume, saved, {name: getattr(config, name) for name in TrainConfig.RUN_DEFINING})
    done = meta["epoch"]
    if done >= config.epochs:
        raise FlagError(f"{config.resume} already holds {done} epoch{'s' * (done != 1)}; "
                        f"pass --epochs {done + 1} or more to continue")
    schedule = meta.get("schedule")
    if schedule is None:
        return
    state, planned = schedule["state"], schedule["epochs"]
    name, batch = state["name"], saved.get("batch_size")
    if name != "constant" and config.epochs > planned:
        raise FlagError(f"--epochs {config.epochs}: the {name} schedule of {config.resume} was planned for "
                        f"{planned} epoch{'s' * (planned != 1)} and its length is fixed; resume with "
                        f"--epochs {planned}, or start a new run to train longer")
    if batch == config.batch_size:
        return
    fix = f"resume with --batch-size {batch}, or start a new run with --batch-size {config.batch_size}"
    if name != "constant":
        raise FlagError(f"--batch-size {config.batch_size}: the {name} schedule of {config.resume} counts its "
                        f"{state['total_steps']} steps in batches of {batch}; another size changes the steps per "
                        f"epoch, so the schedule would no longer end with epoch {planned}; {fix}")
    if state.get("step_count", 0) < state.get("warmup_steps", 0):
        raise FlagError(f"--batch-size {config.batch_size}: the warm-up of {config.resume} counts its "
                        f"{state['warmup_steps']} steps in batches of {batch} and is at step {state['step_count']}; "
                        f"another size would stretch or shorten it; {fix} (after the warm-up it may change)")


def _value_words(name: str, value) -> str:
    """A setting's value as a resume line shows it: "0.1", "on", "(all test images)"."""
    if value is None:
        return f"({UNSET_WORDS.get(name, 'unset')})"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def resume_changes(config: TrainConfig, meta: dict) -> list[str]:
    """Every setting of ``config`` that differs from the run of the checkpoint ``meta``, in
    the flags' words: ["--lr 0.001 -> 0.1", "--epochs 3 -> 13"] (a file or folder however
    written; nothing for --resume, --verbose, --download, nor for a setting the checkpoint
    predates)."""
    saved, changes = meta["config"], []
    for name, now in config.to_dict().items():
        if name in NOT_A_CHANGE or (name not in saved and name not in TrainConfig.BEFORE_FLAG):
            continue
        was = saved.get(name, TrainConfig.BEFORE_FLAG.get(name))
        if not _same_setting(name, was, now):
            changes.append(f"--{name.replace('_', '-')} {_value_words(name, was)} -> {_value_words(name, now)}")
    return changes
