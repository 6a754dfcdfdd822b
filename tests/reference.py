"""Naive-loop reference implementations: slow, obvious, written straight from the
course's formulas (seed 004, eq. 1 and 2), for the library to be checked against.
They live in tests/ on purpose: the library itself has no per-pixel loops."""
from __future__ import annotations

import numpy as np


def conv2d(x, w, b, stride=1, pads=(0, 0, 0, 0)):
    """x (N, C, H, W), w (F, C, kh, kw), b (F,) -> (N, F, OH, OW); pads (top, bottom, left, right)."""
    top, bottom, left, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, f, oh, ow), dtype=np.float64)
    for s in range(n):
        for o in range(f):
            for i in range(oh):
                for j in range(ow):
                    patch = x[s, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    y[s, o, i, j] = np.sum(patch * w[o]) + b[o]
    return y


def conv2d_backward(x, w, dy, stride=1, pads=(0, 0, 0, 0)):
    """Gradients (dx, dw, db) of conv2d by scattering each output's upstream gradient."""
    top, bottom, left, right = pads
    xp_ = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    dxp = np.zeros_like(xp_, dtype=np.float64)
    dw = np.zeros_like(w, dtype=np.float64)
    n, f, oh, ow = dy.shape
    kh, kw = w.shape[2:]
    for s in range(n):
        for o in range(f):
            for i in range(oh):
                for j in range(ow):
                    rows = slice(i * stride, i * stride + kh)
                    cols = slice(j * stride, j * stride + kw)
                    dw[o] += dy[s, o, i, j] * xp_[s, :, rows, cols]
                    dxp[s, :, rows, cols] += dy[s, o, i, j] * w[o]
    h, wd = x.shape[2:]
    return dxp[:, :, top:top + h, left:left + wd], dw, dy.sum(axis=(0, 2, 3))


def pool2d(x, k, stride, mode, padding=0):
    """Max (first maximum wins) or average pooling; returns (y, argmax positions or None)."""
    pad_value = -np.inf if mode == "max" else 0.0
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=pad_value)
    n, c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    y = np.zeros((n, c, oh, ow))
    where = np.zeros((n, c, oh, ow, 2), dtype=int)
    for s in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    win = x[s, ch, i * stride:i * stride + k, j * stride:j * stride + k]
                    if mode == "max":
                        flat = int(np.argmax(win))  # first maximum, row-major
                        y[s, ch, i, j] = win.flat[flat]
                        where[s, ch, i, j] = (i * stride + flat // k, j * stride + flat % k)
                    else:
                        y[s, ch, i, j] = win.mean()
    return y, where


def pool2d_backward(x_shape, dy, k, stride, mode, where, padding=0):
    n, c, h, w = x_shape
    dxp = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    for s in range(n):
        for ch in range(c):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    if mode == "max":
                        r, q = where[s, ch, i, j]
                        dxp[s, ch, r, q] += dy[s, ch, i, j]
                    else:
                        dxp[s, ch, i * stride:i * stride + k, j * stride:j * stride + k] += dy[s, ch, i, j] / (k * k)
    return dxp[:, :, padding:padding + h, padding:padding + w]


def softmax_cross_entropy(logits, labels):
    """Mean loss and its gradient, one sample at a time."""
    n = logits.shape[0]
    loss, grad = 0.0, np.zeros_like(logits, dtype=np.float64)
    for s in range(n):
        z = logits[s] - logits[s].max()
        p = np.exp(z) / np.exp(z).sum()
        loss -= np.log(p[labels[s]])
        p[labels[s]] -= 1
        grad[s] = p / n
    return loss / n, grad
