"""The reference ops: each layer's math once, written on ``xp`` (NumPy or CuPy), to be read.

``Ops(numpy)`` runs on the CPU, ``Ops(cupy)`` on a GPU: the same code, as Thinc's ``Ops``
(explosion/thinc, thinc/backends/ops.py). A faster ops object for a device overrides a
method and is tested against the one here. Every forward returns ``(output, cache)`` and
its backward takes that cache back; nothing is kept on the object.

Layout NCHW. Shapes are in each docstring and on every reshape / transpose line. Scalars
are cast to the arrays' dtype, so float32 stays float32. The only Python loops run over
kernel offsets (kh*kw of them), never over samples or pixels. The math of each method:
docs/math.md, in the section its docstring names.
"""
from __future__ import annotations

import math

import numpy as np

# Values within this many float epsilons (relative to a window's maximum) count as tied with
# it, and the FIRST of them (row-major) takes the gradient: docs/math.md, "Max pooling and its
# gradient routing". The pools of its "Worked example: one hand-trained step" hold exact decimal
# ties (1.9 = 0.6+0.8+0.5 = 0.2+0.4+0.8+0.5) that rounding breaks depending on the matrix
# product's summation order; with this tolerance the first of them still takes the gradient on
# every backend: 16 eps is ~1.9e-6 relative in float32. MaxPool2D uses this constant too.
TIE_EPS_MULTIPLE = 16


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    """o = (i + p_before + p_after - k) // s + 1 (docs/math.md, "Output size")."""
    return (size + pad_before + pad_after - kernel) // stride + 1


class Ops:
    """The reference operations on array module ``xp`` (``numpy``, ``cupy`` or a stand-in)."""

    def __init__(self, xp):
        self.xp = xp

    # -- helpers: padding and window offsets ---------------------------------------------------
    def _pad(self, x, pads, value=0.0):
        """x (N, C, H, W), pads (top, bottom, left, right) -> (N, C, Hp, Wp), border = value."""
        top, bottom, left, right = pads
        return self.xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)),
                           mode="constant", constant_values=value)  # (N, C, Hp, Wp)

    @staticmethod
    def _offsets(kh, kw, stride, out_h, out_w):
        """For each kernel offset (i, j), row-major: the (rows, cols) slices of the padded
        input that it reads, one for every output position."""
        for i in range(kh):
            for j in range(kw):
                yield i, j, (slice(i, i + stride * (out_h - 1) + 1, stride),
                             slice(j, j + stride * (out_w - 1) + 1, stride))

    @staticmethod
    def _geometry(x_shape, kh, kw, stride, pads):
        """-> (N, C, H, W, OH, OW) of a window op on x_shape."""
        n, c, h, w = x_shape
        top, bottom, left, right = pads
        return n, c, h, w, output_size(h, kh, stride, top, bottom), output_size(w, kw, stride, left, right)

    # -- convolution: docs/math.md, "Convolution" ----------------------------------------------
    def im2col(self, x, kh, kw, stride, pads):
        """x (N, C, H, W) -> columns (C*kh*kw, OH*OW*N); pads = (top, bottom, left, right).

        Row (c, i, j) holds channel c at kernel offset (i, j); column (oh, ow, n) is one
        receptive field. One strided-slice copy per offset ("Forward: im2col and one matrix
        product")."""
        n, c, _, _, out_h, out_w = self._geometry(x.shape, kh, kw, stride, pads)
        x_padded = self._pad(x, pads)  # (N, C, Hp, Wp)
        cols = self.xp.empty((c, kh, kw, out_h, out_w, n), dtype=x.dtype)  # (C, kh, kw, OH, OW, N)
        for i, j, (rows, columns) in self._offsets(kh, kw, stride, out_h, out_w):
            cols[:, i, j] = x_padded[:, :, rows, columns].transpose(1, 2, 3, 0)  # (C, OH, OW, N)
        return cols.reshape(c * kh * kw, out_h * out_w * n)  # (C*kh*kw, OH*OW*N)

    def col2im(self, cols, x_shape, kh, kw, stride, pads):
        """Columns (C*kh*kw, OH*OW*N) -> dx (N, C, H, W): im2col's transpose, each column added
        back onto its window, overlaps summed ("Backward: the transpose")."""
        n, c, h, w, out_h, out_w = self._geometry(x_shape, kh, kw, stride, pads)
        top, bottom, left, right = pads
        cols = cols.reshape(c, kh, kw, out_h, out_w, n)  # (C, kh, kw, OH, OW, N)
        dx_padded = self.xp.zeros((n, c, h + top + bottom, w + left + right), dtype=cols.dtype)  # (N, C, Hp, Wp)
        for i, j, (rows, columns) in self._offsets(kh, kw, stride, out_h, out_w):
            dx_padded[:, :, rows, columns] += cols[:, i, j].transpose(3, 0, 1, 2)  # (N, C, OH, OW)
        return dx_padded[:, :, top:top + h, left:left + w]  # (N, C, H, W)

    def conv2d_forward(self, x, weight, bias, stride, pads):
        """x (N, C, H, W), weight (F, C, kh, kw), bias (F,) or None -> (y (N, F, OH, OW), cache).

        y = W @ columns + b: one matrix product ("Forward: im2col and one matrix product")."""
        f, _, kh, kw = weight.shape
        n, _, _, _, out_h, out_w = self._geometry(x.shape, kh, kw, stride, pads)
        cols = self.im2col(x, kh, kw, stride, pads)  # (C*kh*kw, OH*OW*N)
        y = weight.reshape(f, -1) @ cols  # (F, C*kh*kw) @ (C*kh*kw, OH*OW*N) -> (F, OH*OW*N)
        if bias is not None:
            y += bias.reshape(f, 1)  # (F, 1)
        y = y.reshape(f, out_h, out_w, n).transpose(3, 0, 1, 2)  # (N, F, OH, OW)
        return y, (cols, x.shape, stride, pads)

    def conv2d_backward(self, dy, weight, cache, need_input_grad=True):
        """dy (N, F, OH, OW) -> (dx (N, C, H, W) or None, dweight (F, C, kh, kw), dbias (F,)).

        dW = dY @ columns^T, db = sum of dY, dcolumns = W^T @ dY then col2im
        ("Backward: the transpose")."""
        cols, x_shape, stride, pads = cache
        f, _, kh, kw = weight.shape
        dy_mat = dy.transpose(1, 2, 3, 0).reshape(f, -1)  # (F, OH, OW, N) -> (F, OH*OW*N)
        dweight = (dy_mat @ cols.T).reshape(weight.shape)  # (F, C*kh*kw) -> (F, C, kh, kw)
        dbias = dy_mat.sum(axis=1)  # (F,)
        if not need_input_grad:
            return None, dweight, dbias
        dcols = weight.reshape(f, -1).T @ dy_mat  # (C*kh*kw, F) @ (F, OH*OW*N) -> (C*kh*kw, OH*OW*N)
        return self.col2im(dcols, x_shape, kh, kw, stride, pads), dweight, dbias

    # -- pooling: docs/math.md, "Pooling" ------------------------------------------------------
    def max_pool_forward(self, x, kh, kw, stride, padding=0):
        """x (N, C, H, W) -> (y (N, C, OH, OW), cache): each window's maximum, windows padded
        with -inf ("Max pooling and its gradient routing")."""
        pads = (padding,) * 4
        _, _, _, _, out_h, out_w = self._geometry(x.shape, kh, kw, stride, pads)
        x_padded = self._pad(x, pads, value=-np.inf)  # (N, C, Hp, Wp)
        y = None
        for _, _, (rows, columns) in self._offsets(kh, kw, stride, out_h, out_w):
            window = x_padded[:, :, rows, columns]  # (N, C, OH, OW)
            y = window.copy() if y is None else self.xp.maximum(y, window)
        return y, (x_padded, y, x.shape, kh, kw, stride, pads)

    def max_pool_backward(self, dy, cache):
        """dy (N, C, OH, OW) -> dx (N, C, H, W): each window's dy goes to ONE input, its first
        maximum in row-major order; values within TIE_EPS_MULTIPLE epsilons of the maximum
        count as it ("Max pooling and its gradient routing")."""
        x_padded, y, (n, c, h, w), kh, kw, stride, (top, _, left, _) = cache
        out_h, out_w = y.shape[2:]
        tied_with_max = y - y.dtype.type(TIE_EPS_MULTIPLE * np.finfo(y.dtype).eps) * self.xp.abs(y)  # (N, C, OH, OW)
        found = self.xp.zeros(y.shape, dtype=bool)  # (N, C, OH, OW): the window's maximum is taken
        dx_padded = self.xp.zeros(x_padded.shape, dtype=dy.dtype)  # (N, C, Hp, Wp)
        for _, _, (rows, columns) in self._offsets(kh, kw, stride, out_h, out_w):
            hit = (x_padded[:, :, rows, columns] >= tied_with_max) & ~found  # (N, C, OH, OW)
            dx_padded[:, :, rows, columns] += dy * hit
            found |= hit
        return dx_padded[:, :, top:top + h, left:left + w]  # (N, C, H, W)

    def avg_pool_forward(self, x, kh, kw, stride, padding=0):
        """x (N, C, H, W) -> (y (N, C, OH, OW), cache): each window's mean, zero padding
        counted (PyTorch's count_include_pad=True; docs/math.md, "Average pooling")."""
        pads = (padding,) * 4
        _, _, _, _, out_h, out_w = self._geometry(x.shape, kh, kw, stride, pads)
        x_padded = self._pad(x, pads)  # (N, C, Hp, Wp)
        total = None
        for _, _, (rows, columns) in self._offsets(kh, kw, stride, out_h, out_w):
            window = x_padded[:, :, rows, columns]  # (N, C, OH, OW)
            total = window.copy() if total is None else total + window
        scale = x.dtype.type(1.0 / (kh * kw))
        return total * scale, (x_padded.shape, x.shape, kh, kw, stride, pads, scale)

    def avg_pool_backward(self, dy, cache):
        """dy (N, C, OH, OW) -> dx (N, C, H, W): every input of a window gets dy / (kh*kw)."""
        padded_shape, (n, c, h, w), kh, kw, stride, (top, _, left, _), scale = cache
        out_h, out_w = dy.shape[2:]
        dx_padded = self.xp.zeros(padded_shape, dtype=dy.dtype)  # (N, C, Hp, Wp)
        share = dy * scale  # (N, C, OH, OW)
        for _, _, (rows, columns) in self._offsets(kh, kw, stride, out_h, out_w):
            dx_padded[:, :, rows, columns] += share
        return dx_padded[:, :, top:top + h, left:left + w]  # (N, C, H, W)

    # -- batch normalisation: docs/math.md, "Batch normalisation" ------------------------------
    def batch_norm_forward(self, x, gamma, beta, eps, training, running_mean, running_var, momentum=0.1):
        """x (N, C, H, W), gamma / beta / running stats (C,) -> (y (N, C, H, W), cache).

        Per channel over the M = N*H*W values: x_hat = (x - mean) / sqrt(var + eps),
        y = gamma * x_hat + beta. Training uses the batch's (biased) statistics and moves
        running_mean / running_var IN PLACE: running = (1 - momentum) * running +
        momentum * batch, the variance unbiased (var * M / (M - 1)). Evaluation uses the
        running statistics."""
        t, axes = x.dtype.type, (0, 2, 3)  # statistics over N, H, W
        m = x.size // x.shape[1]  # M
        if training:
            mean = x.mean(axis=axes)  # (C,)
            var = ((x - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=axes)  # (C,), biased
            running_mean *= t(1 - momentum)
            running_mean += t(momentum) * mean
            running_var *= t(1 - momentum)
            running_var += t(momentum * m / (m - 1)) * var
        else:
            mean, var = running_mean.copy(), running_var.copy()  # (C,)
        inv_std = t(1.0) / self.xp.sqrt(var + t(eps))  # (C,)
        x_hat = (x - mean.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1)  # (N, C, H, W)
        y = gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)  # (N, C, H, W)
        return y, (x_hat, inv_std, gamma, training)

    def batch_norm_backward(self, dy, cache):
        """dy (N, C, H, W) -> (dx (N, C, H, W), dgamma (C,), dbeta (C,)):

            dbeta = sum(dy), dgamma = sum(dy * x_hat)
            training:   dx = gamma / sqrt(var + eps) * (dy - sum(dy) / M - x_hat * sum(dy * x_hat) / M)
            evaluation: dx = gamma / sqrt(var + eps) * dy"""
        x_hat, inv_std, gamma, training = cache
        t, axes = dy.dtype.type, (0, 2, 3)
        m = dy.size // dy.shape[1]  # M
        dbeta = dy.sum(axis=axes)  # (C,)
        dgamma = (dy * x_hat).sum(axis=axes)  # (C,)
        scale = (gamma * inv_std).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        if not training:
            return scale * dy, dgamma, dbeta
        per_value = t(1.0 / m)
        inner = dy - dbeta.reshape(1, -1, 1, 1) * per_value \
            - x_hat * (dgamma.reshape(1, -1, 1, 1) * per_value)  # (N, C, H, W)
        return scale * inner, dgamma, dbeta

    # -- the loss: docs/math.md, "Softmax cross-entropy" ---------------------------------------
    def softmax_cross_entropy(self, logits, labels, label_smoothing=0.0):
        """logits (N, K), labels (N,) ints -> (mean loss (0-d), dlogits (N, K) = (p - target) / N).

        target = (1 - e) * onehot(labels) + e / K; log p = shifted - log(sum(exp(shifted))),
        shifted = logits - max per row (log-sum-exp: exp never overflows)."""
        xp, t, e = self.xp, logits.dtype.type, label_smoothing
        n, k = logits.shape
        rows = xp.arange(n)
        shifted = logits - logits.max(axis=1, keepdims=True)  # (N, K), each row's max is 0
        log_sum_exp = xp.log(xp.exp(shifted).sum(axis=1))  # (N,)
        nll = -(shifted[rows, labels] - log_sum_exp).mean()  # mean of -log p[label]
        uniform = log_sum_exp.mean() - shifted.mean()  # mean over samples and classes of -log p
        loss = t(1.0 - e) * nll + t(e) * uniform if e else nll
        dlogits = xp.exp(shifted - log_sum_exp.reshape(n, 1))  # (N, K) softmax p
        if e:
            dlogits -= t(e / k)
        dlogits[rows, labels] -= t(1.0 - e)  # p - target
        dlogits *= t(1.0 / n)
        return loss, dlogits

    # -- optimizers: docs/math.md, "Optimizers" (every array updated in place) -----------------
    def sgd_update(self, weight, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        """weight, grad, velocity (any one shape; velocity None without momentum), in place:

            g = grad + weight_decay * w;  v = momentum * v + g;  g = g + momentum * v (Nesterov) or v
            w -= lr * g"""
        t = weight.dtype.type  # scalars in the weight's dtype: float32 stays float32
        if weight_decay:
            grad = grad + t(weight_decay) * weight  # a new array: the caller's grad is untouched
        if momentum:
            velocity *= t(momentum)
            velocity += grad
            grad = grad + t(momentum) * velocity if nesterov else velocity
        weight -= t(lr) * grad

    def adam_update(self, weight, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                    weight_decay=0.0, decoupled=False):
        """Adam (decoupled=False) or AdamW (decoupled=True), in place; ``step`` counts from 1:

            g = grad + weight_decay * w  (Adam)   or   w *= 1 - lr * weight_decay  (AdamW)
            m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
            w -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)"""
        t = weight.dtype.type
        if weight_decay and decoupled:
            weight *= t(1.0 - lr * weight_decay)
        elif weight_decay:
            grad = grad + t(weight_decay) * weight
        m *= t(beta1)
        m += t(1.0 - beta1) * grad
        v *= t(beta2)
        v += t(1.0 - beta2) * (grad * grad)
        step_size = lr / (1.0 - beta1 ** step)  # bias corrections in double, cast once
        denominator = self.xp.sqrt(v) / t(math.sqrt(1.0 - beta2 ** step)) + t(eps)
        weight -= t(step_size) * (m / denominator)
