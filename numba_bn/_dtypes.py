"""Dtype rules shared by every device: what the kernels read and what they compute in."""

import numpy as np

#: Input dtypes the kernels read, and the dtype they compute elementwise in
#: (float16 data is widened to float32, as PyTorch's mixed precision does).
COMPUTE_DTYPE = {
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
}

#: Dtypes of a module's parameters, buffers and gradients.
PARAMETER_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_COMPUTE_DTYPE_BY_CHAR = {dtype.char: compute for dtype, compute in COMPUTE_DTYPE.items()}


def native_dtype(array):
    """``array``'s dtype in native byte order."""
    return array.dtype.newbyteorder("=")


def compute_dtype(array):
    """The dtype the kernels compute in for ``array``'s data (either byte order)."""
    return _COMPUTE_DTYPE_BY_CHAR[array.dtype.char]
