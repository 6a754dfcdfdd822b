"""Softmax cross-entropy as one fused kernel (group "softmax_ce", gpucnn/backends/kernels/loss.py):
the kernel against its NumPy twin, SoftmaxCrossEntropy with the group on against NumPy's,
the training loop's bookkeeping in one launch, and fit() with the loss and batch gather
fused. Device: the CuPy stand-in, and a real GPU when present (kernel_backend)."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backends.backend import get_backend
from gpucnn.data.batches import load_digits
from gpucnn.backends.kernels.loss import softmax_ce_fused
from gpucnn.nn.losses import SoftmaxCrossEntropy
from gpucnn.data.pixels import gather_batch
from gpucnn.training.run import fit
from gpucnn.nn.zoo import build_model
from standin import standin_backend
from test_backends import OPTIMIZERS
from tolerance import assert_within, softmax_ce_bounds

SHAPES = [(1, 2), (1, 10), (7, 37), (64, 10), (1000, 2), (1000, 10), (1000, 37), (7, 2)]


def make_logits(n, classes, ties, seed=0):
    """(n, classes) float32; with ``ties``, few distinct values, so most rows hold a tied
    maximum (and row 0 is all equal)."""
    r = np.random.default_rng(seed + 31 * n + classes)
    if ties:
        logits = r.integers(-2, 3, (n, classes)).astype(np.float32)  # (n, classes)
        logits[0] = 1.5
    else:
        logits = (r.standard_normal((n, classes)) * 4).astype(np.float32)  # (n, classes)
    return logits, r.integers(0, classes, n).astype(np.int64)


def first_max_hits(logits, labels) -> int:
    return int(np.count_nonzero(np.asarray(logits).argmax(axis=1) == labels))


# -- the kernel against its twin -------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("n, classes", SHAPES)
def test_kernel_equals_twin(kernel_backend, n, classes, smoothing, ties):
    logits, labels = make_logits(n, classes, ties)
    # the twin on NumPy arrays; the kernel (the twin after the stand-in's checks, or CUDA)
    host_correct = np.full((), 5, np.int64)
    host_grad, host_loss = softmax_ce_fused(logits, labels, smoothing, correct_out=host_correct)
    xp = kernel_backend.xp
    correct = kernel_backend.asarray(np.full((), 5, np.int64))
    losses = xp.zeros(3, dtype=np.float32)
    grad, loss = softmax_ce_fused(kernel_backend.asarray(logits), kernel_backend.asarray(labels), smoothing,
                                  loss_out=losses[1:2], correct_out=correct)
    assert grad.dtype == np.float32 and grad.shape == (n, classes) and loss.shape == (1,)
    # sums reordered (the twin's pairwise class sums against the kernel's loop, CUDA's expf
    # against NumPy's exp): within twice the float32 bound of one evaluation (tests/tolerance.py)
    bounds = softmax_ce_bounds(logits, labels, smoothing)
    found = kernel_backend.to_numpy(losses)
    assert found[0] == 0 and found[2] == 0  # only loss_out's element is written
    assert_within(found[1], host_loss, bounds["loss"], "loss")
    assert_within(kernel_backend.to_numpy(grad), host_grad, bounds["dlogits"], "dlogits")
    # argmax: the first maximum on both, exactly
    assert int(kernel_backend.to_numpy(correct)) == int(host_correct) == 5 + first_max_hits(logits, labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_twin_equals_the_generic_loss(smoothing):
    """The twin computes what SoftmaxCrossEntropy's NumPy path computes (float32 both)."""
    logits, labels = make_logits(64, 37, ties=False)
    reference = SoftmaxCrossEntropy(smoothing)
    expected = reference.forward(logits, labels)
    grad, loss = softmax_ce_fused(logits, labels, smoothing)
    bounds = softmax_ce_bounds(logits, labels, smoothing)
    assert loss.dtype == np.float32 and loss.shape == ()
    assert_within(loss, expected, bounds["loss"], "loss")
    assert_within(grad, reference.backward(), bounds["dlogits"], "dlogits")


def test_out_of_range_label_gives_nan_loss_and_reads_nothing():
    logits, labels = make_logits(4, 3, ties=False)
    labels[2] = 3
    correct = np.zeros((), np.int64)
    grad, loss = softmax_ce_fused(logits, labels, 0.0, correct_out=correct)
    assert np.isnan(loss)
    np.testing.assert_allclose(grad[2].sum(), 1.0 / 4, rtol=1e-6)  # softmax / N: no target subtracted
    assert int(correct) == first_max_hits(np.delete(logits, 2, 0), np.delete(labels, 2))


# -- SoftmaxCrossEntropy with the group on ----------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("n, classes", [(1, 10), (7, 37), (64, 10)])
def test_loss_layer_fused_equals_numpy(kernel_backend, n, classes, smoothing):
    logits, labels = make_logits(n, classes, ties=True)
    host, dev = SoftmaxCrossEntropy(smoothing), SoftmaxCrossEntropy(smoothing)
    loss = host.forward(logits, labels)
    grad = host.backward()
    bounds = softmax_ce_bounds(logits, labels, smoothing)
    loss_dev = dev.forward(kernel_backend.asarray(logits), kernel_backend.asarray(labels))
    assert loss_dev.shape == () and loss_dev.dtype == np.float32
    assert_within(kernel_backend.to_numpy(loss_dev), loss, bounds["loss"], "loss")
    assert_within(kernel_backend.to_numpy(dev.backward()), grad, bounds["dlogits"], "dlogits")
    # the bookkeeping form: loss into a slice of the per-batch array, hits added to a counter
    xp = kernel_backend.xp
    batch_losses, correct = xp.zeros(4, dtype=np.float32), xp.zeros((), dtype=np.int64)
    host_losses, host_correct = np.zeros(4, np.float32), np.zeros((), np.int64)
    for b in (1, 3):
        out = dev.forward(kernel_backend.asarray(logits), kernel_backend.asarray(labels),
                          loss_out=batch_losses[b:b + 1], correct_out=correct)
        assert out.shape == (1,)
        host.forward(logits, labels, loss_out=host_losses[b:b + 1], correct_out=host_correct)
    assert_within(kernel_backend.to_numpy(batch_losses), host_losses, bounds["loss"], "batch_losses")
    assert kernel_backend.to_numpy(batch_losses)[0] == 0
    assert int(kernel_backend.to_numpy(correct)) == int(host_correct) == 2 * first_max_hits(logits, labels)
    assert_within(kernel_backend.to_numpy(dev.backward()), host.backward(), bounds["dlogits"], "dlogits")


def test_int32_labels_and_noncontiguous_logits_still_fuse():
    backend = standin_backend(kernels="softmax_ce")
    logits, labels = make_logits(9, 5, ties=False)
    dev = SoftmaxCrossEntropy()
    wide = backend.asarray(np.ascontiguousarray(logits.T))  # (classes, N) memory
    loss = dev.forward(wide.T, backend.asarray(labels.astype(np.int32)))  # (N, classes) view
    assert backend.xp.work.by_kind["kernel loss.softmax_ce"] == 1
    host = SoftmaxCrossEntropy()
    bounds = softmax_ce_bounds(logits, labels)
    assert_within(backend.to_numpy(loss), host.forward(logits, labels), bounds["loss"], "loss")
    assert_within(backend.to_numpy(dev.backward()), host.backward(), bounds["dlogits"], "dlogits")


@pytest.mark.parametrize("bad, message", [
    (dict(loss_out=np.zeros(2, np.float32)), r"expected loss_out to be a float array of one element, got "
                                             r"float32 of shape \(2,\); pass a one-element slice"),
    (dict(correct_out=np.zeros((), np.float32)), r"expected correct_out to be an? integer array of one element"),
    (dict(correct_out=5), r"correct_out .* got int; pass a counter"),
])
def test_bookkeeping_outputs_are_checked(bad, message):
    logits, labels = make_logits(3, 4, ties=False)
    with pytest.raises(ValueError, match=message):
        SoftmaxCrossEntropy().forward(logits, labels, **bad)


def test_plain_calls_keep_their_errors_with_the_group_on():
    backend = standin_backend(kernels="softmax_ce")
    loss_fn = SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="before forward"):
        loss_fn.backward()
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\)"):
        loss_fn.forward(backend.asarray(np.zeros((3, 4), np.float32)), backend.asarray(np.zeros(2, np.int64)))
    with pytest.raises(TypeError, match="integer labels"):
        loss_fn.forward(backend.asarray(np.zeros((3, 4), np.float32)), backend.asarray(np.zeros(3, np.float32)))


# -- launch counts: one training batch's bookkeeping -------------------------------------------
def bookkeeping_launches(groups: str) -> tuple[int, dict]:
    """Launches of what train_epoch does per batch around the model: the batch gather (uint8
    pixels), the loss into batch_losses[b], the correct count, and the loss's backward."""
    backend = standin_backend(kernels=groups)
    xp = backend.xp
    r = np.random.default_rng(0)
    x = backend.asarray(r.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
    y = backend.asarray(r.integers(0, 10, 40).astype(np.int64))
    order = backend.asarray(r.permutation(40).astype(np.int64))
    logits = backend.asarray(r.standard_normal((16, 10)).astype(np.float32))
    batch_losses, correct = xp.zeros(3, dtype=np.float32), xp.zeros((), dtype=np.int64)
    loss_fn = SoftmaxCrossEntropy(0.1)
    xp.work.reset()
    xb, yb = gather_batch(x, y, order[16:32])
    loss_fn.forward(logits, yb, loss_out=batch_losses[1:2], correct_out=correct)
    loss_fn.backward()
    return xp.work.launches, dict(xp.work.by_kind)


def test_one_batch_bookkeeping_is_two_launches_fused():
    generic, generic_kinds = bookkeeping_launches("none")
    fused, fused_kinds = bookkeeping_launches("pixels,softmax_ce")
    assert fused == 2, fused_kinds
    assert fused_kinds == {"kernel pixels.gather_scale": 1, "kernel loss.softmax_ce": 1}
    assert generic >= 20, generic_kinds  # measured on the stand-in: 42
    assert bookkeeping_launches("softmax_ce")[0] == 1 + 4  # the loss alone fused: the gather is 4


# -- fit() with both groups on: the same history as NumPy --------------------------------------
def quiet(*args, **kwargs):
    pass


def test_fit_with_loss_and_gather_fused_equals_numpy():
    data = load_digits()
    pixels = np.round(data.train_x[:160] * 255).astype(np.uint8)  # (160, 1, 8, 8) 0..255
    labels, val = data.train_y[:160], (pixels[:48], data.train_y[:48])
    histories = []
    for backend in (get_backend("cpu"), standin_backend(kernels="pixels,softmax_ce")):
        model = build_model("simple", data.input_shape, 10, np.random.default_rng(0)).to(backend)
        histories.append(fit(model, OPTIMIZERS["adam"](model), (pixels, labels), val, epochs=2, batch_size=32,
                             rng=np.random.default_rng(1), verbose=0, log=quiet,
                             loss_fn=SoftmaxCrossEntropy(0.1)))
    kinds = backend.xp.work.by_kind
    # 5 training batches x 2 epochs; validation (48 images, batches of 32) fuses its loss too: 2 x 2
    assert kinds["kernel pixels.gather_scale"] == 10 and kinds["kernel loss.softmax_ce"] == 10 + 4
    for host, dev in zip(*histories):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert dev[key] == pytest.approx(host[key], rel=1e-4, abs=1e-6), key
