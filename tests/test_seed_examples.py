"""The worked examples of docs/math.md ("Worked examples"), exactly, through the public API.

Each test is named there under its example's heading."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import Conv2D, Flatten, MaxPool2D, ReLU, Sequential
from gpucnn.optim import SGD

# ---------------------------------------------------------------------------------------
# docs/math.md, "Worked example: one hand-trained step".
# ---------------------------------------------------------------------------------------
HAND_STEP_INPUT = [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]  # a hand-drawn "0"
HAND_STEP_KERNEL = [[0.2, 0.4], [0.6, 0.8]]
HAND_STEP_BIAS = 0.5
HAND_STEP_CONV_OUT = [[1.3, 1.9, 1.9, 1.9],
                      [1.7, 1.7, 1.1, 1.9],
                      [1.7, 1.3, 0.5, 1.7],
                      [1.7, 2.1, 1.9, 2.3]]
HAND_STEP_POOLED = [1.9, 1.9, 2.1, 2.3]
HAND_STEP_UPSTREAM = [10, 20, 30, 40]
HAND_STEP_POOL_GRAD = [[0, 10, 20, 0],  # ties (top-right pool: 1.9 three times) -> first maximum
                       [0, 0, 0, 0],
                       [0, 0, 0, 0],
                       [0, 30, 0, 40]]
HAND_STEP_KERNEL_GRAD = [[30, 40], [100, 100]]
HAND_STEP_BIAS_GRAD = 100
# The original hand calculation's summary gives the input gradient as [[6, 20, 28, 8], [0]*4,
# [6, 12, 8, 16], [18, 24, 24, 32]]. Its first row is a slip: its own step-by-step working lists
# exactly these contributions to padded row 1: dX(1,1) += 6, dX(1,2) += 8 and += 12,
# dX(1,3) += 16, i.e. [6, 20, 16, 0] after removing the padding; the "28, 8" equals
# 16 + 12 and 8, entries from a row shifted by one. PyTorch's autograd agrees with the
# working (test_hand_trained_step_input_gradient_matches_pytorch below), so the working decides.
HAND_STEP_INPUT_GRAD = [[6, 20, 16, 0],
                        [0, 0, 0, 0],
                        [6, 12, 8, 16],
                        [18, 24, 24, 32]]
# "LR = 0.001, that is 1 %": the "1 %" is a slip (0.001 is 0.1 %), the numbers use 0.001.
HAND_STEP_LR = 0.001
HAND_STEP_NEW_KERNEL = [[0.17, 0.36], [0.50, 0.70]]
HAND_STEP_NEW_BIAS = 0.4


def hand_step_model(dtype):
    conv = Conv2D(1, 1, 2, padding="same", dtype=dtype, rng=np.random.default_rng(0))
    conv.params["weight"][...] = np.array(HAND_STEP_KERNEL, dtype=dtype)
    conv.params["bias"][...] = HAND_STEP_BIAS
    return Sequential([conv, ReLU(), MaxPool2D(2), Flatten()])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hand_trained_step(dtype):
    model = hand_step_model(dtype)
    conv, relu, pool, flatten = model.layers
    x = np.array(HAND_STEP_INPUT, dtype=dtype)[None, None]  # (N=1, C=1, 4, 4)
    tol = dict(rtol=0, atol=1e-12 if dtype == np.float64 else 2e-6)

    # forward, step by step
    conv_out = conv.forward(x)
    np.testing.assert_allclose(conv_out[0, 0], HAND_STEP_CONV_OUT, **tol)
    assert conv_out[0, 0, 0, 0] == pytest.approx(1.3)  # the extra zero row/column goes top/left
    relu_out = relu.forward(conv_out)
    pooled = pool.forward(relu_out)
    flat = flatten.forward(pooled)
    np.testing.assert_allclose(flat[0], HAND_STEP_POOLED, **tol)
    assert flat.dtype == dtype

    # backward, step by step
    dflat = np.array([HAND_STEP_UPSTREAM], dtype=dtype)
    dpooled = flatten.backward(dflat)
    np.testing.assert_array_equal(dpooled[0, 0], [[10, 20], [30, 40]])
    drelu = pool.backward(dpooled)
    np.testing.assert_array_equal(drelu[0, 0], HAND_STEP_POOL_GRAD)  # exact: ties routed to the first max
    dconv = relu.backward(drelu)
    dx = conv.backward(dconv)
    np.testing.assert_allclose(conv.grads["weight"][0, 0], HAND_STEP_KERNEL_GRAD, **tol)
    np.testing.assert_allclose(conv.grads["bias"], [HAND_STEP_BIAS_GRAD], **tol)
    np.testing.assert_allclose(dx[0, 0], HAND_STEP_INPUT_GRAD, **tol)
    assert dx.dtype == dtype and conv.grads["weight"].dtype == dtype

    # one SGD step: w = w - lr * grad
    SGD(model, lr=HAND_STEP_LR).step()
    np.testing.assert_allclose(conv.params["weight"][0, 0], HAND_STEP_NEW_KERNEL, **tol)
    np.testing.assert_allclose(conv.params["bias"], [HAND_STEP_NEW_BIAS], **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hand_trained_step_through_sequential(dtype):
    """The same example through Sequential.forward/backward (no layer-by-layer calls)."""
    model = hand_step_model(dtype)
    x = np.array(HAND_STEP_INPUT, dtype=dtype)[None, None]
    np.testing.assert_allclose(model.forward(x)[0], HAND_STEP_POOLED, rtol=1e-6)
    dx = model.backward(np.array([HAND_STEP_UPSTREAM], dtype=dtype))
    np.testing.assert_allclose(dx[0, 0], HAND_STEP_INPUT_GRAD, rtol=1e-6)


@pytest.mark.parametrize("order", ["as given", "reversed kernel sum"])
def test_hand_trained_step_ties_survive_rounding(order):
    """The top-right pool holds three 1.9s that are only equal in decimal arithmetic:
    in float64 0.2+0.4+0.8+0.5 != 0.6+0.8+0.5. Whatever the rounding, the first one
    (row-major) takes the gradient, so perturb the pool's values by a few ulps."""
    pool = MaxPool2D(2)
    x = np.array(HAND_STEP_CONV_OUT, dtype=np.float64)[None, None].copy()
    ulp = np.spacing(1.9)
    if order == "as given":
        x[0, 0, 0, 3] += 2 * ulp  # a later tie rounded slightly larger
        x[0, 0, 1, 3] += ulp
    else:
        x[0, 0, 0, 2] -= 2 * ulp  # the first tie rounded slightly smaller
    pool.forward(x)
    dx = pool.backward(np.array([[[[10.0, 20.0], [30.0, 40.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], HAND_STEP_POOL_GRAD)


def test_hand_trained_step_input_gradient_matches_pytorch():
    """The independent reference that decides the hand calculation's input-gradient slip
    (docs/math.md, "Worked example: one hand-trained step", the notes)."""
    torch = pytest.importorskip("torch", reason="torch is the oracle for the hand calculation's slip")
    x = torch.tensor(HAND_STEP_INPUT, dtype=torch.float64)[None, None].requires_grad_()
    w = torch.tensor(HAND_STEP_KERNEL, dtype=torch.float64)[None, None].requires_grad_()
    b = torch.tensor([HAND_STEP_BIAS], dtype=torch.float64).requires_grad_()
    padded = torch.nn.functional.pad(x, (1, 0, 1, 0))  # (left, right, top, bottom): top/left
    y = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(padded, w, b)), 2)
    (y.flatten() * torch.tensor(HAND_STEP_UPSTREAM, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(x.grad[0, 0].numpy(), HAND_STEP_INPUT_GRAD)
    np.testing.assert_allclose(w.grad[0, 0].numpy(), HAND_STEP_KERNEL_GRAD)


# ---------------------------------------------------------------------------------------
# docs/math.md, "Worked example: a valid convolution" (a 4x4 image, a 2x2 kernel).
# ---------------------------------------------------------------------------------------
def test_valid_convolution():
    image = np.array([[1, -2, -9, 6], [5, 8, 7, 9], [-6, 2, 0, -1], [-3, 4, -1, 0]], dtype=np.float32)
    conv = Conv2D(1, 1, 2, padding="valid", rng=np.random.default_rng(0))
    conv.params["weight"][...] = np.array([[6, 0], [-7, -1]], dtype=np.float32)
    conv.params["bias"][...] = 0
    y = conv.forward(image[None, None])
    np.testing.assert_array_equal(y[0, 0], [[-37, -75, -112], [70, 34, 43], [-19, -15, 7]])


# ---------------------------------------------------------------------------------------
# docs/math.md, "Worked example: a strided convolution as a sum" and the examples after it:
# pen-and-paper exercises, stride s = 2, padding p = 0. Answers worked out by hand (below)
# and confirmed against the naive reference in tests/reference.py.
# ---------------------------------------------------------------------------------------
STRIDED_I = [[1, 1, -2, 0, 1],
             [1, 0, 0, 2, 1],
             [0, 1, 0, 5, -1],
             [-2, 1, 0, -1, 1],
             [0, 1, 0, 5, -1]]
STRIDED_K = [[0, 1, 1], [1, 0, 0], [0, 1, 0]]
# O[i, j] = sum_mn K[m, n] * I[2i + m, 2j + n]:
#   O[0,0] = 1 - 2 + 1 + 1 = 1     O[0,1] = 1 + 5 = 6
#   O[1,0] = 1 - 2 + 1 = 0         O[1,1] = 5 - 1 + 5 = 9
STRIDED_O = [[1, 6], [0, 9]]
# dO/dK summed over the outputs: dK[m, n] = sum_ij I[2i + m, 2j + n]
STRIDED_DK = [[-1, 7, -2], [-1, 2, 2], [0, 12, -2]]
# dO/dI summed over the outputs: dI[2i + m, 2j + n] += K[m, n]; windows overlap in row and column 2
STRIDED_DI = [[0, 1, 1, 1, 1],
              [1, 0, 1, 0, 0],
              [0, 2, 1, 2, 1],
              [1, 0, 1, 0, 0],
              [0, 1, 0, 1, 0]]
# 3x3 max pooling, stride 2: window maxima
STRIDED_MAXPOOL = [[1, 5], [1, 5]]


def strided_conv(dtype=np.float64):
    conv = Conv2D(1, 1, 3, stride=2, padding=0, dtype=dtype, rng=np.random.default_rng(0))
    conv.params["weight"][...] = np.array(STRIDED_K, dtype=dtype)
    conv.params["bias"][...] = 0
    return conv


def test_strided_output_size():
    """200x200x3 image, 12323 kernels of 40x40x3, s=2, p=0 -> (200 - 40)/2 + 1 = 81: 81x81x12323."""
    conv = Conv2D(3, 12323, 40, stride=2, padding=0, rng=np.random.default_rng(0))
    assert conv.output_shape((1, 3, 200, 200)) == (1, 12323, 81, 81)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strided_convolution_as_a_sum(dtype):
    import reference
    image = np.array(STRIDED_I, dtype=dtype)[None, None]
    y = strided_conv(dtype).forward(image)
    np.testing.assert_array_equal(y[0, 0], STRIDED_O)
    ref = reference.conv2d(image, np.array(STRIDED_K, float)[None, None], np.zeros(1), stride=2)
    np.testing.assert_array_equal(ref[0, 0], STRIDED_O)


def test_strided_convolution_as_a_matrix_multiplication():
    """im2col: each 3x3 window becomes a column; O = k^T @ columns."""
    from gpucnn.nn.layers.im2col import im2col, to_chwn
    image = np.array(STRIDED_I, dtype=np.float64)[None, None]
    cols = im2col(to_chwn(image), 3, 3, 2, 2, 2)  # (C*kh*kw, OH*OW*N) = (9, 4)
    np.testing.assert_array_equal(cols[:, 0], np.array(STRIDED_I)[0:3, 0:3].ravel())
    np.testing.assert_array_equal(cols[:, 3], np.array(STRIDED_I)[2:5, 2:5].ravel())
    k_vec = np.array(STRIDED_K, dtype=np.float64).ravel()
    np.testing.assert_array_equal((k_vec @ cols).reshape(2, 2), STRIDED_O)


def test_strided_convolution_kernel_gradient():
    """dL/dK with L = sum(O): as a layer backward, and as columns @ dL/dO with im2col."""
    from gpucnn.nn.layers.im2col import im2col, to_chwn
    conv = strided_conv()
    image = np.array(STRIDED_I, dtype=np.float64)[None, None]
    conv.forward(image)
    conv.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(conv.grads["weight"][0, 0], STRIDED_DK)
    cols = im2col(to_chwn(image), 3, 3, 2, 2, 2)  # (9, 4): the matrix "I" of the exercise, transposed
    np.testing.assert_array_equal((cols @ np.ones(4)).reshape(3, 3), STRIDED_DK)


def test_strided_convolution_input_gradient():
    """dL/dI with L = sum(O): as a layer backward, as col2im of k^T @ dL/dO (the kernel in
    every column, added back onto its window), and from the naive loops."""
    import reference
    from gpucnn.nn.layers.im2col import col2im
    conv = strided_conv()
    image = np.array(STRIDED_I, dtype=np.float64)[None, None]
    conv.forward(image)
    dx = conv.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx[0, 0], STRIDED_DI)
    k_vec = np.array(STRIDED_K, dtype=np.float64).ravel()
    dcols = np.outer(k_vec, np.ones(4))  # (9, 4) = k^T @ dL/dO
    np.testing.assert_array_equal(col2im(dcols, 1, 3, 3, (5, 5), 2, 2, 2)[0, :, :, 0], STRIDED_DI)
    ref_dx, _, _ = reference.conv2d_backward(image, np.array(STRIDED_K, float)[None, None],
                                             np.ones((1, 1, 2, 2)), stride=2)
    np.testing.assert_array_equal(ref_dx[0, 0], STRIDED_DI)


def test_max_pooling_3x3_stride2():
    pool = MaxPool2D(3, stride=2)
    y = pool.forward(np.array(STRIDED_I, dtype=np.float64)[None, None])
    np.testing.assert_array_equal(y[0, 0], STRIDED_MAXPOOL)


def test_package_exports_the_layers():
    for name in ("Conv2D", "ReLU", "MaxPool2D", "AvgPool2D", "Flatten", "Dense", "SoftmaxCrossEntropy"):
        assert hasattr(gpucnn, name)


# ---------------------------------------------------------------------------------------
# References a reader can follow.
# ---------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


def test_math_page_names_only_tests_that_exist():
    """Every `path.py::name` (and `::name`, of the file named before it) in docs/math.md is a
    function of that file, so the page does not rot when tests or helpers move."""
    text = (REPO / "docs" / "math.md").read_text(encoding="utf-8")
    named, current = [], None
    for path, name in re.findall(r"([\w/]+\.py)?::(\w+)", text):
        current = path or current
        named.append((current, name))
    assert len(named) >= 20
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^\s*def {name}\(", (REPO / path).read_text(encoding="utf-8"), re.M)]
    assert not missing, f"docs/math.md names functions that do not exist: {missing}"


def test_no_reference_a_reader_cannot_follow():
    """The course material the examples came from is not in the repository: code and docs cite
    docs/math.md's sections or the tests instead of it."""
    unfollowable = re.compile(r"seed[ _]?0\d\d|seeds[/]|course[ ]document", re.I)
    files = [REPO / "README.md", *[p for folder in ("gpucnn", "scripts", "tests", "docs")
                                   for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md", ".cu")]]
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if unfollowable.search(line)]
    assert not found, "references a reader cannot follow:\n" + "\n".join(found)
