"""Functional API: ``batch_norm`` and ``batch_stats`` on NumPy or CUDA device arrays.

The input picks the path: a NumPy array runs on the CPU, a ``numba.cuda``
device array (or any ``__cuda_array_interface__`` object) on the GPU, and the
other array arguments must then live on the same device.
"""

import numpy as np

from . import _core
from ._device import check_device_float_input, check_device_vector, is_device_array, reject_device_array
from ._validation import (
    channel_count,
    check_bool,
    check_channel_axis,
    check_channel_vector,
    check_float_input,
    check_real,
    check_values_per_channel,
)


def _check_input(x, channel_axis):
    """``(x, axis, on_device)``: ``x`` as the path reads it and the non-negative channel axis."""
    on_device = is_device_array(x)
    if on_device:
        x = check_device_float_input("input", x)
    else:
        check_float_input("input", x)
    channel_axis = check_channel_axis(channel_axis)
    if x.ndim < 2:
        raise ValueError(f"expected input with 2 or more dimensions (N, C, ...), got {x.ndim}D input")
    return x, channel_axis % x.ndim, on_device


def _cuda_core():
    from . import _cuda_core

    return _cuda_core


def batch_stats(x, *, channel_axis=1):
    """Per-channel mean, biased variance and count of ``x``.

    Computed in one pass with float64 partial (count, mean, M2) states merged
    by Chan's formula. The statistics are float64 for float64 input and
    float32 otherwise; ``count`` is the number of values per channel (an int).
    An empty input gives NaN statistics and count 0. For a device array the
    statistics are device arrays.
    """
    x, axis, on_device = _check_input(x, channel_axis)
    dtype = _core.compute_dtype(x)
    if on_device:
        cuda_core = _cuda_core()
        stats = cuda_core.batch_statistics(x, axis)
        mean, var = cuda_core.variance(stats, dtype)
        return mean, var, stats.count
    stats = _core.batch_statistics(x, axis)
    # A float32 variance overflows to inf beyond ~1.8e38 (data beyond ~1e19).
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        var = (stats.m2 / stats.count).astype(dtype)
    return stats.mean.astype(dtype), var, stats.count


def batch_norm(
    x,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    *,
    channel_axis=1,
):
    """Batch normalisation with ``torch.nn.functional.batch_norm``'s contract.

    With ``training=True`` the batch's statistics normalise ``x`` and, when
    ``running_mean``/``running_var`` are given, are blended into them in place
    with ``momentum`` (the unbiased variance for ``running_var``). With
    ``training=False`` the running buffers normalise ``x``. Returns a new
    C-contiguous array of ``x``'s shape and dtype, on ``x``'s device.
    """
    x, axis, on_device = _check_input(x, channel_axis)
    channels, _ = channel_count(x, axis)
    training = check_bool("training", training)
    momentum = check_real("momentum", momentum)
    eps = check_real("eps", eps, minimum=0.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "expected running_mean and running_var to be both given or both None, "
            f"got running_mean={'None' if running_mean is None else 'an array'} and "
            f"running_var={'None' if running_var is None else 'an array'}"
        )
    if running_mean is None and not training:
        raise ValueError("expected running_mean and running_var when training=False, got None")
    if on_device:
        core, check_vector = _cuda_core(), check_device_vector
    else:
        core, check_vector = _core, _check_host_vector
    vectors = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    for name, vector in vectors.items():
        if vector is not None:
            in_place = training and name.startswith("running_")
            vectors[name] = check_vector(name, vector, channels, writeable=in_place)
    running_mean, running_var, weight, bias = vectors.values()
    if training:
        check_values_per_channel(x, axis)
        stats = core.batch_statistics(x, axis)
        y, _ = core.forward(x, axis, stats, None, None, weight, bias, eps)
        if running_mean is not None:
            core.update_running(running_mean, running_var, stats, momentum)
        return y
    y, _ = core.forward(x, axis, None, running_mean, running_var, weight, bias, eps)
    return y


def _check_host_vector(name, vector, channels, writeable=False):
    return check_channel_vector(name, reject_device_array(name, vector), channels, writeable=writeable)
