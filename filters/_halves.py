"""float16 -> float32 conversion, bit for bit numpy's, about 3.5x faster than numpy's own cast here.

The embeddings are stored as float16 and every distance is computed in float32, so the embedding filters
cast a great deal (D2's re-rank spends most of its time in it). numpy 2.4's ``astype`` converts about
0.6 G values/s on this machine; the integer form below (move the half's sign, exponent and mantissa into
a float32's places, then multiply by 2**112 to rebias the exponent, which also turns subnormal halves
into the right normal floats) runs as a few vectorised integer passes. Halves with an all-ones exponent
(inf, NaN) would come out finite, so a block that holds one takes numpy's cast instead.
``benchmarks/half_casts.py`` measures both side by side (alone and in D2's re-rank); ``tests/test_halves.py`` checks
all 65,536 halves.
"""

from __future__ import annotations

import numpy as np

_REBIAS = np.float32(2.0**112)  # 2**(127 - 15): half exponent bias to float32 exponent bias
_SIGN, _EXPONENT = 0x8000, 0x7C00
PIECE = 1 << 16  # values converted at once (256 KB of float32)


def to_float32(a) -> np.ndarray:
    """``a`` as float32 (a new array for float16 input; ``np.asarray`` for anything else)."""
    a = np.asarray(a)
    if a.dtype != np.float16:
        return np.asarray(a, dtype=np.float32)
    a = np.ascontiguousarray(a)
    out = np.empty(a.shape, dtype=np.float32)
    src, dst = a.reshape(-1).view(np.uint16), out.reshape(-1).view(np.uint32)
    sign = np.empty(min(PIECE, src.size), dtype=np.uint32)
    for start in range(0, src.size, PIECE):  # pieces that stay in cache through the passes
        bits = dst[start:start + PIECE]
        mine = sign[:len(bits)]
        np.copyto(bits, src[start:start + PIECE], casting="safe")
        np.bitwise_and(bits, _SIGN, out=mine)
        bits ^= mine  # the magnitude
        if int(bits.max()) >= _EXPONENT:  # inf or NaN somewhere
            return a.astype(np.float32)
        mine <<= 16
        bits <<= 13
        bits |= mine
        values = bits.view(np.float32)
        values *= _REBIAS
    return out
