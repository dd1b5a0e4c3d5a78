"""The CPU roofline: a copy with the same threads as the kernels it is compared with.

NumPy's ``copyto`` runs on one thread, and one core cannot saturate the
memory bus on most machines, so a single-threaded copy understates the
bandwidth that numba_bn's parallel kernels can reach. This copy splits the
array into contiguous parts over Numba's threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Values per part of the parallel copy: long, contiguous, cache-line multiples.
_PART = 1 << 16


@njit(parallel=True, cache=True)
def _copy_flat(source, destination):
    total = source.size
    parts = (total + _PART - 1) // _PART
    for p in prange(parts):
        start = np.int64(p) * _PART
        stop = min(start + _PART, total)
        destination[start:stop] = source[start:stop]


def parallel_copy(source: np.ndarray, destination: np.ndarray) -> None:
    """Copy ``source`` into ``destination`` (same shape) on Numba's threads.

    Parameters
    ----------
    source, destination : numpy.ndarray
        Arrays of one shape and dtype; contiguous ones are copied in parallel,
        others with ``np.copyto``.
    """
    if source.flags.c_contiguous and destination.flags.c_contiguous and source.dtype == destination.dtype:
        _copy_flat(source.reshape(-1), destination.reshape(-1))
    else:
        np.copyto(destination, source)
