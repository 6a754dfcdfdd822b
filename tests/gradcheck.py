"""Float64 central-difference gradient checks."""
from __future__ import annotations

import numpy as np


def numeric_grad(f, x, eps=1e-6):
    """d f() / d x by central differences, perturbing x in place (x float64)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def check_layer_gradients(layer, x, rng, atol=1e-6, rtol=1e-5):
    """Compare backward() with numeric gradients of L = sum(forward(x) * r) for random r."""
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    loss = lambda: float(np.sum(layer.forward(x) * r))
    layer.forward(x)
    dx = layer.backward(r.copy())
    analytic = {"x": dx, **{k: layer.grads[k].copy() for k in layer.params}}
    numeric = {"x": numeric_grad(loss, x)}
    for key, p in layer.params.items():
        numeric[key] = numeric_grad(loss, p)
    for key in analytic:
        np.testing.assert_allclose(analytic[key], numeric[key], atol=atol, rtol=rtol,
                                   err_msg=f"{layer!r}: gradient w.r.t. {key}")
