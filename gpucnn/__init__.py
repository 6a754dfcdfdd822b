"""gpucnn: a small, readable CNN trainer on NumPy (CPU) or CuPy (CUDA GPU)."""
from .backends.backend import get_backend
from .training.callbacks import Callback, EarlyStopping
from .nn.layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                        GlobalAvgPool2D, MaxPool2D, Normalize, ReLU)
from .nn.losses import SoftmaxCrossEntropy
from .nn.model import Sequential, load
from .optim import SGD, Adam, AdamW
from .backends.cpu_threads import get_num_threads, set_num_threads
from .random import default_generator, manual_seed

__version__ = "0.1.0"
__all__ = [
    "get_backend", "Conv2D", "ReLU", "MaxPool2D", "AvgPool2D", "Flatten", "Dense",
    "SoftmaxCrossEntropy", "Sequential", "load", "SGD", "Adam", "AdamW", "manual_seed", "default_generator",
    "BatchNorm2D", "BatchNorm1D", "Dropout", "GlobalAvgPool2D", "Normalize", "set_num_threads", "get_num_threads",
    "Callback", "EarlyStopping",
]
