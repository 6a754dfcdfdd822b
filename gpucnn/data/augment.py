"""Batch augmentation on the backend's arrays: random translation and horizontal flip.

    augment = parse_augment("shift:4,flip")   # or Augment(shift=4, flip=True)
    xb = augment(xb, rng)                     # (N, C, H, W) -> new (N, C, H, W), same dtype

Everything runs on the device, vectorized over the batch: per-image offsets and flips
are drawn there by a generator that one draw from the host generator ``rng`` seeds
(gpucnn.random.device_generator), so nothing is uploaded per batch, and a run that
restores ``rng``'s state reproduces the same augmentations. The translation and the
flip are one integer gather.
"""
from __future__ import annotations

import numpy as np

from ..backends.backend import array_module
from ..random import device_generator

__all__ = ["Augment", "crop_and_flip", "parse_augment"]

ACCEPTED = "shift:K (random translation by up to K pixels, K a positive int), flip (random horizontal flip), none"


def crop_and_flip(x, pad, top, left, flip=None):
    """x (N, C, H, W) -> new (N, C, H, W): image n zero-padded by ``pad`` pixels on every
    side, cropped back to H x W with its top-left corner at (top[n], left[n]), each in
    [0, 2 * pad], then mirrored left-right where flip[n] is true.

    ``top``, ``left`` (N,) integer and ``flip`` (N,) bool (or None) are arrays on x's
    device. The crop at (pad, pad) is the image itself; (pad - dy, pad - dx) moves its
    content dy pixels down and dx right.
    """
    xp = array_module(x)
    n, c, h, w = x.shape
    if pad:
        x = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # (N, C, H + 2 pad, W + 2 pad)
    columns = xp.arange(w)  # (W,)
    if flip is not None:
        columns = xp.where(flip[:, None], w - 1 - columns, columns)  # (N, W): mirrored rows read right to left
    rows = top[:, None] + xp.arange(h)  # (N, H)
    columns = left[:, None] + columns  # (N, W)
    images = xp.arange(n)[:, None, None, None]  # (N, 1, 1, 1)
    channels = xp.arange(c)[None, :, None, None]  # (1, C, 1, 1)
    return x[images, channels, rows[:, None, :, None], columns[:, None, None, :]]  # (N, C, H, W)


class Augment:
    """Random translation by up to ``shift`` pixels (zero padding, then a per-image random
    crop, as torchvision's RandomCrop(padding=shift)) and, when ``flip``, a horizontal
    flip of each image with probability 0.5.

    ``augment(x (N, C, H, W), rng=None) -> new (N, C, H, W)``, same dtype and device; x
    is never modified. ``rng``: the host numpy Generator that seeds each batch's draws
    (gpucnn's default generator when None).
    """

    def __init__(self, shift: int = 0, flip: bool = False):
        if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or shift < 0:
            raise ValueError(f"Augment expected shift, a non-negative int (pixels), got {shift!r}; try shift=2")
        if not isinstance(flip, (bool, np.bool_)):
            raise TypeError(f"Augment expected flip True or False, got {flip!r}")
        self.shift = int(shift)
        self.flip = bool(flip)

    @property
    def spec(self) -> str:
        """The spec string parse_augment reads back: "shift:4,flip", "flip", "none"."""
        parts = ([f"shift:{self.shift}"] if self.shift else []) + (["flip"] if self.flip else [])
        return ",".join(parts) or "none"

    def __repr__(self) -> str:
        return f"Augment(shift={self.shift}, flip={self.flip})"

    def __bool__(self) -> bool:
        return bool(self.shift or self.flip)

    def __call__(self, x, rng=None):
        """x (N, C, H, W) -> augmented copy (N, C, H, W)."""
        if not hasattr(x, "ndim") or x.ndim != 4:
            got = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(
                f"{self!r} expected images of shape (N, C, H, W), got {got}; add a channel axis with x[:, None]"
            )
        n, _, h, w = x.shape
        if self.shift >= min(h, w):
            raise ValueError(
                f"{self!r} expected a shift smaller than the images ({h} x {w}), got shift:{self.shift}; "
                "a few pixels (2 to 4) is the usual choice"
            )
        if not self:
            return x.copy()
        xp = array_module(x)
        gen = device_generator(xp, rng)
        if self.shift:
            top = gen.integers(0, 2 * self.shift + 1, size=n)  # (N,) on the device
            left = gen.integers(0, 2 * self.shift + 1, size=n)  # (N,)
        else:
            top = left = xp.zeros(n, dtype=np.int64)  # (N,)
        flip = gen.random(n) < 0.5 if self.flip else None  # (N,) bool
        return crop_and_flip(x, self.shift, top, left, flip)


def parse_augment(spec: str) -> Augment:
    """"shift:4,flip" -> Augment(shift=4, flip=True); "none" or "" -> no augmentation."""
    if not isinstance(spec, str):
        raise TypeError(f"parse_augment expected a string like 'shift:2,flip', got {type(spec).__name__}")
    shift, flip, seen = 0, False, set()
    for part in (p.strip().lower() for p in spec.split(",")):
        name, _, value = part.partition(":")
        if name in seen:
            raise ValueError(f"augmentation spec {spec!r} names {name!r} twice; give each at most once")
        seen.add(name)
        if name == "shift":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(
                    f"augmentation spec {spec!r}: expected shift:K with K a positive int, got {part!r}; e.g. shift:2"
                )
            shift = int(value)
        elif part == "flip":
            flip = True
        elif part in ("none", "") and spec.strip().lower() == part:
            pass
        else:
            raise ValueError(f"augmentation spec {spec!r}: unknown part {part!r}; accepted: {ACCEPTED}")
    return Augment(shift=shift, flip=flip)
