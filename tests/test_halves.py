"""``_halves.to_float32``: numpy's float16 -> float32 cast, bit for bit, however the halves are laid out."""

import numpy as np

from poolsieve.filters._halves import to_float32

EVERY_HALF = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
FINITE = EVERY_HALF[np.isfinite(EVERY_HALF)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32),
                                                                                      b.view(np.uint32))


def test_every_finite_half_converts_to_numpys_float():
    out = to_float32(FINITE)
    assert same_bits(out, FINITE.astype(np.float32))
    # the set covers what the integer form must get right: both zeros, subnormals, the largest halves
    assert {0x0000, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF} <= set(FINITE.view(np.uint16).tolist())


def test_inf_and_nan_among_the_halves_come_out_as_numpys():
    out = to_float32(EVERY_HALF)
    assert same_bits(out, EVERY_HALF.astype(np.float32))
    assert np.isinf(out).sum() == 2 and np.isnan(out).sum() == 2 * 1023


def test_layouts_and_shapes():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 9, 33)) * 0.04).astype(np.float16)
    for view in (x, x[:, ::2], x.transpose(2, 0, 1), x[..., 1:], x[:0]):
        assert same_bits(to_float32(view), view.astype(np.float32))
    assert not np.shares_memory(to_float32(x), x)


def test_other_dtypes_pass_through_as_float32():
    f32 = np.linspace(-1, 1, 5, dtype=np.float32)
    assert to_float32(f32) is f32
    assert same_bits(to_float32(f32.astype(np.float64)), f32)
    assert same_bits(to_float32([0.5, -2.0]), np.array([0.5, -2.0], np.float32))
