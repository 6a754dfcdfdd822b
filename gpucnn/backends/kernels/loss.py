"""Softmax cross-entropy in one launch (kernel ``loss.softmax_ce``), and its NumPy twin.

One launch gives the mean loss, the gradient (softmax - target) / N and, optionally,
adds the number of rows whose first-maximum argmax equals the label to a counter:
what the generic path does in ~15-20 CuPy calls per training batch.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .runtime import launch

MAX_THREADS = 1024  # the kernel's shared-memory reduction holds one value per thread, at most this many


def softmax_ce(logits, labels, dlogits, loss, correct, n, classes, keep, smoothing, spread, inv_n,
               count_correct):
    """Twin of ``loss.softmax_ce`` (the formula is in cuda/loss.cu): writes dlogits (n, classes),
    loss[0] = the mean loss and, if count_correct, adds the first-argmax hits to correct[0].

    Float32 throughout, as the kernel: the class sums and the row sum are float32 (NumPy
    adds them pairwise, the kernel in order: they agree within a float32 rounding bound);
    argmax is NumPy's (first maximum), as the kernel's strict ``>`` scan. A label outside
    [0, classes) makes its row's loss NaN and subtracts no target from its gradient row."""
    z = logits.reshape(-1)[:n * classes].reshape(n, classes)  # (n, classes)
    y = labels.reshape(-1)[:n]  # (n,)
    rows = np.arange(n)
    valid = (y >= 0) & (y < classes)  # (n,)
    safe = np.where(valid, y, 0)  # (n,) in range: reads nothing outside the row
    m = z.max(axis=1, keepdims=True)  # (n, 1)
    shifted = z - m  # (n, classes) float32, max 0 per row
    lse = np.log(np.exp(shifted).sum(axis=1, dtype=np.float32))  # (n,) float32
    row = lse - shifted[rows, safe]  # (n,) the plain cross-entropy of each row
    if smoothing != 0:
        mean_shifted = shifted.sum(axis=1, dtype=np.float32) / np.float32(classes)  # (n,)
        row = keep * row + smoothing * (lse - mean_shifted)
    row = np.where(valid, row, np.float32(np.nan))  # (n,) float32
    loss.reshape(-1)[0] = row.sum(dtype=np.float32) / np.float32(n)
    grad = np.exp(shifted - lse[:, None])  # (n, classes) softmax
    if smoothing != 0:
        grad -= spread
    grad[rows[valid], y[valid]] -= keep  # one index per row: no duplicates
    grad *= inv_n
    dlogits.reshape(-1)[:n * classes] = grad.reshape(-1)  # (n * classes,)
    if count_correct:
        correct.reshape(-1)[0] += np.count_nonzero(valid & (z.argmax(axis=1) == y))


def block_size(n: int) -> int:
    """Threads of the one block for n rows: a warp multiple, one row a thread up to 1024."""
    return int(min(MAX_THREADS, max(32, -(-int(n) // 32) * 32)))


def softmax_ce_fused(logits, labels, label_smoothing=0.0, loss_out=None, correct_out=None):
    """logits (N, classes) C-contiguous float32, labels (N,) int64, N >= 1, classes >= 1, on one
    device -> (dlogits (N, classes) float32, loss), one launch. ``loss`` is ``loss_out`` (a
    C-contiguous float32 array of one element, written) or a new 0-d float32 array;
    ``correct_out`` (a C-contiguous int64 array of one element), when given, gets the number
    of rows whose first-maximum argmax equals the label added to it."""
    xp = array_module(logits)
    n, classes = logits.shape
    e = float(label_smoothing)
    dlogits = xp.empty((n, classes), dtype=np.float32)  # (N, classes)
    loss = xp.empty((), dtype=np.float32) if loss_out is None else loss_out
    # nothing to count: a one-element scratch counter the kernel does not touch
    counter = xp.empty(1, dtype=np.int64) if correct_out is None else correct_out
    args = (logits, labels, dlogits, loss, counter, np.int32(n), np.int32(classes),
            np.float32(1.0 - e), np.float32(e), np.float32(e / classes), np.float32(1.0 / n),
            np.int32(correct_out is not None))
    launch("loss.softmax_ce", (1,), (block_size(n),), args)
    return dlogits, loss
