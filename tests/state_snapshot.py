"""Snapshot of everything a module owns, to prove a failing call changed nothing.

Works for CPU and CUDA modules alike: array values are kept as host copies.
"""

import numpy as np

ARRAYS = ("weight", "bias", "running_mean", "running_var", "grad_weight", "grad_bias")
SCALARS = ("num_batches_tracked", "training", "eps", "momentum", "device", "channel_axis")


def host_copy(array):
    """A host copy of a NumPy or ``numba.cuda`` device array's values."""
    return array.copy() if isinstance(array, np.ndarray) else array.copy_to_host()


def snapshot(module):
    state = {name: getattr(module, name) for name in SCALARS}
    for name in ARRAYS:
        value = getattr(module, name)
        state[name] = None if value is None else (value, host_copy(value))
    state["_saved"] = module._saved
    return state


def assert_unchanged(module, before):
    after = snapshot(module)
    for name in SCALARS:
        assert after[name] == before[name], name
    assert after["_saved"] is before["_saved"]
    for name in ARRAYS:
        if before[name] is None:
            assert after[name] is None, name
            continue
        original, values = before[name]
        current, now = after[name]
        assert current is original, f"{name} was replaced"
        np.testing.assert_array_equal(now, values, err_msg=name)
