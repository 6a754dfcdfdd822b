"""Softmax cross-entropy, fused and numerically stable (log-sum-exp)."""
from __future__ import annotations

import numpy as np

from .backend import array_module


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer class labels,
    optionally against labels smoothed as torch's ``F.cross_entropy(label_smoothing=e)``:
    the target is ``(1 - e) * onehot(labels) + e / classes``.

    ``forward(logits (N, classes), labels (N,)) -> loss``, a 0-d array on the
    logits' device (not a Python float: converting would sync the GPU).
    ``backward() -> dlogits (N, classes) = (softmax(logits) - target) / N``.

    Labels held on the host (numpy) are range-checked here. Labels already on
    a GPU are not (checking would sync the device every batch, and CuPy wraps
    out-of-range indices silently): gpucnn.data validates labels on the host
    before they are uploaded.
    """

    def __init__(self, label_smoothing=0.0):
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.integer, np.floating)) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"SoftmaxCrossEntropy expected 0 <= label_smoothing <= 1, got {label_smoothing!r}; "
                "0.1 is the usual choice, 0 turns it off"
            )
        self.label_smoothing = float(label_smoothing)
        self._cache = None

    def __repr__(self):
        if self.label_smoothing:
            return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"
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
        nll = -log_probs_true.mean()
        if not self.label_smoothing:
            return nll
        # uniform part: mean over samples and classes of -log p = mean(lse) - mean(shifted)
        t, e = logits.dtype.type, self.label_smoothing
        uniform = log_sum_exp.mean() - shifted.mean()
        return t(1.0 - e) * nll + t(e) * uniform

    def backward(self):
        """-> dlogits (N, classes), the gradient of the mean loss."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward() called before forward(logits, labels)")
        shifted, log_sum_exp, labels = self._cache
        xp = array_module(shifted)
        n = shifted.shape[0]
        t, e = shifted.dtype.type, self.label_smoothing
        dlogits = xp.exp(shifted - log_sum_exp[:, None])  # softmax, (N, classes)
        if e:
            dlogits -= t(e / shifted.shape[1])  # the uniform part of the target
        dlogits[xp.arange(n), labels] -= t(1.0 - e)  # one index per row: no duplicates
        dlogits *= t(1.0 / n)
        return dlogits

    def __call__(self, logits, labels):
        """``loss_fn(logits, labels)``, as torch's losses are called: :meth:`forward`."""
        return self.forward(logits, labels)
