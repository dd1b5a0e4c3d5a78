"""The BatchNorm implementations compared by the benchmarks, behind one signature.

Each entry takes ``(x, state)`` where ``state`` holds float32 running buffers
and affine parameters, and performs one training-mode forward (statistics,
normalisation, running-buffer update).
"""

import numpy as np

import numba_bn as nbn


def numba_bn_train_forward(x, state):
    return nbn.batch_norm(
        x, state["running_mean"], state["running_var"], state["weight"], state["bias"],
        training=True, momentum=0.1, eps=1e-5,
    )


def numpy_train_forward(x, state):
    """Plain vectorised NumPy, the way a NumPy user would write it."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    count = x.size // x.shape[1]
    shape = mean.shape
    y = (x - mean) / np.sqrt(var + 1e-5) * state["weight"].reshape(shape) + state["bias"].reshape(shape)
    state["running_mean"] *= 0.9
    state["running_mean"] += 0.1 * mean.ravel()
    state["running_var"] *= 0.9
    state["running_var"] += 0.1 * var.ravel() * count / (count - 1)
    return y


TRAIN_FORWARD = {"numba_bn": numba_bn_train_forward, "numpy": numpy_train_forward}


def fresh_state(channels):
    return {
        "running_mean": np.zeros(channels, np.float32),
        "running_var": np.ones(channels, np.float32),
        "weight": np.ones(channels, np.float32),
        "bias": np.zeros(channels, np.float32),
    }
