"""Batch augmentation: the gather against a per-image loop, the random draws' properties,
reproducibility from the host generator, the spec parser, and device discipline."""
from __future__ import annotations

import numpy as np
import pytest

from gpucnn.data.augment import Augment, crop_and_flip, parse_augment
from gpucnn.backends.backend import get_backend

N, C, H, W = 32, 2, 6, 5



def distinct_images(n=N, dtype=np.float32):
    """(n, C, H, W) of distinct positive values: any two different crops differ, and 0 is padding."""
    return (np.random.default_rng(0).permutation(n * C * H * W) + 1).astype(dtype).reshape(n, C, H, W)


def reference(x, pad, top, left, flip):
    """One image at a time: pad, crop at (top, left), mirror left-right when flipped."""
    out = np.empty_like(x)
    for n in range(len(x)):
        padded = np.pad(x[n], ((0, 0), (pad, pad), (pad, pad)))
        crop = padded[:, top[n]:top[n] + x.shape[2], left[n]:left[n] + x.shape[3]]
        out[n] = crop[..., ::-1] if flip[n] else crop
    return out


def recover_draws(x, out, pad, flips=(False, True)):
    """For each output image, the one (top, left, flip) whose reference crop it equals."""
    draws = []
    for n in range(len(x)):
        matches = [(t, l, f) for t in range(2 * pad + 1) for l in range(2 * pad + 1) for f in flips
                   if np.array_equal(reference(x[n:n + 1], pad, [t], [l], [f])[0], out[n])]
        assert len(matches) == 1, f"image {n} is no crop (or flipped crop) of its padded input"
        draws.append(matches[0])
    return draws


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_crop_and_flip_equals_a_per_image_loop(pad):
    x = np.random.default_rng(1).standard_normal((N, C, H, W)).astype(np.float32)
    r = np.random.default_rng(2)
    top, left = r.integers(0, 2 * pad + 1, N), r.integers(0, 2 * pad + 1, N)
    flip = r.random(N) < 0.5
    out = crop_and_flip(x, pad, top, left, flip)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, reference(x, pad, top, left, flip))
    np.testing.assert_array_equal(crop_and_flip(x, pad, top, left), reference(x, pad, top, left, [False] * N))


def test_known_offset_moves_the_content():
    x = distinct_images(1)
    out = crop_and_flip(x, 2, np.array([0]), np.array([3]))  # content 2 rows down, 1 column left
    np.testing.assert_array_equal(out[0, :, 2:, :-1], x[0, :, :-2, 1:])
    assert not out[0, :, :2].any() and not out[0, :, :, -1].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", ["shift:2", "flip", "shift:1,flip", "none"])
def test_shape_dtype_and_input_untouched(spec, dtype):
    x = distinct_images(dtype=dtype)
    before = x.copy()
    out = parse_augment(spec)(x, np.random.default_rng(3))
    assert out.shape == x.shape and out.dtype == dtype and out.flags.c_contiguous
    assert out is not x and not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, before)


def test_flip_mirrors_about_half_of_the_images_and_leaves_the_rest():
    x = distinct_images(64)
    out = Augment(flip=True)(x, np.random.default_rng(4))
    flipped = [np.array_equal(out[n], x[n, ..., ::-1]) for n in range(64)]
    kept = [np.array_equal(out[n], x[n]) for n in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image one or the other
    assert 16 <= sum(flipped) <= 48


def test_shift_takes_every_pixel_from_the_image_or_the_padding_with_varying_offsets():
    k = 2
    x = distinct_images()
    out = Augment(shift=k)(x, np.random.default_rng(5))
    for n in range(N):
        assert np.isin(out[n], np.append(x[n], 0)).all()
    draws = recover_draws(x, out, k, flips=(False,))
    tops, lefts = {t for t, _, _ in draws}, {l for _, l, _ in draws}
    assert len(tops) >= 3 and len(lefts) >= 3  # offsets differ from image to image
    assert tops <= set(range(2 * k + 1)) and lefts <= set(range(2 * k + 1))


def test_shift_and_flip_together_are_one_crop_then_a_mirror():
    out = parse_augment("shift:1,flip")(distinct_images(), np.random.default_rng(6))
    draws = recover_draws(distinct_images(), out, 1)
    assert {f for _, _, f in draws} == {False, True}


def test_reproducible_from_the_host_generator_state():
    x = distinct_images()
    augment = parse_augment("shift:2,flip")
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    first, second = augment(x, rng), augment(x, rng)
    assert not np.array_equal(first, second)  # the generator advanced
    rng.bit_generator.state = state
    np.testing.assert_array_equal(augment(x, rng), first)
    np.testing.assert_array_equal(augment(x, rng), second)


def test_default_generator_is_used_when_rng_is_none():
    import gpucnn

    x = distinct_images()
    gpucnn.manual_seed(11)
    first = Augment(shift=2)(x)
    gpucnn.manual_seed(11)
    np.testing.assert_array_equal(Augment(shift=2)(x), first)


def test_device_augmentation_is_valid_and_transfers_nothing(device_backend):
    x = distinct_images()
    xb = device_backend.asarray(x)
    augment = parse_augment("shift:2,flip")
    rng = np.random.default_rng(8)
    xp = device_backend.xp
    if hasattr(xp, "reset_transfers"):
        xp.reset_transfers()
    out = augment(xb, rng)
    out2 = augment(xb, rng)
    if hasattr(xp, "transfers"):
        assert xp.transfers == {"to_device": 0, "to_host": 0}
    assert type(out) is type(xb) and out.dtype == np.float32 and out.shape == xb.shape
    host = device_backend.to_numpy(out)
    recover_draws(x, host, 2)
    assert not np.array_equal(host, device_backend.to_numpy(out2))
    np.testing.assert_array_equal(device_backend.to_numpy(xb), x)


def test_spec_round_trip_and_parsing():
    assert repr(parse_augment("shift:4,flip")) == "Augment(shift=4, flip=True)"
    assert repr(parse_augment(" FLIP , shift:3")) == "Augment(shift=3, flip=True)"
    for spec in ("shift:2", "flip", "shift:4,flip", "none"):
        assert parse_augment(spec).spec == spec
    assert parse_augment("").spec == "none" and not parse_augment("none")


@pytest.mark.parametrize("spec, message", [
    ("rotate:3", r"augmentation spec 'rotate:3': unknown part 'rotate:3'; accepted: shift:K .*, flip .*, none"),
    ("shift", r"expected shift:K with K a positive int, got 'shift'; e.g. shift:2"),
    ("shift:0", r"expected shift:K with K a positive int, got 'shift:0'"),
    ("shift:-2", r"got 'shift:-2'"),
    ("shift:1.5", r"got 'shift:1.5'"),
    ("flip:1", r"unknown part 'flip:1'"),
    ("shift:2,shift:3", r"names 'shift' twice"),
    ("none,flip", r"unknown part 'none'"),
    ("shift:2,", r"unknown part ''"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_augment(spec)


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match=r"parse_augment expected a string like 'shift:2,flip', got int"):
        parse_augment(2)
    with pytest.raises(ValueError, match=r"Augment expected shift, a non-negative int \(pixels\), got -1"):
        Augment(shift=-1)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, C, H, W\), got \(4, 6, 5\); add a channel"):
        Augment(shift=1)(np.zeros((4, 6, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected a shift smaller than the images \(6 x 5\), got shift:5"):
        Augment(shift=5)(distinct_images())


def test_cpu_backend_arrays_work_unchanged():
    backend = get_backend("cpu")
    out = Augment(shift=1, flip=True)(backend.asarray(distinct_images()), np.random.default_rng(9))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
