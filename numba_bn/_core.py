"""BatchNorm forward, running-buffer update and backward on validated arrays.

Per-channel work (O(C)) happens here in float64 NumPy; per-element work is in
the kernels behind ``cpu_backend``. The elementwise passes use a per-channel
``shift`` equal to the mean rounded to the compute dtype, so that
``(x - shift)`` is small and exact and no large terms cancel in float32.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _fingerprint, cpu_backend
from ._validation import COMPUTE_DTYPE, native_dtype, values_per_channel


@dataclass(frozen=True)
class SavedForward:
    """What backward needs from a forward: references and O(C) float64 vectors."""

    x: np.ndarray  # a reference to the caller's input, not a copy
    channel_axis: int
    batch_stats: bool  # normalised with the batch's statistics (else constants)
    mean: np.ndarray
    invstd: np.ndarray
    weight: Optional[np.ndarray]  # float64 copy at forward time, or None
    count: int
    x_sample: bytes  # _fingerprint.record(x): backward checks x is unchanged


@dataclass(frozen=True)
class BatchStatistics:
    count: int
    mean: np.ndarray  # float64, NaN when count == 0
    m2: np.ndarray  # float64 sum of squared deviations


def compute_dtype(x):
    return COMPUTE_DTYPE[native_dtype(x)]


def batch_statistics(x, channel_axis):
    channels = x.shape[channel_axis]
    if x.size == 0:
        nan = np.full(channels, np.nan)
        return BatchStatistics(0, nan, nan.copy())
    count, mean, m2 = cpu_backend.channel_stats(x, channel_axis)
    return BatchStatistics(count, mean, m2)


def _as_float64(vector):
    return None if vector is None else np.asarray(vector, dtype=np.float64)


def forward(x, channel_axis, stats, mean, var, weight, bias, eps):
    """Normalise ``x``; ``stats`` (BatchStatistics) or ``mean``/``var`` (buffers).

    Returns ``(y, SavedForward)``.
    """
    if stats is not None:
        mean = stats.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            var = stats.m2 / stats.count
        count = stats.count
    else:
        mean, var = _as_float64(mean), _as_float64(var)
        count = values_per_channel(x, channel_axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        invstd = 1.0 / np.sqrt(var + eps)
    weight = _as_float64(weight)
    saved = SavedForward(
        x, channel_axis, stats is not None, mean, invstd, weight, count, _fingerprint.record(x)
    )
    if x.size == 0:
        return np.empty(x.shape, native_dtype(x)), saved

    dtype = compute_dtype(x)
    shift = mean.astype(dtype)
    scale = invstd if weight is None else invstd * weight
    with np.errstate(invalid="ignore"):
        offset = -(mean - shift) * scale
    if bias is not None:
        offset = offset + _as_float64(bias)
    y = cpu_backend.normalize(x, channel_axis, shift, scale.astype(dtype), offset.astype(dtype))
    return y, saved


def update_running(running_mean, running_var, stats, factor):
    """Blend the batch statistics into the buffers in place (unbiased variance)."""
    if stats.count == 0:
        return
    # Overflow to inf in a float32 buffer is the honest result for data beyond ~1e19.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        unbiased = stats.m2 / (stats.count - 1)
        running_mean[...] = (1.0 - factor) * running_mean.astype(np.float64) + factor * stats.mean
        running_var[...] = (1.0 - factor) * running_var.astype(np.float64) + factor * unbiased


def backward(saved, grad_output, need_weight_grads):
    """``(grad_input, sum(dy * xhat), sum(dy))``; the sums are None unless needed."""
    x, axis = saved.x, saved.channel_axis
    _fingerprint.check_unchanged(x, saved.x_sample)
    channels = x.shape[axis]
    if x.size == 0:
        zeros = np.zeros(channels)
        return np.empty(x.shape, native_dtype(x)), zeros, zeros.copy()

    dtype = compute_dtype(x)
    k_dy = saved.invstd if saved.weight is None else saved.invstd * saved.weight
    sum_dy = sum_dy_xhat = None
    if saved.batch_stats or need_weight_grads:
        sum_dy, sum_dy_xmu = cpu_backend.grad_sums(x, grad_output, axis, saved.mean)
        sum_dy_xhat = sum_dy_xmu * saved.invstd
    if not saved.batch_stats:
        # The statistics were constants: dx = dy * w * invstd, one pass over dy.
        zeros = np.zeros(channels, dtype)
        grad_input = cpu_backend.normalize(grad_output, axis, zeros, k_dy.astype(dtype), zeros)
        return grad_input, sum_dy_xhat, sum_dy

    n = saved.count
    shift = saved.mean.astype(dtype)
    with np.errstate(invalid="ignore"):
        k_x = -k_dy * saved.invstd * sum_dy_xhat / n
        k_const = -k_dy * sum_dy / n - k_x * (saved.mean - shift)
    grad_input = cpu_backend.grad_input(
        x, grad_output, axis, shift, k_dy.astype(dtype), k_x.astype(dtype), k_const.astype(dtype)
    )
    return grad_input, sum_dy_xhat, sum_dy
