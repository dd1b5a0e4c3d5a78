"""Which device an array lives on, CUDA availability, and host/device moves.

Nothing here imports ``numba.cuda`` until a CUDA array or device is actually
involved, so ``import numba_bn`` and the CPU path work on any machine.
"""

import numpy as np

from ._validation import COMPUTE_DTYPE, describe_type

CUDA_HINT_TO_DEVICE = "move it to the GPU with numba.cuda.to_device(x)"
CUDA_HINT_TO_HOST = "copy it to the host with x.copy_to_host(), or move the module with bn.cuda()"


def is_device_array(value):
    """A ``numba.cuda`` device array (real or simulated) or a ``__cuda_array_interface__`` object."""
    if isinstance(value, np.ndarray):
        return False
    if hasattr(value, "__cuda_array_interface__"):
        return True
    module = type(value).__module__ or ""
    return module.startswith("numba.cuda") and hasattr(value, "copy_to_host")


def cuda_available():
    """True when kernels can run: a usable GPU, or the CUDA simulator."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # missing CUDA bindings or driver: no CUDA, the CPU path still works
        return False


def require_cuda():
    if not cuda_available():
        raise ValueError(
            "expected a usable CUDA device for device='cuda', got none: numba.cuda.is_available() is "
            "False (no NVIDIA GPU or driver; set NUMBA_ENABLE_CUDASIM=1 for the CUDA simulator)"
        )


def as_device_array(name, value):
    """``value`` as a ``numba.cuda`` device array, without a copy; TypeError for anything else."""
    if isinstance(value, np.ndarray):
        raise TypeError(f"expected {name} to be a CUDA device array, got a numpy.ndarray: {CUDA_HINT_TO_DEVICE}")
    if not is_device_array(value):
        raise TypeError(
            f"expected {name} to be a CUDA device array (numba.cuda, or any object with "
            f"__cuda_array_interface__), got {describe_type(value)}"
        )
    from numba import cuda

    if hasattr(value, "copy_to_host") and hasattr(value, "shape"):
        return value
    return cuda.as_cuda_array(value)


def check_device_float_input(name, value):
    """A float16/32/64 device array (converted from ``__cuda_array_interface__`` objects)."""
    x = as_device_array(name, value)
    if x.dtype not in COMPUTE_DTYPE:
        raise TypeError(f"expected {name} of dtype float16, float32 or float64, got {x.dtype}")
    return x


def check_device_vector(name, value, channels, dtype=None, writeable=False):
    """A ``(channels,)`` float device array; of exactly ``dtype`` when one is given.

    ``writeable`` is accepted for symmetry with ``check_channel_vector``:
    device memory is always writeable.
    """
    vector = as_device_array(name, value)
    if dtype is not None and vector.dtype != dtype:
        raise TypeError(f"expected {name} of dtype {dtype}, got {vector.dtype}")
    if vector.dtype not in COMPUTE_DTYPE:
        raise TypeError(f"expected {name} of a float dtype, got {vector.dtype}")
    if tuple(vector.shape) != (channels,):
        raise ValueError(f"expected {name} of shape ({channels},), got {tuple(vector.shape)}")
    return vector


def reject_device_array(name, value):
    """For the CPU path: a clear TypeError when ``value`` lives on the GPU."""
    if is_device_array(value):
        raise TypeError(
            f"expected {name} to be a numpy.ndarray on the CPU path, got a CUDA device array "
            f"({describe_type(value)}): {CUDA_HINT_TO_HOST}"
        )
    return value


def to_device(host_array):
    from . import cuda_backend

    return cuda_backend.to_device(host_array)


def to_host(array):
    """A NumPy copy of a device array (waits for the work queued on the current stream)."""
    from . import cuda_backend

    return cuda_backend.to_host(array)
