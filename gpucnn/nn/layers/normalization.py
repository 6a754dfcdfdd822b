"""Per-channel normalisation: BatchNorm2D (feature maps), BatchNorm1D (after Dense),
and Normalize (fixed input statistics, e.g. a data set's per-channel mean and std).

Batch normalisation, per channel c over the M = N*H*W values of the batch:

    mean = sum(x) / M,   var = sum((x - mean)^2) / M        (biased: used to normalise)
    x_hat = (x - mean) / sqrt(var + eps),   y = weight * x_hat + bias

Training mode normalises with the batch statistics and moves the running statistics
towards them, as torch.nn.BatchNorm2d does: running = (1 - momentum) * running +
momentum * batch, with the unbiased variance var * M / (M - 1). Evaluation mode
normalises with the running statistics instead.

The backward formula (_BatchNorm.backward), derived: docs/math.md, "Batch normalisation".
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...backends import kernels
from ...backends.backend import array_module, to_host
from ...backends.kernels import batchnorm as fused
from ...backends.cpu_threads import joined, over_channel_chunks
from .base import Layer, check_dtype, check_positive_int, in_layout_of


def _check_number(owner: str, name: str, value, inside, wanted: str) -> float:
    """A real number for which ``inside(value)`` holds; ``wanted`` says which, e.g. "> 0"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not inside(float(value)):
        raise ValueError(f"{owner} expected {name} {wanted}, got {value!r}")
    return float(value)


class _FusedCache(NamedTuple):
    """What a fused forward (gpucnn.backends.kernels.batchnorm) keeps for backward: x's layout (its
    buffer), the statistics it normalised with ((C,) mean and var) and the mode."""

    layout: fused.ChannelLayout
    mean: object
    var: object
    training: bool


class _BatchNorm(Layer):
    """Shared batch normalisation over every axis but the channel axis (axis 1).

    params["weight"] (gamma, ones) and params["bias"] (beta, zeros), shape (C,);
    state["running_mean"] (zeros) and state["running_var"] (ones), shape (C,).
    """

    layout = ""          # e.g. "(N, C, H, W)"; error messages put num_features for C
    reduce_axes = ()     # the axes statistics are taken over
    subscripts = ""      # einsum: sum over reduce_axes of a product -> (C,)
    sum_subscripts = ""  # einsum: sum over reduce_axes -> (C,)
    hint = ""            # what to do when the input has the other BatchNorm's rank

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = check_positive_int(name, "num_features", num_features)
        self.eps = _check_number(name, "eps", eps, lambda v: 0 < v < np.inf, "> 0")
        self.momentum = _check_number(name, "momentum", momentum, lambda v: 0 <= v <= 1, "in [0, 1]")
        self.dtype = check_dtype(dtype)
        c = self.num_features
        self.params = {"weight": np.ones(c, dtype=self.dtype), "bias": np.zeros(c, dtype=self.dtype)}
        self.grads = {"weight": None, "bias": None}
        self.state = {"running_mean": np.zeros(c, dtype=self.dtype),
                      "running_var": np.ones(c, dtype=self.dtype)}

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "dtype": self.dtype.name}

    def describe(self) -> str:
        return f"{type(self).__name__} {self.num_features}"

    def _owner(self) -> str:
        return f"{type(self).__name__}(num_features={self.num_features})"

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        expected = self.layout.replace("C", str(self.num_features))
        if len(shape) != len(self.reduce_axes) + 1 or shape[1] != self.num_features:
            hint = self.hint if len(shape) != len(self.reduce_axes) + 1 else ""
            raise ValueError(f"{self._owner()} expected x of shape {expected}, got {shape}{hint}")
        return shape

    def _per_channel(self, v):
        """(C,) -> a view that broadcasts along axis 1 of the input."""
        return v.reshape((-1,) + (1,) * (len(self.reduce_axes) - 1))  # (C, 1, 1) or (C,)

    def _channel_sums(self, a, b=None):
        """Per-channel sum of ``a`` (or of ``a * b``) over every axis but axis 1: (C,).

        One read of each operand, no temporary: einsum multiplies and adds in one loop
        (a product-reduction, not a matrix multiply: no BLAS is missed)."""
        xp = array_module(a)
        return xp.einsum(self.sum_subscripts, a) if b is None else xp.einsum(self.subscripts, a, b)

    def forward(self, x):
        """x (N, C, ...) -> y (N, C, ...), in x's memory layout.

        Training mode, per group of channels (gpucnn.backends.cpu_threads: cache-sized groups on a few
        threads on the CPU, the whole array at once on a GPU): sum(x) and sum(x * x), one
        einsum each, then y = x * scale, y += shift with scale = weight * inv_std and
        shift = bias - mean * scale. The group's later passes find it in cache, so over
        memory x is read once and y written once. The variance is the one-pass
        E[x^2] - mean^2, accumulated in float32: its relative error grows with
        (mean / std)^2 (measured on 65,536 values per channel: 3e-6 at |mean| = 3 std,
        2e-4 at 10 std, 3e-2 at 100 std); convolution outputs sit at the small end.
        Backward reads x itself, so no centred copy of x is kept.

        With the "batchnorm" kernel group active (float32 on a GPU): two launches in
        training (statistics summed in float64, no cancellation; then the normalise pass),
        one in evaluation; see gpucnn.backends.kernels.batchnorm.
        """
        self._check_floating(x, self.dtype)
        self.output_shape(x.shape)
        xp = array_module(x)
        if x.dtype == np.float32 and kernels.active("batchnorm", xp):
            return self._forward_fused(x)
        weight, bias, t = self.params["weight"], self.params["bias"], x.dtype.type
        training = self.training
        count = x.size // self.num_features  # M, values per channel
        if training and count < 2:
            raise ValueError(
                f"{self._owner()} expected more than 1 value per channel in training mode, "
                f"got x of shape {tuple(x.shape)}; use a larger batch, or eval mode"
            )
        y = xp.empty_like(x)  # x's layout
        running_mean, running_var = self.state["running_mean"], self.state["running_var"]

        def normalise(channels):  # one group of channels: statistics, then y -> (mean, var, inv_std)
            xc = x[:, channels]
            if training:
                mean = self._channel_sums(xc) * t(1 / count)  # (c,)
                var = self._channel_sums(xc, xc) * t(1 / count)  # (c,) E[x^2]
                var -= mean * mean  # biased variance; rounding can make it slightly negative:
                xp.maximum(var, 0, out=var)
            else:
                mean, var = running_mean[channels], running_var[channels]
            inv_std = (var + t(self.eps)) ** t(-0.5)  # (c,) 1 / sqrt(var + eps)
            scale = weight[channels] * inv_std  # y = x * scale + (bias - mean * scale)
            yc = y[:, channels]
            xp.multiply(xc, self._per_channel(scale), out=yc)
            yc += self._per_channel(bias[channels] - mean * scale)
            return mean, var, inv_std

        mean, var, inv_std = joined(over_channel_chunks(x, normalise))  # (C,) each
        if training:
            self._update_running_stats(mean, var, count)
        self._cache = (x, mean, inv_std, training)
        return y

    def _forward_fused(self, x):
        """forward() through the batchnorm kernels: x (N, C, ...) -> y, x's layout."""
        count = x.size // self.num_features  # M, values per channel
        if self.training and count < 2:
            raise ValueError(
                f"{self._owner()} expected more than 1 value per channel in training mode, "
                f"got x of shape {tuple(x.shape)}; use a larger batch, or eval mode"
            )
        layout = fused.channel_layout(x)
        weight, bias = self.params["weight"], self.params["bias"]
        if self.training:
            running_mean, running_var = self._running_buffers()
            y, mean, var = fused.train_forward(layout, weight, bias, running_mean, running_var,
                                               self.eps, self.momentum)  # moves the running stats in place
        else:
            mean, var = self.state["running_mean"], self.state["running_var"]
            y = fused.normalized(layout, mean, var, weight, bias, self.eps)
        self._cache = _FusedCache(layout, mean, var, self.training)
        return y

    def _running_buffers(self):
        """The running statistics as C-contiguous float32 (C,) arrays, which the stats kernel
        updates in place (they already are, unless loaded from elsewhere: then one copy)."""
        for name in ("running_mean", "running_var"):
            value = self.state[name]
            if value.dtype != np.float32 or not value.flags.c_contiguous:
                self.state[name] = array_module(value).ascontiguousarray(value, dtype=np.float32)
        return self.state["running_mean"], self.state["running_var"]

    def _update_running_stats(self, mean, var, count):
        t, m = self.dtype.type, self.momentum
        self.state["running_mean"] = t(1 - m) * self.state["running_mean"] + t(m) * mean
        # the running variance is unbiased: var * M / (M - 1)
        self.state["running_var"] = t(1 - m) * self.state["running_var"] + t(m * count / (count - 1)) * var

    def backward(self, dy, need_input_grad=True):
        """dy (N, C, ...) -> dx (N, C, ...) in x's layout; fills grads.

        After a training-mode forward (batch statistics, which depend on x), with
        x_hat = (x - mean) * inv_std and sums over the M values of each channel:

            dx = weight * inv_std * (dy - sum(dy) / M - x_hat * sum(dy * x_hat) / M)

        After an evaluation-mode forward (fixed statistics): dx = weight * inv_std * dy.
        Both fill grads["weight"] = sum(dy * x_hat) and grads["bias"] = sum(dy).
        After a fused forward: two launches (sums in float64, then dx), one without dx.

        Per group of channels, as forward: sum(dy) and sum(dy * x), then
        dx = (x * k + dy + c) * scale with per-channel k and c, from cache: over memory,
        dy and x are read once and dx written once.
        """
        if isinstance(self._cached(), _FusedCache):
            layout, mean, var, training = self._cache
            self._check_dy(dy, layout.shape)
            dx, self.grads["weight"], self.grads["bias"] = fused.backward(
                layout, dy, mean, var, self.params["weight"], self.eps, training, need_input_grad)
            return dx
        x, mean, inv_std, training = self._cached()
        self._check_dy(dy, x.shape)
        xp = array_module(dy)
        dy = in_layout_of(dy, x)  # one copy if dy comes in another layout, not passes striding through two
        t = x.dtype.type
        per_value = t(1 / (x.size // self.num_features))  # 1 / M
        weight = self.params["weight"]
        dx = xp.empty_like(x) if need_input_grad else None  # x's layout

        def gradients(channels):  # one group of channels: the sums, then dx -> (dweight, dbias)
            xc, dyc, mean_c, inv_std_c = x[:, channels], dy[:, channels], mean[channels], inv_std[channels]
            sum_dy = self._channel_sums(dyc)  # (c,)
            sum_dy_centered = self._channel_sums(dyc, xc) - mean_c * sum_dy  # (c,) sum(dy * (x - mean))
            grad_weight = sum_dy_centered * inv_std_c
            if dx is None:
                return grad_weight, sum_dy
            scale = self._per_channel(weight[channels] * inv_std_c)
            dxc = dx[:, channels]
            if not training:
                xp.multiply(dyc, scale, out=dxc)
                return grad_weight, sum_dy
            # dx = scale * (dy - sum(dy) / M - (x - mean) * inv_std^2 * sum(dy * (x - mean)) / M)
            #    = scale * (dy + x * k + c)
            k = grad_weight * (inv_std_c * -per_value)  # (c,) -inv_std^2 * sum(dy * (x - mean)) / M
            c = sum_dy * -per_value - k * mean_c  # (c,)
            xp.multiply(xc, self._per_channel(k), out=dxc)
            dxc += dyc
            dxc += self._per_channel(c)
            dxc *= scale
            return grad_weight, sum_dy

        self.grads["weight"], self.grads["bias"] = joined(over_channel_chunks(x, gradients))
        return dx


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of feature maps: x (N, C, H, W) -> y (N, C, H, W), as
    torch.nn.BatchNorm2d; statistics per channel over N, H and W.

    The output and dx keep the input's memory layout (any strides).
    """

    layout = "(N, C, H, W)"
    reduce_axes = (0, 2, 3)
    subscripts = "nchw,nchw->c"
    sum_subscripts = "nchw->c"
    hint = "; use BatchNorm1D for (N, features) input"


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of features: x (N, F) -> y (N, F), as torch.nn.BatchNorm1d
    on 2-D input; ``num_features`` is F, statistics per feature over N."""

    layout = "(N, C)"
    reduce_axes = (0,)
    subscripts = "nc,nc->c"
    sum_subscripts = "nc->c"
    hint = "; use BatchNorm2D for (N, C, H, W) feature maps"


def _per_channel_floats(owner: str, name: str, values) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(
            f"{owner} expected {name} as a sequence of per-channel floats, got {values!r}; "
            f"pass {name}=[{values!r}] for one channel"
        )
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{owner} expected {name} as a sequence of floats, got {values!r}") from None
    if not floats:
        raise ValueError(f"{owner} expected {name} with one value per channel, got an empty sequence")
    if not all(np.isfinite(floats)):
        raise ValueError(f"{owner} expected finite {name} values, got {list(floats)}")
    return floats


class Normalize(Layer):
    """Per-channel input normalisation: x (N, C, H, W) -> y = (x - mean[c]) / std[c], same shape.

    ``mean`` and ``std`` are sequences of C floats (the training split's per-channel
    statistics); they are part of the configuration, so a saved model carries them and
    ``predict`` on raw images gives the same answer after loading.
    """

    def __init__(self, mean, std, *, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.mean = _per_channel_floats(name, "mean", mean)
        self.std = _per_channel_floats(name, "std", std)
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"{name} expected mean and std of the same length (one value per channel), "
                f"got {len(self.mean)} means and {len(self.std)} stds"
            )
        if min(self.std) <= 0:
            raise ValueError(f"{name} expected every std > 0, got std={list(self.std)}")
        self.dtype = check_dtype(dtype)
        self.num_channels = len(self.mean)
        # constants on the layer's device; to() moves them
        self._mean = np.asarray(self.mean, dtype=self.dtype).reshape(-1, 1, 1)  # (C, 1, 1)
        self._std = np.asarray(self.std, dtype=self.dtype).reshape(-1, 1, 1)  # (C, 1, 1)

    def get_config(self):
        return {"mean": list(self.mean), "std": list(self.std), "dtype": self.dtype.name}

    def describe(self) -> str:
        return f"Normalize {self.num_channels}ch"

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or shape[1] != self.num_channels:
            hint = "; add a channel axis with x[:, None]" if len(shape) == 3 else ""
            raise ValueError(
                f"Normalize({self.num_channels} channels) expected x of shape "
                f"(N, {self.num_channels}, H, W), got {shape}{hint}"
            )
        return shape

    def to(self, backend) -> "Normalize":
        super().to(backend)
        self._mean = backend.asarray(to_host(self._mean))
        self._std = backend.asarray(to_host(self._std))
        return self

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, H, W), in x's memory layout."""
        self._check_floating(x, self.dtype)
        self.output_shape(x.shape)
        xp = array_module(x)
        y = xp.empty_like(x)
        xp.subtract(x, self._mean, out=y)
        y /= self._std
        self._cache = x
        return y

    def backward(self, dy, need_input_grad=True):
        """dy (N, C, H, W) -> dx = dy / std[c], in x's memory layout."""
        x = self._cached()
        self._check_dy(dy, x.shape)
        if not need_input_grad:
            return None
        xp = array_module(dy)
        return xp.divide(dy, self._std, out=xp.empty_like(x))
