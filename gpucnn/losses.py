"""Softmax cross-entropy, fused and numerically stable (log-sum-exp)."""
from __future__ import annotations

import numpy as np

from .backend import array_module


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer class labels.

    ``forward(logits (N, classes), labels (N,)) -> loss``, a 0-d array on the
    logits' device (not a Python float: converting would sync the GPU).
    ``backward() -> dlogits (N, classes) = (softmax(logits) - onehot(labels)) / N``.

    Labels held on the host (numpy) are range-checked here. Labels already on
    a GPU are not (checking would sync the device every batch, and CuPy wraps
    out-of-range indices silently): gpucnn.data validates labels on the host
    before they are uploaded.
    """

    def __init__(self):
        self._cache = None

    def __repr__(self):
        return "SoftmaxCrossEntropy()"

    def forward(self, logits, labels):
        """logits (N, classes), labels (N,) ints in [0, classes) -> mean loss, 0-d array."""
        if not hasattr(logits, "ndim") or logits.ndim != 2:
            got = tuple(logits.shape) if hasattr(logits, "shape") else type(logits).__name__
            raise ValueError(
                f"SoftmaxCrossEntropy expected logits of shape (N, classes), got {got}; "
                "put a Flatten() and a Dense() before the loss"
            )
        if np.dtype(logits.dtype).kind != "f":
            raise TypeError(f"SoftmaxCrossEntropy expected float logits, got {logits.dtype}")
        n, classes = logits.shape
        if not hasattr(labels, "shape") or tuple(labels.shape) != (n,):
            got = tuple(labels.shape) if hasattr(labels, "shape") else type(labels).__name__
            raise ValueError(
                f"SoftmaxCrossEntropy expected labels of shape ({n},) to match logits {tuple(logits.shape)}, "
                f"got {got}; pass one integer class index per sample (not one-hot)"
            )
        if np.dtype(labels.dtype).kind not in "iu":
            raise TypeError(
                f"SoftmaxCrossEntropy expected integer labels, got {labels.dtype}; "
                "cast with labels.astype(numpy.int64)"
            )
        if isinstance(labels, np.ndarray) and n and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(
                f"SoftmaxCrossEntropy expected labels in [0, {classes}), got values in "
                f"[{labels.min()}, {labels.max()}]; the last Dense layer needs one output per class"
            )
        xp = array_module(logits)
        rows = xp.arange(n)
        shifted = logits - logits.max(axis=1, keepdims=True)  # (N, classes), max 0 per row
        log_sum_exp = xp.log(xp.exp(shifted).sum(axis=1))  # (N,)
        log_probs_true = shifted[rows, labels] - log_sum_exp  # (N,)
        self._cache = (shifted, log_sum_exp, labels)
        return -log_probs_true.mean()

    def backward(self):
        """-> dlogits (N, classes), the gradient of the mean loss."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward() called before forward(logits, labels)")
        shifted, log_sum_exp, labels = self._cache
        xp = array_module(shifted)
        n = shifted.shape[0]
        dlogits = xp.exp(shifted - log_sum_exp[:, None])  # softmax, (N, classes)
        dlogits[xp.arange(n), labels] -= 1  # one index per row: no duplicates
        dlogits *= dlogits.dtype.type(1.0 / n)
        return dlogits

    def __call__(self, logits, labels):
        """``loss_fn(logits, labels)``, as torch's losses are called: :meth:`forward`."""
        return self.forward(logits, labels)
