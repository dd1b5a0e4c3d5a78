"""Reading state dicts (NumPy arrays or PyTorch tensors) into module state."""

import collections
from collections.abc import Mapping

import numpy as np

from ._validation import describe_type

#: PyTorch's ``load_state_dict`` return value, with the same field names.
IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

COUNTER_KEY = "num_batches_tracked"


def host_array(key, value):
    """A NumPy array from a state-dict value: an array, a tensor, a number or a list."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a PyTorch tensor, any device
        value = value.detach().cpu().numpy()
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
        array = host_array(key, state[key])
        if key == COUNTER_KEY:
            if array.size != 1 or array.ndim > 1:
                raise ValueError(f"size mismatch for {key}: expected a scalar, got shape {array.shape}")
            count = array.reshape(()).item()
            if count != int(count) or count < 0:
                raise ValueError(f"expected {key} to be a non-negative integer, got {count}")
            values[key] = int(count)
        else:
            if array.shape != (channels,):
                raise ValueError(
                    f"size mismatch for {key}: expected shape ({channels},), got {array.shape}"
                )
            values[key] = array
    return values, IncompatibleKeys(missing, unexpected)
