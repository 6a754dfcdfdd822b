"""The layers of gpucnn. All arrays are NCHW and all math runs on the array
module of the input (numpy on the CPU, cupy on a GPU).

Notation used in every docstring and shape comment:

    N        batch size                 C, C_in   input channels
    C_out    output channels (kernels)   H, W      input height, width
    kh, kw   kernel height, width        OH, OW    output height, width
    Hp, Wp   padded height, width        K         kh * kw (window size)

Each layer: ``forward(x)`` caches what ``backward(dy)`` needs; ``backward``
fills ``grads`` (same keys as ``params``: "weight", "bias") and returns dL/dx.
Every layer's forward and backward math, derived, with worked examples: docs/math.md.
"""
from .activations import ReLU
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .normalization import BatchNorm1D, BatchNorm2D, Normalize
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = ["Layer", "Conv2D", "ReLU", "MaxPool2D", "AvgPool2D", "Flatten", "Dense", "BatchNorm2D",
           "BatchNorm1D", "Dropout", "GlobalAvgPool2D", "Normalize", "LAYER_TYPES"]

# name -> class, for rebuilding a saved architecture (gpucnn.nn.model.load).
LAYER_TYPES = {cls.__name__: cls for cls in (Conv2D, ReLU, MaxPool2D, AvgPool2D, Flatten, Dense,
                                              BatchNorm2D, BatchNorm1D, Dropout, GlobalAvgPool2D,
                                              Normalize)}
