"""Reading state dicts (NumPy arrays or PyTorch tensors) into module state."""

import collections
import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._validation import describe_type

#: PyTorch's ``load_state_dict`` return value, with the same field names.
IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

COUNTER_KEY = "num_batches_tracked"

#: ``num_batches_tracked`` is saved as an int64: counts from 0 up to this (excluded).
COUNTER_LIMIT = 2**63


def tensor_to_numpy(tensor):
    """A NumPy array of a PyTorch tensor's values (any device).

    Floating dtypes NumPy has no equivalent for (bfloat16, the float8 types)
    go through float32, which holds each of their values exactly; the module
    then casts to its own dtype, as PyTorch's ``load_state_dict`` does.
    """
    tensor = tensor.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:  # "Got unsupported ScalarType ...": a dtype NumPy lacks
        if not tensor.is_floating_point():
            raise
        return tensor.float().numpy()


def host_array(key, value):
    """A NumPy array from a state-dict value: an array, a tensor, a number or a list."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a PyTorch tensor, any device
        try:
            value = tensor_to_numpy(value)
        except Exception as error:
            raise TypeError(f"cannot read state entry {key!r} as an array: {error}") from None
    try:
        array = np.asarray(value)
    except Exception as error:
        raise TypeError(f"cannot read state entry {key!r} as an array: {error}") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(
            f"expected state entry {key!r} to hold real numbers, got dtype {array.dtype}"
        )
    return array


def read_counter(key, value):
    """``num_batches_tracked`` as a Python int in [0, 2**63).

    Accepts a Python int, a NumPy integer or float scalar, a 0-d or
    1-element array (NumPy or PyTorch) holding an integral value, as PyTorch
    saves it (a 0-d int64 tensor). Bools, non-finite, fractional, negative
    and too-large values raise, naming the key and the value.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"expected {key} to be an integer, got bool {value}")
    if isinstance(value, numbers.Integral) and not isinstance(value, np.generic):
        count = value  # a Python int of any size: checked without NumPy's int64 overflow
    else:
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a PyTorch tensor
            array = host_array(key, value)
        else:
            try:
                array = np.asarray(value)
            except Exception as error:
                raise TypeError(f"cannot read state entry {key!r} as an array: {error}") from None
        if array.size != 1 or array.ndim > 1:
            raise ValueError(f"size mismatch for {key}: expected a scalar, got shape {array.shape}")
        count = array.reshape(()).item()  # a Python scalar (an object array's own item)
        if isinstance(count, (bool, np.bool_)):
            raise TypeError(f"expected {key} to be an integer, got bool {count}")
        if array.dtype == object:
            if not isinstance(count, numbers.Real):
                raise TypeError(
                    f"expected {key} to be an integer, got {describe_type(count)} {count!r}"
                )
        elif not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(
            array.dtype, np.floating
        ):
            raise TypeError(f"expected {key} to be an integer, got dtype {array.dtype}")
    shown = count  # as given (a float stays a float in the message)
    if not isinstance(count, numbers.Integral):
        count = float(count)
        if not math.isfinite(count) or not count.is_integer():
            raise ValueError(f"expected {key} to be an integer in [0, 2**63), got {shown}")
    count = int(count)
    if not 0 <= count < COUNTER_LIMIT:
        raise ValueError(f"expected {key} to be an integer in [0, 2**63), got {shown}")
    return count


def read_state(state, expected_keys, channels, strict):
    """Validate ``state`` against the expected keys and shapes.

    Returns ``(values, IncompatibleKeys)`` where ``values`` maps each present
    expected key to a NumPy array (vectors) or an int (the batch counter).
    Nothing is assigned here, so a failure leaves the module untouched.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"expected state to be a mapping (dict), got {describe_type(state)}")
    missing = [k for k in expected_keys if k not in state and k != COUNTER_KEY]
    unexpected = [k for k in state if k not in expected_keys]
    if strict and (missing or unexpected):
        problems = []
        if missing:
            problems.append(f"missing key(s) {missing}")
        if unexpected:
            problems.append(f"unexpected key(s) {unexpected}")
        raise ValueError(
            f"error(s) in loading state: {' and '.join(problems)}; expected keys {list(expected_keys)}"
        )

    values = {}
    for key in expected_keys:
        if key not in state:
            continue
        if key == COUNTER_KEY:
            values[key] = read_counter(key, state[key])
        else:
            array = host_array(key, state[key])
            # ``channels`` is a vector length, or a whole shape (LayerNorm's parameters).
            expected_shape = tuple(channels) if isinstance(channels, tuple) else (channels,)
            if array.shape != expected_shape:
                raise ValueError(
                    f"size mismatch for {key}: expected shape {expected_shape}, got {array.shape}"
                )
            values[key] = array
    return values, IncompatibleKeys(missing, unexpected)
