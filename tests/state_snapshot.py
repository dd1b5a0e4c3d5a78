"""Snapshot of everything a module owns, to prove a failing call changed nothing."""

import numpy as np

_ARRAYS = ("weight", "bias", "running_mean", "running_var", "grad_weight", "grad_bias")
_SCALARS = ("num_batches_tracked", "training", "eps", "momentum", "device", "channel_axis")


def snapshot(module):
    state = {name: getattr(module, name) for name in _SCALARS}
    for name in _ARRAYS:
        value = getattr(module, name)
        state[name] = None if value is None else (value, value.copy())
    state["_saved"] = module._saved
    return state


def assert_unchanged(module, before):
    after = snapshot(module)
    for name in _SCALARS:
        assert after[name] == before[name], name
    assert after["_saved"] is before["_saved"]
    for name in _ARRAYS:
        if before[name] is None:
            assert after[name] is None, name
            continue
        original, values = before[name]
        current, _ = after[name]
        assert current is original, f"{name} was replaced"
        np.testing.assert_array_equal(current, values, err_msg=name)
