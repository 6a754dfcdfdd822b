"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules: ``from gpucnn.optim import Adam``."""
from .optimizers import SGD, Adam, AdamW, Optimizer
from .schedules import SCHEDULES, Constant, Cosine, OneCycle, Schedule, StepDecay, make_schedule

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Schedule", "Constant", "StepDecay", "Cosine", "OneCycle",
           "SCHEDULES", "make_schedule"]
