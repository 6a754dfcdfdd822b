"""Learning-rate schedules, stepped once per batch, as torch.optim.lr_scheduler:

    optimizer = Adam(model, lr=1e-3)                  # lr: the peak (base) learning rate
    schedule = make_schedule("cosine", optimizer, total_steps=epochs * batches, warmup_steps=500)
    for batch in ...:
        ...; optimizer.step(); schedule.step()        # sets optimizer.lr for the next batch

A schedule reads the optimizer's lr once, at construction, as its base (peak) rate, and
sets ``optimizer.lr`` to the rate of step 0 right away. Each rate is computed in closed
form from the step count, so ``state_dict()`` / ``load_state_dict()`` resume exactly.

Linear warm-up (constant, step, cosine): over the first ``warmup_steps`` batches the rate
rises linearly from ``warmup_start_factor * base`` (default 0, as Keras and Hugging Face
start) to ``base``, as torch's ``LinearLR(start_factor, total_iters=warmup_steps)``; the
schedule proper starts after it.
"""
from __future__ import annotations

import inspect
import math

import numpy as np

__all__ = ["Constant", "Cosine", "OneCycle", "SCHEDULES", "Schedule", "StepDecay", "make_schedule"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class Schedule:
    """Base class: a learning rate per batch, with optional linear warm-up.

    ``lr_at(step)`` is the rate of batch ``step`` (0-based); ``step()`` advances one batch
    and writes the new rate to ``optimizer.lr``; ``lr`` is the current rate.
    """

    name = ""
    OPTIONS: tuple[str, ...] = ()  # schedule-specific hyperparameters, saved in state_dict

    def __init__(self, optimizer, total_steps, warmup_steps=0, warmup_start_factor=0.0):
        me = type(self).__name__
        base_lr = getattr(optimizer, "lr", None)
        if not (_is_number(base_lr) and base_lr > 0):
            raise TypeError(
                f"{me} expected an optimizer with a positive lr attribute, got {type(optimizer).__name__} "
                f"with lr={base_lr!r}; pass a gpucnn.optim optimizer"
            )
        if not (_is_int(total_steps) and total_steps > 0):
            raise ValueError(
                f"{me} expected total_steps, a positive int, got {total_steps!r}; "
                "use epochs * batches per epoch"
            )
        if not (_is_int(warmup_steps) and 0 <= warmup_steps < total_steps):
            raise ValueError(
                f"{me} expected 0 <= warmup_steps < total_steps = {total_steps}, got {warmup_steps!r}; "
                "warm up for a few percent of the run, or 0 for none"
            )
        if not (_is_number(warmup_start_factor) and 0.0 <= warmup_start_factor <= 1.0):
            raise ValueError(
                f"{me} expected 0 <= warmup_start_factor <= 1, got {warmup_start_factor!r}; "
                "the warm-up starts at warmup_start_factor * lr"
            )
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.step_count = 0
        self._check_options()
        self.optimizer.lr = self.lr_at(0)

    def _check_options(self) -> None:
        """Validate the subclass's OPTIONS (set before this is called)."""

    def lr_at(self, step: int) -> float:
        """The learning rate of batch ``step`` (0-based), in closed form."""
        if step < self.warmup_steps:
            f = self.warmup_start_factor
            return self.base_lr * (f + (1.0 - f) * step / self.warmup_steps)
        return self._after_warmup(step - self.warmup_steps, self.total_steps - self.warmup_steps)

    def _after_warmup(self, step: int, steps: int) -> float:
        """The rate ``step`` batches after the warm-up, of ``steps`` such batches."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        """The current learning rate (the one the next optimizer.step() uses)."""
        return self.lr_at(self.step_count)

    def step(self) -> None:
        """Advance one batch: call after ``optimizer.step()``; sets ``optimizer.lr``."""
        self.step_count += 1
        self.optimizer.lr = self.lr_at(self.step_count)

    def state_dict(self) -> dict:
        """JSON-able: {"name", "step_count", "base_lr", "total_steps", "warmup_steps",
        "warmup_start_factor", and the schedule's own options}."""
        keys = ("base_lr", "total_steps", "warmup_steps", "warmup_start_factor", "step_count", *self.OPTIONS)
        return {"name": self.name, **{k: getattr(self, k) for k in keys}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (all of it, as torch does) and set optimizer.lr."""
        if state.get("name") != self.name:
            raise ValueError(
                f"schedule state was saved from {state.get('name')!r}, cannot load it into {self.name!r}; "
                "resume with the same --schedule"
            )
        keys = ("base_lr", "total_steps", "warmup_steps", "warmup_start_factor", "step_count", *self.OPTIONS)
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"schedule state for {self.name!r} lacks {missing}; is it from a gpucnn checkpoint?")
        for k in keys:
            setattr(self, k, state[k])
        self.optimizer.lr = self.lr_at(self.step_count)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.OPTIONS)
        return (f"{type(self).__name__}(total_steps={self.total_steps}, warmup_steps={self.warmup_steps}"
                f"{', ' + options if options else ''})")


class Constant(Schedule):
    """The base rate throughout (after the warm-up, if any)."""

    name = "constant"

    def _after_warmup(self, step, steps):
        return self.base_lr


class StepDecay(Schedule):
    """``base * gamma ** (step // step_size)`` after the warm-up, as torch's StepLR.
    Default ``step_size``: a third of the steps after the warm-up (rounded up), so the
    rate drops by ``gamma`` twice."""

    name = "step"
    OPTIONS = ("step_size", "gamma")

    def __init__(self, optimizer, total_steps, warmup_steps=0, step_size=None, gamma=0.1,
                 warmup_start_factor=0.0):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, total_steps, warmup_steps, warmup_start_factor)

    def _check_options(self):
        if self.step_size is None:
            self.step_size = max(1, math.ceil((self.total_steps - self.warmup_steps) / 3))
        if not (_is_int(self.step_size) and self.step_size > 0):
            raise ValueError(
                f"StepDecay expected step_size, a positive int (batches between decays), got {self.step_size!r}"
            )
        if not (_is_number(self.gamma) and 0 < self.gamma <= 1):
            raise ValueError(f"StepDecay expected 0 < gamma <= 1, got {self.gamma!r}; 0.1 is the usual choice")
        self.step_size, self.gamma = int(self.step_size), float(self.gamma)

    def _after_warmup(self, step, steps):
        return self.base_lr * self.gamma ** (step // self.step_size)


class Cosine(Schedule):
    """Cosine annealing from the base rate to ``eta_min`` over the steps after the warm-up,
    as torch's CosineAnnealingLR(T_max=total_steps - warmup_steps); holds ``eta_min``
    after ``total_steps`` (torch's would rise again)."""

    name = "cosine"
    OPTIONS = ("eta_min",)

    def __init__(self, optimizer, total_steps, warmup_steps=0, eta_min=0.0, warmup_start_factor=0.0):
        self.eta_min = eta_min
        super().__init__(optimizer, total_steps, warmup_steps, warmup_start_factor)

    def _check_options(self):
        if not (_is_number(self.eta_min) and 0 <= self.eta_min <= self.base_lr):
            raise ValueError(
                f"Cosine expected 0 <= eta_min <= lr = {self.base_lr}, got {self.eta_min!r}; "
                "eta_min is the final learning rate (0 by default)"
            )
        self.eta_min = float(self.eta_min)

    def _after_warmup(self, step, steps):
        progress = min(step, steps) / steps
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * progress)) / 2.0


class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin), as torch's OneCycleLR with its defaults and
    ``max_lr`` = the optimizer's lr: over the first ``pct_start`` of the steps the rate
    rises from ``max_lr / div_factor`` to ``max_lr`` along a half cosine, then falls to
    ``max_lr / div_factor / final_div_factor`` along another. The momentum (or Adam's
    beta1) is NOT cycled: torch's ``cycle_momentum=False``. The rise is its own warm-up:
    ``warmup_steps`` must be 0. Stepping past ``total_steps`` raises, as torch does.
    """

    name = "onecycle"
    OPTIONS = ("pct_start", "div_factor", "final_div_factor")

    def __init__(self, optimizer, total_steps, warmup_steps=0, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4):
        if warmup_steps != 0:
            raise ValueError(
                f"OneCycle expected warmup_steps=0, got {warmup_steps!r}: its first phase is the warm-up; "
                "set its length with pct_start (a fraction of total_steps) instead"
            )
        self.pct_start, self.div_factor, self.final_div_factor = pct_start, div_factor, final_div_factor
        super().__init__(optimizer, total_steps, 0)

    def _check_options(self):
        if not (_is_number(self.pct_start) and 0 < self.pct_start < 1):
            raise ValueError(f"OneCycle expected 0 < pct_start < 1, got {self.pct_start!r}; 0.3 is the default")
        for name in ("div_factor", "final_div_factor"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"OneCycle expected {name} > 0, got {getattr(self, name)!r}")
        if self.pct_start * self.total_steps <= 1:
            raise ValueError(
                f"OneCycle expected pct_start * total_steps > 1 so the rise has two or more steps, got "
                f"{self.pct_start} * {self.total_steps}; train for more batches or raise pct_start"
            )
        self.pct_start, self.div_factor = float(self.pct_start), float(self.div_factor)
        self.final_div_factor = float(self.final_div_factor)

    def step(self) -> None:
        if self.step_count + 1 > self.total_steps:
            raise ValueError(
                f"OneCycle was stepped {self.step_count + 1} times, more than its total_steps = "
                f"{self.total_steps}; build it with total_steps = epochs * batches per epoch"
            )
        super().step()

    def lr_at(self, step):
        # torch's phases: end_step is a float, the rise ends at step pct_start * total - 1
        initial = self.base_lr / self.div_factor
        final = initial / self.final_div_factor
        rise_end = self.pct_start * self.total_steps - 1.0
        if step <= rise_end:
            start, end, pct = initial, self.base_lr, step / rise_end
        else:
            start, end, pct = self.base_lr, final, (step - rise_end) / (self.total_steps - 1.0 - rise_end)
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


SCHEDULES = {cls.name: cls for cls in (Constant, StepDecay, Cosine, OneCycle)}


def make_schedule(name: str, optimizer, total_steps: int, warmup_steps: int = 0, **options) -> Schedule:
    """The schedule called ``name`` ("constant", "step", "cosine", "onecycle") bound to
    ``optimizer``, over ``total_steps`` batches (epochs * batches per epoch), with
    ``warmup_steps`` batches of linear warm-up; ``options`` go to its class (e.g.
    ``gamma=0.5`` for "step", ``eta_min`` for "cosine", ``pct_start`` for "onecycle")."""
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("optimizer", "total_steps", "warmup_steps")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"schedule {name!r} got unknown option(s) {unknown}; it accepts {', '.join(accepted) or 'none'}"
        )
    return cls(optimizer, total_steps, warmup_steps, **options)
