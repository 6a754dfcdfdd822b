"""Softmax cross-entropy, fused and numerically stable (log-sum-exp).

The math, and why the gradient is (p - y) / N: docs/math.md, "Softmax cross-entropy".
"""
from __future__ import annotations

import numpy as np

from ..backends import kernels
from ..backends.backend import array_module
from ..backends.kernels.loss import softmax_ce_fused


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer class labels,
    optionally against labels smoothed as torch's ``F.cross_entropy(label_smoothing=e)``:
    the target is ``(1 - e) * onehot(labels) + e / classes``.

    ``forward(logits (N, classes), labels (N,)) -> loss``, a 0-d array on the
    logits' device (not a Python float: converting would sync the GPU).
    ``backward() -> dlogits (N, classes) = (softmax(logits) - target) / N``.

    Labels held on the host (numpy) are range-checked here. Labels already on
    a GPU are not (checking would sync the device every batch, and CuPy wraps
    out-of-range indices silently): gpucnn.data.batches validates labels on the host
    before they are uploaded.

    With the ``softmax_ce`` fused-kernel group active (gpucnn.backends.kernels) and float32
    logits, forward is one launch that also computes the gradient, and backward
    returns it without a launch; a training loop can have the same launch write the
    loss into its per-batch array and add the correct count (``loss_out=``,
    ``correct_out=``). Otherwise the generic path runs, as on the CPU.
    """

    def __init__(self, label_smoothing=0.0):
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.integer, np.floating)) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"SoftmaxCrossEntropy expected 0 <= label_smoothing <= 1, got {label_smoothing!r}; "
                "0.1 is the usual choice, 0 turns it off"
            )
        self.label_smoothing = float(label_smoothing)
        self._cache = None  # generic path: (shifted, log_sum_exp, labels)
        self._dlogits = None  # fused path: the gradient the kernel wrote

    def __repr__(self):
        if self.label_smoothing:
            return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"
        return "SoftmaxCrossEntropy()"

    def forward(self, logits, labels, *, loss_out=None, correct_out=None):
        """logits (N, classes), labels (N,) ints in [0, classes) -> mean loss, 0-d array.

        For a training loop's bookkeeping (keyword-only, both optional, on the logits'
        device): ``loss_out``, a float array of one element (``batch_losses[b:b+1]``),
        receives the loss and is returned in place of a new 0-d array; ``correct_out``, an
        integer array of one element, gets the number of rows whose argmax (the first
        maximum, as ``argmax``) equals the label added to it. With the ``softmax_ce`` group
        active (and loss_out float32, correct_out int64, both C-contiguous) this is all the
        forward pass's single launch; otherwise one copy and argmax, ==, sum, += as before.
        """
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
        _check_outputs(loss_out, correct_out)
        xp = array_module(logits)
        if self._fusable(logits, labels, xp, loss_out, correct_out):
            if not logits.flags.c_contiguous:
                logits = xp.ascontiguousarray(logits)  # (N, classes) the kernel reads rows
            if labels.dtype != np.int64 or not labels.flags.c_contiguous:
                labels = labels.astype(np.int64, order="C")  # (N,)
            self._cache = None
            self._dlogits, loss = softmax_ce_fused(logits, labels, self.label_smoothing, loss_out, correct_out)
            return loss
        loss = self._generic_forward(logits, labels, xp)
        if loss_out is not None:
            loss_out[...] = loss
            loss = loss_out
        if correct_out is not None:
            correct_out += (logits.argmax(axis=1) == labels).sum()
        return loss

    def _fusable(self, logits, labels, xp, loss_out, correct_out) -> bool:
        """Whether the one-launch kernel (gpucnn.backends.kernels.loss) takes this call."""
        if not kernels.active("softmax_ce", xp) or logits.dtype != np.float32 or 0 in logits.shape:
            return False
        if array_module(labels) is not xp:
            return False
        if loss_out is not None and (loss_out.dtype != np.float32 or not loss_out.flags.c_contiguous):
            return False
        return correct_out is None or (correct_out.dtype == np.int64 and correct_out.flags.c_contiguous)

    def _generic_forward(self, logits, labels, xp):
        """The loss from CuPy's / NumPy's own calls; caches what backward needs."""
        n = logits.shape[0]
        self._dlogits = None
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
        """-> dlogits (N, classes), the gradient of the mean loss. After a fused forward it
        is the array the kernel wrote (no launch; the same array on every call)."""
        if self._dlogits is not None:
            return self._dlogits
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


def _check_outputs(loss_out, correct_out) -> None:
    """forward's loss_out / correct_out: arrays of one element, float / integer."""
    for name, out, kind, what, fix in (
            ("loss_out", loss_out, "f", "float", "a one-element slice such as batch_losses[b:b+1]"),
            ("correct_out", correct_out, "iu", "integer", "a counter such as xp.zeros((), dtype=numpy.int64)")):
        if out is None:
            continue
        if not hasattr(out, "dtype") or out.size != 1 or np.dtype(out.dtype).kind not in kind:
            got = f"{out.dtype} of shape {tuple(out.shape)}" if hasattr(out, "dtype") else type(out).__name__
            raise ValueError(f"SoftmaxCrossEntropy.forward expected {name} to be a {what} array of one "
                             f"element, got {got}; pass {fix}")
