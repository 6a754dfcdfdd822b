"""Which fused-kernel groups (gpucnn.backends.kernels) a device's arrays run: chosen per array
module when its backend is made (``get_backend("gpu", kernels=...)``, else the
``GPUCNN_KERNELS`` environment variable, else :data:`DEFAULT_ON`). Imports nothing of
gpucnn, so the backend seam can use it without importing the kernels."""
from __future__ import annotations

import os
import weakref

__all__ = ["DEFAULT_ON", "ENV_VAR", "GROUPS", "active", "parse_selection", "select", "selected"]

ENV_VAR = "GPUCNN_KERNELS"

# group -> what it fuses (the layers' code asks ``active(group, xp)``)
GROUPS = {
    "im2col": "Conv2D's im2col and col2im, one launch each (padding included)",
    "maxpool": "MaxPool2D forward (max and first-max offset) and backward (one gather)",
    "relu": "ReLU backward in one pass",
    "batchnorm": "BatchNorm statistics, normalise + affine, and backward: two launches a direction",
    "softmax_ce": "softmax cross-entropy forward, backward, loss and correct count in one launch",
    "optimizer": "SGD / Adam over every parameter in one launch (multi-tensor)",
    "gemm": "matrix multiplies through cuBLAS directly, without CuPy's per-call checks",
    "pixels": "a batch gathered from uint8 images and scaled to float32 in one launch",
}

# Groups whose GPU-vs-twin tests have passed on a real GPU under .ci/gpu; each entry is
# added in the commit that records that run (date, GPU). Until then a group is opt-in.
# Every group: .ci/gpu on an NVIDIA H200 (CuPy 14.2, CUDA 13, PyTorch 2.11), 2026-12-04, at
# commit c13e158: the whole suite with GPUCNN_KERNELS=im2col,maxpool,relu,batchnorm,
# softmax_ce,pixels,optimizer, every kernel-vs-twin and layer-vs-NumPy test of every group
# (gemm included) passing on the GPU (833 of them), the default training run with them
# (98.28%, the same as without) and the benchmark (docs/gpu.md).
DEFAULT_ON: frozenset = frozenset(GROUPS)

# array module -> the groups it runs fused kernels for (cupy: set by get_backend)
_SELECTION: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def parse_selection(spec) -> frozenset:
    """``"all"``, ``"none"``, ``"default"``, a comma-separated list of groups, or an
    iterable of groups -> the frozenset of groups. Unknown names raise ValueError."""
    if spec is None or spec == "default":
        return DEFAULT_ON
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("all", "1", "on"):
            return frozenset(GROUPS)
        if text in ("none", "0", "off", ""):
            return frozenset()
        spec = [part.strip() for part in text.split(",") if part.strip()]
    names = frozenset(spec)
    unknown = sorted(names - set(GROUPS))
    if unknown:
        raise ValueError(
            f"unknown fused-kernel group(s) {unknown}; expected 'all', 'none', 'default' or a "
            f"comma-separated list of {', '.join(GROUPS)} (set with {ENV_VAR} or get_backend(kernels=...))"
        )
    return names


def select(xp, spec=None) -> frozenset:
    """Choose the groups that arrays of module ``xp`` run fused kernels for: ``spec`` as
    :func:`parse_selection` takes it; None reads ``GPUCNN_KERNELS`` (unset: the defaults).
    Returns the selection."""
    source = "kernels="
    if spec is None:
        spec, source = os.environ.get(ENV_VAR, "default"), f"{ENV_VAR}={os.environ.get(ENV_VAR)!r}"
    try:
        groups = parse_selection(spec)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    _SELECTION[xp] = groups
    return groups


def selected(xp) -> frozenset:
    """The groups arrays of module ``xp`` run fused kernels for (none for NumPy, which is
    never selected)."""
    return _SELECTION.get(xp, frozenset())


def active(group: str, xp) -> bool:
    """Whether a layer holding arrays of module ``xp`` runs ``group``'s fused kernels."""
    if group not in GROUPS:
        raise KeyError(f"unknown fused-kernel group {group!r}; known: {', '.join(GROUPS)}")
    return group in selected(xp)
