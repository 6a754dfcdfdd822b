"""One rule for comparing float32 results computed two ways (two devices, two kernels, two
summation orders): the difference may be as large as twice the float32 error bound of
what is computed, and no larger.

The bound (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1):
a sum or dot product of K terms, evaluated in float32 in ANY order or blocking (BLAS,
cuBLAS, a tree reduction, FMA or not), is within gamma(K) * sum|a_i * b_i| of the exact
value, gamma(K) = K u / (1 - K u), u = 2**-24 the unit roundoff. Two such evaluations are
within twice that of each other. ``magnitude`` is the sum of the absolute values of the
terms; it is computed here in float64 by running the same computation on |inputs| (a
layer linear in its input and in its weights gives exactly sum|w x| that way), and the
term count by running it on ones.

Recorded case, a GPU machine's failure with fixed tolerances (rtol 2e-5, atol 2e-6):
Conv2D 3->4 3x3 'same', one output 0.0218041 on the GPU against 0.0218086 on NumPy, a
sum with cancellation; its K = 28 terms (27 products and the bias) have sum|terms| of
order 1, so the bound is ~3e-6 * magnitude: tests/test_tolerance.py checks the rule
admits such a difference and refuses ten times more.
"""
from __future__ import annotations

import numpy as np

U32 = 2.0 ** -24  # float32 unit roundoff


def gamma(terms) -> np.ndarray:
    """gamma(K) = K u / (1 - K u): the relative error bound of a K-term float32 sum."""
    k = np.asarray(terms, dtype=np.float64)
    return k * U32 / (1.0 - k * U32)


def sum_bound(terms, magnitude) -> np.ndarray:
    """|a - b| for two float32 evaluations of the same K-term sum whose terms' absolute
    values add up to ``magnitude`` (arrays broadcast): 2 * gamma(K) * magnitude, plus one
    rounding of each result to float32."""
    magnitude = np.asarray(magnitude, dtype=np.float64)
    return 2.0 * gamma(terms) * magnitude + 2.0 * U32 * magnitude


def assert_within(actual, expected, bound, what: str = "") -> None:
    """Every |actual - expected| <= bound (element-wise, float64); the failure names the
    worst element, its two values, the difference and the bound."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shapes differ: {actual.shape} against {expected.shape}")
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    diff = np.abs(actual - expected)
    bad = ~(diff <= bound)  # NaN counts as bad
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, diff - bound, -np.inf)), diff.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {diff.size} elements differ by more than the float32 "
            f"error bound; worst at {tuple(int(i) for i in worst)}: {actual[worst]!r} against "
            f"{expected[worst]!r}, difference {diff[worst]:.3g}, bound {bound[worst]:.3g}")


# -- layers ------------------------------------------------------------------------------------
def _float64_copy(layer, transform):
    """A copy of ``layer`` computing in float64, every parameter passed through ``transform``."""
    import copy
    twin = copy.deepcopy(layer)
    twin.dtype = np.dtype(np.float64)
    twin.params = {k: transform(np.asarray(v, dtype=np.float64)) for k, v in layer.params.items()}
    twin.grads = dict.fromkeys(layer.params)
    twin._cache = None
    return twin


def _run(layer, x, dy):
    y = layer.forward(x)
    dx = layer.backward(dy)
    return {"y": y, "dx": dx, **{f"grad {k}": v for k, v in layer.grads.items()}}


def linear_layer_bounds(layer, x, dy) -> dict:
    """Bounds for a layer whose outputs, input gradient and parameter gradients are each a
    sum of products linear in the input and the weights (Conv2D, Dense, AvgPool2D,
    GlobalAvgPool2D, Flatten): {"y", "dx", "grad weight", ...} -> bound arrays. The float64
    layer run on |x|, |weights|, |dy| gives each sum's magnitude; run on ones, its term count."""
    magnitudes = _run(_float64_copy(layer, np.abs), np.abs(x).astype(np.float64), np.abs(dy).astype(np.float64))
    counts = _run(_float64_copy(layer, np.ones_like), np.ones(x.shape), np.ones(dy.shape))
    return {k: sum_bound(np.maximum(counts[k], 1.0), magnitudes[k]) for k in magnitudes}


def batchnorm_bounds(x, weight, dy, eps: float, training: bool = True, momentum: float = 0.1,
                     running_stats=None) -> dict:
    """Bounds for batch normalisation over every axis but 1 (M values per channel), from a
    first-order error analysis of its sums (any order, one pass E[x^2] - mean^2 or two):
        d mean <= gamma(M) mean|x|,   d var <= 2 gamma(M) (E[x^2] + mean^2)
        d r / r <= d var / (2 (var + eps)) + 2u        (r = 1 / sqrt(var + eps))
        d x_hat <= r (d mean + |x - mean| d r / r),     y = weight x_hat + bias
    and for dx = weight r (dy - sum(dy)/M - x_hat sum(dy x_hat)/M) the same through the two
    backward sums. Each bound is doubled: both sides carry their own error.
    Evaluation mode with ``running_stats`` = (running_mean, running_var), the statistics it
    normalises with: y = x * scale + (bias - mean * scale) or (x - mean) * scale + bias
    (scale = weight r) rounds terms as large as |x| r and |mean| r, dx = dy * scale up to 4
    roundings a side, and sum(dy * x) - mean * sum(dy) sums |dy x| and |mean dy|."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    per_channel = (1, -1) + (1,) * (x.ndim - 2)  # broadcasts along axis 1
    m = x.size // x.shape[1]
    g = float(gamma(m))
    w = np.abs(np.asarray(weight, np.float64)).reshape(per_channel)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    r = 1.0 / np.sqrt(var + eps)
    centred = np.abs(x - mean)
    d_mean = g * np.abs(x).mean(axis=axes, keepdims=True)
    d_var = 2.0 * g * ((x * x).mean(axis=axes, keepdims=True) + mean * mean) + 4.0 * U32 * var
    d_r = r * (d_var / (2.0 * (var + eps)) + 2.0 * U32)  # absolute error of r
    fixed = not training and running_stats is not None  # evaluation on the running statistics
    if fixed:
        mean, var = (np.asarray(a, np.float64).reshape(per_channel) for a in running_stats)
        r = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * r
    if not training:  # fixed statistics: element-wise only
        d_r = d_mean = 0.0
    d_x_hat = r * d_mean + centred * d_r + 2.0 * U32 * np.abs(x_hat)
    y_bound = 2.0 * (w * d_x_hat + 2.0 * U32 * (w * np.abs(x_hat) + 1.0))
    if fixed:
        y_bound = y_bound + 2.0 * 4.0 * U32 * w * r * (np.abs(x) + np.abs(mean))
    sum_dy, sum_abs_dy = dy.sum(axis=axes, keepdims=True), np.abs(dy).sum(axis=axes, keepdims=True)
    sum_dy_xhat = (dy * x_hat).sum(axis=axes, keepdims=True)
    d_sum_dy = g * sum_abs_dy
    d_sum_dy_xhat = g * (np.abs(dy * x_hat)).sum(axis=axes, keepdims=True) + (np.abs(dy) * d_x_hat).sum(
        axis=axes, keepdims=True)
    if fixed:
        d_sum_dy_xhat = d_sum_dy_xhat + g * r * (np.abs(dy * x) + np.abs(dy * mean)).sum(axis=axes, keepdims=True)
    if training:
        inner = np.abs(dy - sum_dy / m - x_hat * sum_dy_xhat / m)
        d_inner = (d_sum_dy + np.abs(x_hat) * d_sum_dy_xhat + d_x_hat * np.abs(sum_dy_xhat)) / m \
            + 4.0 * U32 * (np.abs(dy) + sum_abs_dy / m + np.abs(x_hat * sum_dy_xhat) / m)
    else:
        inner, d_inner = np.abs(dy), 0.0
    dx_bound = 2.0 * w * (d_r * inner + r * d_inner + (4.0 if fixed else 2.0) * U32 * r * inner)
    unbiased = m / max(m - 1, 1)
    running = {"state running_mean": (2.0 * (momentum * d_mean + 4.0 * U32 * (np.abs(mean) + 1.0))).reshape(-1),
               "state running_var": (2.0 * (momentum * unbiased * d_var + 4.0 * U32 * (var + 1.0))).reshape(-1)}
    return {"y": y_bound, "dx": dx_bound, **(running if training else {}),
            "grad weight": (2.0 * (d_sum_dy_xhat + 2.0 * U32 * np.abs(sum_dy_xhat))).reshape(-1),  # (C,)
            "grad bias": (2.0 * (d_sum_dy + 2.0 * U32 * np.abs(sum_dy))).reshape(-1)}  # (C,)


def elementwise_bound(reference, roundings: int = 2) -> np.ndarray:
    """An element-wise computation of a few roundings (scale and shift, a division): each
    side within ``roundings`` u of the exact value, relative."""
    return 2.0 * roundings * U32 * np.abs(np.asarray(reference, np.float64))


def softmax_ce_bounds(logits, labels, label_smoothing: float = 0.0) -> dict:
    """Mean softmax cross-entropy and its gradient (softmax - target) / N: the log-sum-exp
    over C classes is a C-term sum of exp(shifted) <= 1 (relative error gamma(C) + a few u
    for exp and log); the mean over N rows an N-term sum of |row losses|."""
    logits = np.asarray(logits, np.float64)
    n, c = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    probs = np.exp(shifted - lse[:, None])
    row_loss = lse - shifted[np.arange(n), labels]
    d_row = float(gamma(c)) + 8.0 * U32 * (1.0 + np.abs(lse) + np.abs(shifted).max(axis=1))
    loss_bound = 2.0 * (np.abs(row_loss).mean() * float(gamma(n)) + d_row.mean() * (1.0 + label_smoothing))
    grad_bound = 2.0 * (probs * (d_row[:, None] + 8.0 * U32) + 2.0 * U32 * (probs + 1.0)) / n
    return {"loss": loss_bound, "dlogits": grad_bound}
