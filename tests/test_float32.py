"""The fast fp16 -> float32 cast gives numpy's bits exactly, whatever the array (specials, read-only,
strided, small or large)."""

from __future__ import annotations

import numpy as np
import pytest

from poolsieve.filters._float32 import SMALL, as_float32, contiguous_float32


def every_float16() -> np.ndarray:
    """All 65,536 float16 bit patterns: zeros, subnormals, normals, infinities and NaNs."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a).view(np.uint32), np.ascontiguousarray(b).view(np.uint32))


def test_every_float16_value_converts_to_numpys_bits():
    x = every_float16()
    assert x.size > SMALL
    got, expected = as_float32(x), x.astype(np.float32)
    nan = np.isnan(expected)
    assert nan.sum() == 2046 and np.isnan(got[nan]).all()  # NaNs stay NaN (torch quiets signalling ones)
    assert same_bits(np.where(nan, 0, got), np.where(nan, 0, expected))


@pytest.mark.parametrize("make", [
    lambda x: x[:, ::3],  # strided
    lambda x: x.T,  # Fortran-ordered
    lambda x: np.lib.stride_tricks.as_strided(x, writeable=False),  # read-only (a memory map's)
    lambda x: x[:3, :5],  # small: numpy's own cast
    lambda x: x.reshape(16, 64, 64),  # more than two axes
])
def test_any_layout_converts_the_same(make):
    x = make(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float16))
    assert same_bits(as_float32(x), np.asarray(x, dtype=np.float32))
    c = contiguous_float32(x)
    assert c.flags.c_contiguous and same_bits(c, np.ascontiguousarray(x, dtype=np.float32))


def test_float32_and_float64_inputs_keep_numpys_meaning():
    x32 = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    assert as_float32(x32) is x32
    x64 = x32.astype(np.float64) / 3
    assert same_bits(as_float32(x64), x64.astype(np.float32))
