"""The devices a suite runs on, and moving test data between host and device.

``DEVICES`` parametrises a test over ``"cpu"`` and ``"cuda"``; the CUDA
parameter is skipped where neither a GPU nor the CUDA simulator is available
(``cuda_support.needs_cuda``). Tests build their data and the float64
reference on the host, give the package ``to_device(x, device)`` (on the CPU:
``x`` itself, in whatever memory layout it has) and read results back with
``host(...)``.
"""

import numpy as np
import pytest

from cuda_support import host, needs_cuda
from numba_bn._device_arrays import is_device_array

__all__ = ["CPU", "CUDA", "DEVICES", "assign", "host", "is_contiguous", "is_on", "to_device"]

CPU = pytest.param("cpu", id="cpu")
CUDA = pytest.param("cuda", id="cuda", marks=needs_cuda)
#: ``@pytest.mark.parametrize("device", DEVICES)``
DEVICES = [CPU, CUDA]


def to_device(array, device):
    """``array`` as an array of ``device``: on the CPU ``array`` itself, on CUDA a device
    array with the same shape, strides and values.

    A non-contiguous host array (strided, transposed, negative or zero strides)
    becomes a view with the same strides over a device copy of the memory it
    spans, so kernels see the same layout as on the host.
    """
    if device == "cpu":
        return array
    assert device == "cuda", device
    from numba import cuda

    array = np.asarray(array)
    if array.flags.c_contiguous or array.size == 0:
        return cuda.to_device(np.ascontiguousarray(array))
    from numba_bn.cuda.numba_cuda import strided_view

    itemsize = array.itemsize
    assert all(s % itemsize == 0 for s in array.strides), array.strides
    steps = [s // itemsize for s in array.strides]  # in elements
    low = sum(min(0, (n - 1) * s) for n, s in zip(array.shape, steps))
    high = sum(max(0, (n - 1) * s) for n, s in zip(array.shape, steps))
    # The element at the lowest address, then everything up to the highest one.
    lowest = array[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in steps)]
    span = np.lib.stride_tricks.as_strided(lowest, shape=(high - low + 1,), strides=(itemsize,)).copy()
    device_span = cuda.to_device(span)
    view = strided_view(device_span[-low:], array.shape, array.strides)
    assert tuple(view.shape) == array.shape and tuple(view.strides) == array.strides
    return view


def is_on(array, device):
    """Whether ``array`` is an array of ``device`` (a NumPy array on the CPU)."""
    if device == "cpu":
        return isinstance(array, np.ndarray)
    assert device == "cuda", device
    return is_device_array(array)


def is_contiguous(array):
    """C-contiguous, for host and device arrays alike."""
    if isinstance(array, np.ndarray):
        return array.flags.c_contiguous
    return array.is_c_contiguous()


def assign(target, values):
    """Copy host ``values`` into the host or device array ``target``, in place."""
    values = np.asarray(values, dtype=target.dtype)
    if isinstance(target, np.ndarray):
        target[...] = values
    else:
        target.copy_to_device(np.ascontiguousarray(values))
