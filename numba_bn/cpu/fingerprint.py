"""Notice, cheaply and on a best-effort basis, an input modified between forward and backward.

Backward reads the forward's input by reference (a copy would double the
memory). PyTorch catches in-place changes to saved tensors with version
counters; NumPy arrays have none. So forward records the bytes of a fixed
sample of the input's elements - the first, the last and ``SAMPLE_SIZE - 2``
more spread over the whole array by a low-discrepancy (golden-ratio) sequence,
so the sample does not alias with the array's shape - and backward compares
them. That costs O(SAMPLE_SIZE) whatever the input's size, and misses only
changes that leave every sampled element bit-identical.
"""

import functools

import numpy as np

#: Elements recorded per forward; arrays this small are recorded whole.
SAMPLE_SIZE = 64

_GOLDEN_FRACTION = (5**0.5 - 1) / 2


@functools.lru_cache(maxsize=64)  # a training loop sees the same few sizes at every step
def _sample_positions(size):
    """Flat indices (read-only) of the sampled elements of an array of ``size`` elements."""
    if size <= SAMPLE_SIZE:
        positions = np.arange(size)
    else:
        positions = (np.arange(SAMPLE_SIZE) * _GOLDEN_FRACTION % 1.0 * size).astype(np.int64)
        positions[0], positions[1] = 0, size - 1
    positions.flags.writeable = False
    return positions


def record(x):
    """The bytes of ``x``'s sampled elements (any strides, any byte order)."""
    positions = _sample_positions(x.size)
    if x.flags.c_contiguous:  # a flat view indexes faster than the flat iterator
        return x.reshape(-1)[positions].tobytes()
    return x.flat[positions].tobytes()


def check_unchanged(x, recorded):
    """Raise ``ValueError`` if ``x``'s sampled elements differ from ``recorded``."""
    if record(x) != recorded:
        raise ValueError(
            "expected the input of the most recent forward to be unchanged at backward, "
            "got an input modified in place since then (sampled values differ); "
            "backward reads that array, so pass a copy to forward or run forward again"
        )
