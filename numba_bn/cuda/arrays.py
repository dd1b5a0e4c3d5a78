"""Device arrays: recognising them, allocating, and moving values to and from the host.

Every allocation and copy is queued on the stream of ``stream.current_stream()``.
"""

import numpy as np

from .._device_arrays import CUDA_HINT_TO_DEVICE, is_device_array
from .._validation import describe_type
from .numba_cuda import cuda
from .stream import current_stream


def as_device_array(name, value):
    """``value`` as a ``numba.cuda`` device array, without a copy; TypeError for anything else."""
    if isinstance(value, np.ndarray):
        raise TypeError(f"expected {name} to be a CUDA device array, got a numpy.ndarray: {CUDA_HINT_TO_DEVICE}")
    if not is_device_array(value):
        raise TypeError(
            f"expected {name} to be a CUDA device array (numba.cuda, or any object with "
            f"__cuda_array_interface__), got {describe_type(value)}"
        )
    if hasattr(value, "copy_to_host") and hasattr(value, "shape"):
        return value
    return cuda.as_cuda_array(value)


def device_array(shape, dtype):
    """A new uninitialised device array."""
    return cuda.device_array(shape, np.dtype(dtype), stream=current_stream())


def to_device(host_array):
    """A new device array holding a copy of ``host_array`` (C-contiguous)."""
    return cuda.to_device(np.ascontiguousarray(host_array), stream=current_stream())


def copy_from_host(target, values):
    """Copy host ``values`` (same shape and dtype) into the device array ``target``."""
    target.copy_to_device(np.ascontiguousarray(values), stream=current_stream())


def to_host(array):
    """A NumPy copy of a device array, after the work queued on the stream."""
    stream = current_stream()
    host = array.copy_to_host(stream=stream)
    if stream:
        stream.synchronize()
    return host


def stream_key(stream):
    """A hashable name of ``stream``: its CUDA handle (0 for the default stream)."""
    if stream is None or (isinstance(stream, int) and stream == 0):
        return 0
    handle = getattr(stream, "handle", None)
    if handle is None:  # the simulator's streams have no handle
        return id(stream)
    value = getattr(handle, "value", None)  # a ctypes pointer, or a CUDA binding object
    return int(handle) if value is None else (value or 0)


def _byte_range(array):
    """``[start, end)`` addresses of the bytes ``array`` can touch (its data pointer and strides)."""
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is None:  # the CUDA simulator's arrays wrap host memory
        interface = array.__array_interface__
    start = end = interface["data"][0]
    for size, stride in zip(array.shape, array.strides):
        if size > 1:
            if stride < 0:
                start += stride * (size - 1)
            else:
                end += stride * (size - 1)
    return start, end + array.dtype.itemsize


def overlap(a, b):
    """``"same"`` when ``a`` and ``b`` are the same elements in the same layout, ``"partial"`` when
    their byte ranges meet otherwise (conservatively), ``"none"`` when they are apart."""
    if a.size == 0 or b.size == 0:
        return "none"
    (a_start, a_end), (b_start, b_end) = _byte_range(a), _byte_range(b)
    if a_end <= b_start or b_end <= a_start:
        return "none"
    same = (a_start, a_end) == (b_start, b_end) and tuple(a.strides) == tuple(b.strides)
    return "same" if same and tuple(a.shape) == tuple(b.shape) else "partial"
