"""Recognising GPU arrays without importing ``numba.cuda``.

The functional API picks its backend from the input's type, and the CPU
backend must reject a GPU array with a clear message: both need to know a
device array when they see one, on machines without CUDA too, so this test
lives outside ``numba_bn.cuda``.
"""

import numpy as np

from ._validation import describe_type

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


def reject_device_array(name, value):
    """For the CPU path: a clear TypeError when ``value`` lives on the GPU."""
    if is_device_array(value):
        raise TypeError(
            f"expected {name} to be a numpy.ndarray on the CPU path, got a CUDA device array "
            f"({describe_type(value)}): {CUDA_HINT_TO_HOST}"
        )
    return value
