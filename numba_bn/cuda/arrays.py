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
