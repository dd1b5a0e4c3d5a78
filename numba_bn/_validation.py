"""Argument checks shared by the modules and the functional API.

Every check raises before anything is computed or stored, with a message that
names what was expected and what was given.
"""

import math
import numbers

import numpy as np

#: Input dtypes the kernels read, and the dtype they compute in.
COMPUTE_DTYPE = {
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
}
PARAMETER_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe_type(value):
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def check_ndarray(name, value):
    if not isinstance(value, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy.ndarray, got {describe_type(value)}")
    if isinstance(value, np.ma.MaskedArray):  # its mask would be silently ignored
        raise TypeError(
            f"expected {name} to be a numpy.ndarray without a mask, got numpy.ma.MaskedArray; "
            f"pass {name}.filled(...) or {name}.data"
        )
    return value


def check_float_input(name, x):
    """A NumPy array of float16/32/64 (any byte order)."""
    check_ndarray(name, x)
    if x.dtype.newbyteorder("=") not in COMPUTE_DTYPE:
        raise TypeError(
            f"expected {name} of dtype float16, float32 or float64, got {x.dtype}"
        )
    return x


def native_dtype(array):
    return array.dtype.newbyteorder("=")


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"expected {name} to be a bool, got {describe_type(value)}")
    return bool(value)


def check_real(name, value, minimum=None, maximum=None):
    """A finite real number (bools excluded) within the given bounds.

    Integers stay integers (as Python ``int``) so the value reads back, and
    prints in ``repr``, as it was given, like PyTorch's modules.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected {name} to be a real number, got {describe_type(value)}")
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if not np.isfinite(value):
        raise ValueError(f"expected {name} to be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"expected {name} <= {maximum}, got {value}")
    return value


def check_num_features(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"expected num_features to be an int, got {describe_type(value)}")
    if value < 1:
        raise ValueError(f"expected num_features >= 1, got {value}")
    return int(value)


def check_channel_axis(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"expected channel_axis to be 1 or -1, got {describe_type(value)}")
    if value not in (1, -1):
        raise ValueError(f"expected channel_axis to be 1 (channels first) or -1 (channels last), got {value}")
    return int(value)


def check_parameter_dtype(value):
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"expected dtype float32 or float64, got {value!r}") from None
    if dtype not in PARAMETER_DTYPES:
        raise TypeError(f"expected dtype float32 or float64, got {dtype}")
    return dtype


def check_channel_vector(name, value, channels, dtype=None, writeable=False):
    """A ``(channels,)`` float array; of exactly ``dtype`` when one is given."""
    check_ndarray(name, value)
    if dtype is not None:  # a float dtype (a module's): equality settles both checks
        if value.dtype != dtype:
            raise TypeError(f"expected {name} of dtype {dtype}, got {value.dtype}")
    elif value.dtype.newbyteorder("=") not in COMPUTE_DTYPE:
        raise TypeError(f"expected {name} of a float dtype, got {value.dtype}")
    if value.shape != (channels,):
        raise ValueError(f"expected {name} of shape ({channels},), got {value.shape}")
    if writeable and not value.flags.writeable:
        raise ValueError(f"expected {name} to be writeable (it is updated in place), got a read-only array")
    return value


def channel_count(x, channel_axis):
    """Number of channels of ``x`` and the axis they lie on (non-negative)."""
    axis = channel_axis % x.ndim
    return x.shape[axis], axis


def values_per_channel(x, channel_axis):
    """Number of values in each channel: the product of the non-channel axes."""
    axis = channel_axis % x.ndim
    return math.prod(n for i, n in enumerate(x.shape) if i != axis)  # exact Python ints


def check_channels(x, channel_axis, expected):
    channels, axis = channel_count(x, channel_axis)
    if channels != expected:
        raise ValueError(
            f"expected input with {expected} channels on axis {axis}, "
            f"got {channels} (input shape {x.shape})"
        )


def check_values_per_channel(x, channel_axis):
    """Batch statistics need two or more values per channel (PyTorch's check)."""
    _, axis = channel_count(x, channel_axis)
    # Counted from the other axes, not x.size / C, so that zero channels are fine.
    if values_per_channel(x, axis) == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {x.shape}"
        )
