"""Argument checks shared by the modules and the functional API.

Every check raises before anything is computed or stored, with a message that
names what was expected and what was given.
"""

import math
import numbers

import numpy as np

from ._dtypes import COMPUTE_DTYPE, PARAMETER_DTYPES, native_dtype


def describe_type(value):
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _conversion_hint(name, value):
    """How to turn ``value`` (not a NumPy array) into one, for an error message."""
    if type(value).__module__.split(".")[0] == "torch":
        return f"; pass {name}.numpy(), or {name}.detach().cpu().numpy() for a tensor that requires grad or is on a GPU"
    if isinstance(value, (list, tuple)) or np.isscalar(value):
        return f"; pass np.asarray({name}, dtype=np.float32)"
    return ""


def check_ndarray(name, value):
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"expected {name} to be a numpy.ndarray, got {describe_type(value)}" + _conversion_hint(name, value)
        )
    if isinstance(value, np.ma.MaskedArray):  # its mask would be silently ignored
        raise TypeError(
            f"expected {name} to be a numpy.ndarray without a mask, got numpy.ma.MaskedArray; "
            f"pass {name}.filled(...) or {name}.data"
        )
    return value


def check_float_dtype(name, x):
    """An array (of any device) of float16/32/64 data, in either byte order."""
    if native_dtype(x) not in COMPUTE_DTYPE:
        raise TypeError(
            f"expected {name} of dtype float16, float32 or float64, got {x.dtype}; "
            f"convert it with {name}.astype(np.float32)"
        )
    return x


def check_module_dtype(name, x, module_dtype, module_name):
    """``x``'s dtype is one a module of ``module_dtype`` takes: its own, or float16 for float32.

    No silent casts (as in PyTorch): the message says how to convert, and
    reminds that NumPy makes float64 arrays by default.
    """
    dtype = native_dtype(x)
    allowed = (module_dtype, np.dtype(np.float16)) if module_dtype == np.float32 else (module_dtype,)
    if dtype in allowed:
        return x
    message = (
        f"expected {name} of dtype {' or '.join(map(str, allowed))} for a {module_dtype} {module_name}, "
        f"got {x.dtype}; convert it with {name}.astype(np.{module_dtype})"
    )
    if dtype in PARAMETER_DTYPES:
        message += f" or build the module with dtype=np.{dtype}"
    if dtype == np.float64:
        message += " (NumPy creates float64 arrays unless told otherwise)"
    raise TypeError(message)


def check_like(name, array, reference, reference_name):
    """``array`` has ``reference``'s shape and (native) dtype."""
    if tuple(array.shape) != tuple(reference.shape):
        raise ValueError(
            f"expected {name} of shape {tuple(reference.shape)} ({reference_name}), got {tuple(array.shape)}"
        )
    if native_dtype(array) != native_dtype(reference):
        expected = native_dtype(reference)
        raise TypeError(
            f"expected {name} of dtype {expected} ({reference_name}), got {array.dtype}; "
            f"convert it with {name}.astype(np.{expected})"
        )
    return array


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


#: The activations a fused forward applies.
ACTIVATIONS = (None, "relu")


def check_activation(value):
    """None or the name of an activation from :data:`ACTIVATIONS`."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected activation to be None or a str, got {describe_type(value)}")
    if value not in ACTIVATIONS:
        raise ValueError(f"expected activation to be one of {list(ACTIVATIONS)}, got {value!r}")
    return value


def check_parameter_dtype(value):
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"expected dtype float32 or float64, got {value!r}") from None
    if dtype not in PARAMETER_DTYPES:
        raise TypeError(f"expected dtype float32 or float64, got {dtype}")
    return dtype


def check_vector_fields(name, vector, channels, dtype=None, writeable=False):
    """A ``(channels,)`` float array of any device; of exactly ``dtype`` when one is given.

    ``writeable`` concerns host arrays only: device memory is always writeable.
    """
    if dtype is not None:  # a float dtype (a module's): equality settles both checks
        if vector.dtype != dtype:
            raise TypeError(f"expected {name} of dtype {dtype}, got {vector.dtype}")
    elif native_dtype(vector) not in COMPUTE_DTYPE:
        raise TypeError(f"expected {name} of a float dtype, got {vector.dtype}")
    if tuple(vector.shape) != (channels,):
        raise ValueError(f"expected {name} of shape ({channels},), got {tuple(vector.shape)}")
    if writeable and isinstance(vector, np.ndarray) and not vector.flags.writeable:
        raise ValueError(f"expected {name} to be writeable (it is updated in place), got a read-only array")
    return vector


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


def check_output(out, like):
    """``out`` (already an array of the right device) can receive a result of ``like``'s shape and dtype."""
    check_like("out", out, like, "the input's")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("expected out to be writeable, got a read-only array")
    if any(stride == 0 and size > 1 for stride, size in zip(out.strides, out.shape)):
        raise ValueError(f"expected out without repeated elements (a zero stride), got strides {tuple(out.strides)}")
    return out
