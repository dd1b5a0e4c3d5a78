"""BatchNorm forward, running-buffer update and backward on validated arrays.

Per-channel work (O(C)) happens in float64 in ``_channel_math``; per-element
work is in the kernels behind ``cpu_backend``. The elementwise passes use a
per-channel ``shift`` equal to the mean rounded to the compute dtype, so that
``(x - shift)`` is small and exact and no large terms cancel in float32.
"""

from typing import NamedTuple, Optional

import numpy as np

from . import _channel_math, _fingerprint, cpu_backend
from ._validation import COMPUTE_DTYPE, native_dtype, values_per_channel

_ABSENT = np.empty(0)  # a missing weight or bias, for the compiled helpers
_KERNEL_BUFFER_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class SavedForward(NamedTuple):
    """What backward needs from a forward: references and O(C) float64 vectors."""

    x: np.ndarray  # a reference to the caller's input, not a copy
    channel_axis: int
    batch_stats: bool  # normalised with the batch's statistics (else constants)
    mean: np.ndarray
    invstd: np.ndarray
    weight: Optional[np.ndarray]  # float64 copy at forward time, or None
    count: int
    x_sample: bytes  # _fingerprint.record(x): backward checks x is unchanged


class BatchStatistics(NamedTuple):
    count: int
    mean: np.ndarray  # float64, NaN when count == 0
    m2: np.ndarray  # float64 sum of squared deviations


_COMPUTE_DTYPE_BY_CHAR = {dtype.char: compute for dtype, compute in COMPUTE_DTYPE.items()}


def compute_dtype(x):
    return _COMPUTE_DTYPE_BY_CHAR[x.dtype.char]  # the same for either byte order


def batch_statistics(x, channel_axis):
    channels = x.shape[channel_axis]
    if x.size == 0:
        nan = np.full(channels, np.nan)
        return BatchStatistics(0, nan, nan.copy())
    count, mean, m2 = cpu_backend.channel_stats(x, channel_axis)
    return BatchStatistics(count, mean, m2)


def _kernel_vector(vector):
    """A per-channel vector as the compiled helpers take it (zero-length when absent)."""
    if vector is None:
        return _ABSENT
    if vector.dtype in _KERNEL_BUFFER_DTYPES and vector.flags.c_contiguous:
        return vector
    return np.ascontiguousarray(vector, dtype=np.float64)


def forward(x, channel_axis, stats, mean, var, weight, bias, eps):
    """Normalise ``x``; ``stats`` (BatchStatistics) or ``mean``/``var`` (buffers).

    Returns ``(y, SavedForward)``.
    """
    if stats is not None:
        mean, spread, divisor, count = stats.mean, stats.m2, float(stats.count), stats.count
    else:
        spread, divisor = var, 1.0
        count = values_per_channel(x, channel_axis)
    coefficients = np.empty((3, x.shape[channel_axis]), compute_dtype(x))
    # The float64 copies are snapshots for backward: the caller may change the originals.
    mean, invstd, weight64 = _channel_math.normalization(
        _kernel_vector(mean), _kernel_vector(spread), divisor, _kernel_vector(weight),
        _kernel_vector(bias), float(eps), coefficients,
    )
    weight = None if weight is None else weight64
    saved = SavedForward(
        x, channel_axis, stats is not None, mean, invstd, weight, count, _fingerprint.record(x)
    )
    if x.size == 0:
        return np.empty(x.shape, native_dtype(x)), saved
    shift, scale, offset = coefficients
    return cpu_backend.normalize(x, channel_axis, shift, scale, offset), saved


def update_running(running_mean, running_var, stats, factor):
    """Blend the batch statistics into the buffers in place (unbiased variance).

    Overflow to inf in a float32 buffer is the honest result for data beyond ~1e19.
    """
    if stats.count == 0:
        return
    if running_mean.dtype in _KERNEL_BUFFER_DTYPES and running_var.dtype in _KERNEL_BUFFER_DTYPES:
        _channel_math.blend_running(running_mean, running_var, stats.count, stats.mean, stats.m2, float(factor))
        return
    # float16 or byte-swapped buffers: the same blend in NumPy.
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
    sum_dy = sum_dy_xhat = None
    if not saved.batch_stats:
        # The statistics were constants: dx = dy * w * invstd, one pass over dy.
        if need_weight_grads:
            sum_dy, sum_dy_xmu = cpu_backend.grad_sums(x, grad_output, axis, saved.mean)
            sum_dy_xhat = sum_dy_xmu * saved.invstd
        k_dy = saved.invstd if saved.weight is None else saved.invstd * saved.weight
        zeros = np.zeros(channels, dtype)
        grad_input = cpu_backend.normalize(grad_output, axis, zeros, k_dy.astype(dtype), zeros)
        return grad_input, sum_dy_xhat, sum_dy

    sum_dy, sum_dy_xmu = cpu_backend.grad_sums(x, grad_output, axis, saved.mean)
    coefficients = np.empty((4, channels), dtype)
    sum_dy_xhat = _channel_math.input_gradient(
        saved.mean, saved.invstd, _ABSENT if saved.weight is None else saved.weight,
        float(saved.count), sum_dy, sum_dy_xmu, coefficients,
    )
    shift, k_dy, k_x, k_const = coefficients
    grad_input = cpu_backend.grad_input(x, grad_output, axis, shift, k_dy, k_x, k_const)
    return grad_input, sum_dy_xhat, sum_dy
