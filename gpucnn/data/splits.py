"""Which images train, validate and test a run: the --limit-train subset, the stratified
--val-fraction hold-out and the --limit-test subset, as index arrays.

Sizes are checked on the labels alone, before any model is built: a combination that
leaves a split or a class empty raises SplitError naming the flag and the smallest
(or largest) value that works, computed with scikit-learn's own rounding
(``train_test_split``: n_test = ceil(test_size * n); a stratified split needs at least
one sample per class on each side and two per class in all).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .batches import limit, stratified_split


class SplitError(ValueError):
    """A --limit-train / --val-fraction / --limit-test value leaves a split or a class empty."""


@dataclass
class Splits:
    """Indices into the dataset's training images (train, val) and test images (test;
    None: all of them)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None


def data_generator(seed: int) -> np.random.Generator:
    """The generator that draws a run's subsets, split and batch order from ``seed``
    (independent of the one that draws the weights)."""
    return np.random.default_rng([seed, 1])


def _splittable(n, fraction, classes):
    n_val = np.ceil(fraction * n)  # sklearn's rounding: n_test = ceil(test_size * n_samples)
    return (n_val >= classes) & (n - n_val >= classes)


def smallest_splittable(fraction: float, classes: int, available: int) -> int | None:
    """The smallest n <= available whose stratified split at ``fraction`` keeps ``classes``
    samples on each side (None when even ``available`` is too few)."""
    n = np.arange(1, available + 1)
    ok = _splittable(n, fraction, classes)
    return int(n[ok][0]) if ok.any() else None


def _fraction_bound(n: int, classes: int, smallest: bool) -> float | None:
    """The smallest (or largest) fraction that splits n samples, to two significant digits
    of its distance from 0 (or 1), rounded the safe way."""
    distance = (max(classes - 1, 1) if smallest else classes) / n  # the exact bound is this far from 0 or 1
    decimals = min(6, max(2, 1 - math.floor(math.log10(distance))))
    fractions = np.arange(1, 10**decimals) / 10**decimals
    ok = _splittable(n, fractions, classes)
    if not ok.any():
        return None
    return float(fractions[ok][0] if smallest else fractions[ok][-1])


def check_split_sizes(n_train: int, limit_train: int | None, val_fraction: float, classes: int) -> None:
    """SplitError unless ``limit_train`` (None: all ``n_train``) images split at
    ``val_fraction`` leave ``classes`` images on each side."""
    n = n_train if limit_train is None else min(limit_train, n_train)
    n_val = math.ceil(val_fraction * n)
    if n_val >= classes and n - n_val >= classes:
        return
    sizes = (f"leaves {n - n_val} training and {n_val} validation images for {classes} classes "
             f"(a stratified split needs {classes} on each side)")
    smallest = smallest_splittable(val_fraction, classes, n_train)
    if limit_train is not None and smallest is not None:
        raise SplitError(f"--limit-train {limit_train} with --val-fraction {val_fraction} {sizes}; "
                         f"pass --limit-train {smallest} or more")
    bound = _fraction_bound(n, classes, smallest=n_val < classes)
    if bound is None:
        raise SplitError(f"{n} training images cannot be split for {classes} classes at any "
                         f"--val-fraction; use more images (at least {2 * classes})")
    raise SplitError(f"--val-fraction {val_fraction} on {n} images {sizes}; pass --val-fraction {bound} "
                     + ("or more" if n_val < classes else "or less"))


def plan_splits(train_y: np.ndarray, test_y: np.ndarray, limit_train: int | None, val_fraction: float,
                limit_test: int | None, rng: np.random.Generator, val_given: bool = False) -> Splits:
    """Index arrays for the train / validation / test images, drawn from ``rng`` (labels only:
    the same draws on any copy of the data give the same images). Raises SplitError first.
    ``val_given``: the data brings its own validation images (an image folder's val/):
    nothing is held out of the training images (``val`` is empty, ``val_fraction`` unused)."""
    present = np.unique(train_y)
    if not val_given:
        check_split_sizes(len(train_y), limit_train, val_fraction, len(present))
    test_classes = _check_limit_test(test_y, limit_test)

    subset, subset_y = limit(np.arange(len(train_y)), train_y, limit_train, rng)  # (n,) indices
    if val_given:
        return Splits(subset, np.zeros(0, dtype=np.int64), _test_subset(test_y, limit_test, test_classes, rng))
    counts = (subset_y[:, None] == present).sum(axis=0)  # (classes,) images per class
    if counts.min() < 2:
        flag = f"--limit-train {limit_train}" if limit_train is not None else "the training set"
        raise SplitError(f"{flag} leaves {counts.min()} image(s) of class {present[counts.argmin()]}; "
                         "a stratified validation split needs 2 of each class"
                         + ("; pass a larger --limit-train" if limit_train is not None else ""))
    train, _, val, _ = stratified_split(subset, subset_y, val_fraction, rng)
    return Splits(train, val, _test_subset(test_y, limit_test, test_classes, rng))


def plan_test_subset(test_y: np.ndarray, limit_test: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """The --limit-test subset alone (None: every test image), for a model whose training
    run's draws are unknown (a model file, another dataset). Raises SplitError as
    :func:`plan_splits` does; the training images' split is not checked."""
    return _test_subset(test_y, limit_test, _check_limit_test(test_y, limit_test), rng)


def _check_limit_test(test_y, limit_test) -> np.ndarray:
    """The test images' classes; SplitError when --limit-test cannot hold one of each."""
    test_classes = np.unique(test_y)
    if limit_test is not None and limit_test < min(len(test_classes), len(test_y)):
        raise SplitError(f"--limit-test {limit_test} cannot hold one image of each of the "
                         f"{len(test_classes)} classes; pass --limit-test {len(test_classes)} or more")
    return test_classes


def _test_subset(test_y, limit_test, test_classes, rng) -> np.ndarray | None:
    """The --limit-test subset's indices (None: every test image)."""
    if limit_test is None or limit_test >= len(test_y):
        return None
    test, kept_y = limit(np.arange(len(test_y)), test_y, limit_test, rng)
    if len(np.unique(kept_y)) < len(test_classes):
        raise SplitError(f"--limit-test {limit_test} leaves some class out of the test images; "
                         "pass a larger --limit-test")
    return test
