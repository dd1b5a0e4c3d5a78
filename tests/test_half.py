"""The float16 codec used by the CPU kernels, against NumPy's conversions."""

import numpy as np
from numba import njit

from numba_bn.cpu.half import load, store


@njit(cache=True)
def _decode_all(bits):
    out = np.empty(bits.size, np.float32)
    for i in range(bits.size):
        out[i] = load(bits[i])
    return out


@njit(cache=True)
def _encode_all(values, out):
    for i in range(values.size):
        out[i] = store(values[i], out)
    return out


def test_decode_every_half_exactly():
    bits = np.arange(2**16, dtype=np.uint16)
    decoded = _decode_all(bits)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(decoded), nan)
    assert np.array_equal(decoded[~nan].view(np.uint32), expected[~nan].view(np.uint32))  # signed zeros too


def test_encode_rounds_like_numpy():
    rng = np.random.default_rng(0)
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    halves = halves[np.isfinite(halves)]
    midpoints = ((halves[:-1].astype(np.float64) + halves[1:]) / 2).astype(np.float32)  # ties
    scales = [1e-8, 6e-8, 1e-5, 1.0, 300.0, 6e4, 7e4]
    random = np.concatenate([rng.standard_normal(20000).astype(np.float32) * s for s in scales])
    special = np.array([np.inf, -np.inf, 65519.99, 65520.0, -65520.0, 2**-25, 2**-25 * 1.0001, 3 * 2**-26, 0.0, -0.0], np.float32)
    values = np.concatenate([halves, midpoints, np.nextafter(midpoints, np.float32(np.inf)), random, special])
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(_encode_all(values, np.empty(values.size, np.uint16)), expected)


def test_encode_nan_stays_nan():
    values = np.array([np.nan, -np.nan], np.float32)
    encoded = _encode_all(values, np.empty(2, np.uint16)).view(np.float16)
    assert np.all(np.isnan(encoded))
