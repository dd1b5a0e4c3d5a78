"""BatchNorm forward, running-buffer update and backward on validated device arrays.

The GPU twin of ``_core``, with the same functions and the same numerics:
per-channel (O(C)) work runs on the device in float64, in small one-thread-
per-channel kernels, so a training step never waits for the host; the
per-element work is in the kernels behind ``cuda_backend``. Per-channel
vectors are float64 device arrays unless said otherwise.
"""

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import cuda_backend, cuda_kernels
from ._core import compute_dtype


@dataclass(frozen=True)
class SavedForward:
    """What backward needs from a forward: references and O(C) float64 device vectors."""

    x: Any  # a reference to the caller's input, not a copy
    channel_axis: int
    batch_stats: bool  # normalised with the batch's statistics (else constants)
    mean: Any
    invstd: Any
    weight: Optional[Any]  # float64 copy at forward time, or None
    count: int


@dataclass(frozen=True)
class BatchStatistics:
    count: int
    mean: Any  # NaN when count == 0
    m2: Any


def _filled(channels, value, dtype=np.float64):
    return cuda_backend.to_device(np.full(channels, value, dtype))


def batch_statistics(x, channel_axis):
    channels = x.shape[channel_axis]
    if x.size == 0:
        return BatchStatistics(0, _filled(channels, np.nan), _filled(channels, np.nan))
    count, mean, m2 = cuda_backend.channel_stats(x, channel_axis)
    return BatchStatistics(count, mean, m2)


def variance(stats, dtype):
    """``(mean, biased variance)`` in ``dtype``, as ``batch_stats`` returns them."""
    channels = stats.mean.shape[0]
    mean = cuda_backend.device_array(channels, dtype)
    var = cuda_backend.device_array(channels, dtype)
    count = float(stats.count) if stats.count else np.nan
    cuda_backend.launch_per_channel(cuda_kernels.biased_variance, channels, stats.mean, stats.m2, count, mean, var)
    return mean, var


def forward(x, channel_axis, stats, mean, var, weight, bias, eps):
    """Normalise ``x``; ``stats`` (BatchStatistics) or ``mean``/``var`` (running buffers).

    Returns ``(y, SavedForward)``.
    """
    channels = x.shape[channel_axis]
    dtype = compute_dtype(x)
    # Saved for backward: one allocation; the coefficients only feed this call's kernels.
    invstd, saved_mean, saved_weight = cuda_backend.device_array((3, channels), np.float64)
    shift, scale, offset = cuda_backend.scratch_array("forward", (3, channels), dtype)
    saved_weight = None if weight is None else saved_weight
    if stats is not None:
        count = stats.count
        divisor = float(count) if count else np.nan
        coefficients = (stats.mean, None, stats.m2, divisor)
        saved_mean, mean_out = stats.mean, None
    else:
        count = x.size // channels
        coefficients = (mean, var, None, 1.0)
        mean_out = saved_mean
    cuda_backend.launch_per_channel(
        cuda_kernels.forward_coefficients, channels, *coefficients, float(eps),
        weight, bias, invstd, shift, scale, offset, mean_out, saved_weight,
    )
    saved = SavedForward(x, channel_axis, stats is not None, saved_mean, invstd, saved_weight, count)
    if x.size == 0:
        return cuda_backend.device_array(x.shape, x.dtype), saved
    return cuda_backend.normalize(x, channel_axis, shift, scale, offset), saved


def update_running(running_mean, running_var, stats, factor):
    """Blend the batch statistics into the buffers in place (unbiased variance)."""
    if stats.count == 0:
        return
    cuda_backend.launch_per_channel(
        cuda_kernels.update_running, stats.mean.shape[0],
        running_mean, running_var, stats.mean, stats.m2, float(stats.count), float(factor),
    )


def backward(saved, grad_output, need_weight_grads, grad_dtype=np.float64):
    """``(grad_input, sum(dy * xhat), sum(dy))``; the sums (in ``grad_dtype``) are None unless needed."""
    x, axis = saved.x, saved.channel_axis
    channels = x.shape[axis]
    if x.size == 0:
        zeros = np.zeros(channels, grad_dtype)
        return cuda_backend.device_array(x.shape, x.dtype), cuda_backend.to_device(zeros), cuda_backend.to_device(zeros)

    dtype = compute_dtype(x)
    zeros, k_dy, shift, k_x, k_const = cuda_backend.scratch_array("backward", (5, channels), dtype)
    sum_dy = sum_dy_xhat = part_dy = part_dy_xmu = None
    if saved.batch_stats or need_weight_grads:
        part_dy, part_dy_xmu = cuda_backend.grad_sums(x, grad_output, axis, saved.mean)
        sum_dy_xhat, sum_dy = cuda_backend.device_array((2, channels), grad_dtype)
    if not saved.batch_stats:
        shift = k_x = k_const = None
    cuda_backend.launch_per_channel(
        cuda_kernels.backward_coefficients, channels, part_dy, part_dy_xmu, saved.mean, saved.invstd,
        saved.weight, float(saved.count), sum_dy_xhat, sum_dy, shift, k_dy, k_x, k_const,
    )
    if not saved.batch_stats:
        # The statistics were constants: dx = dy * w * invstd, one pass over dy.
        zeros.copy_to_device(np.zeros(channels, dtype), stream=cuda_backend.current_stream())
        grad_input = cuda_backend.normalize(grad_output, axis, zeros, k_dy, zeros)
        return grad_input, sum_dy_xhat, sum_dy
    grad_input = cuda_backend.grad_input(x, grad_output, axis, shift, k_dy, k_x, k_const)
    return grad_input, sum_dy_xhat, sum_dy
