"""Naive-loop reference implementations: slow, obvious, written straight from the
course's formulas (docs/math.md, "Convolution" and "Pooling"), for the library to be
checked against. They live in tests/ on purpose: the library itself has no per-pixel loops."""
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


# -- the toolkit layers (issue 10) ------------------------------------------------------------
def _channel_values(x):
    """x (N, C, ...) -> for each channel c, the list of (index, value) of its N*H*W entries."""
    per_channel = [[] for _ in range(x.shape[1])]
    for index in np.ndindex(*x.shape):
        per_channel[index[1]].append((index, float(x[index])))
    return per_channel


def batchnorm_forward(x, weight, bias, eps, mean=None, var=None):
    """Batch norm of x (N, C, ...) one value at a time; batch statistics (biased variance)
    unless mean and var are given. Returns (y, batch mean, batch biased variance)."""
    y = np.zeros(x.shape)
    means, variances = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c, entries in enumerate(_channel_values(x)):
        m = sum(v for _, v in entries) / len(entries)
        s = sum((v - m) ** 2 for _, v in entries) / len(entries)
        means[c], variances[c] = m, s
        use_m, use_s = (m, s) if mean is None else (mean[c], var[c])
        for index, v in entries:
            y[index] = weight[c] * (v - use_m) / np.sqrt(use_s + eps) + bias[c]
    return y, means, variances


def batchnorm_backward(x, weight, eps, dy):
    """Training-mode batch-norm gradients (dx, dweight, dbias) by the textbook chain rule
    (Ioffe & Szegedy 2015, Algorithm 1's backward), one channel at a time."""
    dx, dweight, dbias = np.zeros(x.shape), np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c, entries in enumerate(_channel_values(x)):
        m_count = len(entries)
        mu = sum(v for _, v in entries) / m_count
        var = sum((v - mu) ** 2 for _, v in entries) / m_count
        std = np.sqrt(var + eps)
        dxhat = {index: dy[index] * weight[c] for index, _ in entries}
        dvar = sum(dxhat[i] * (v - mu) * -0.5 * std ** -3 for i, v in entries)
        dmu = sum(-dxhat[i] / std for i, _ in entries) + dvar * sum(-2 * (v - mu) for _, v in entries) / m_count
        for index, v in entries:
            dx[index] = dxhat[index] / std + dvar * 2 * (v - mu) / m_count + dmu / m_count
            dweight[c] += dy[index] * (v - mu) / std
            dbias[c] += dy[index]
    return dx, dweight, dbias


def dropout_forward(x, keep, p):
    """Inverted dropout with a given boolean keep mask, one value at a time."""
    y = np.zeros(x.shape)
    for index in np.ndindex(*x.shape):
        y[index] = x[index] / (1 - p) if keep[index] else 0.0
    return y


def global_avg_pool(x):
    """x (N, C, H, W) -> (N, C): the mean of each map, summed value by value."""
    n, c, h, w = x.shape
    y = np.zeros((n, c))
    for s in range(n):
        for ch in range(c):
            total = 0.0
            for i in range(h):
                for j in range(w):
                    total += x[s, ch, i, j]
            y[s, ch] = total / (h * w)
    return y


def normalize(x, mean, std):
    """(x - mean[c]) / std[c], one value at a time."""
    y = np.zeros(x.shape)
    for index in np.ndindex(*x.shape):
        y[index] = (x[index] - mean[index[1]]) / std[index[1]]
    return y
