"""The CUDA backend: batch normalisation on device arrays with the kernels of ``kernels``.

Implements ``numba_bn._backend.Backend``, the twin of ``numba_bn/cpu/backend.py``
name for name, with the same numerics: per-channel vectors are float64 device
arrays, elementwise coefficients are in the compute dtype, and the
per-channel work runs on the device (``channel_math``), so a training step
never waits for the host. Results are new C-contiguous device arrays; every
kernel and copy is queued on the stream of ``stream.current_stream()``.

This module imports ``numba.cuda``: it is imported only when CUDA is in use.
"""

import math

import numpy as np

from .._backend import BatchStatistics, Gradients, SavedForward, normalizing_terms
from .._dtypes import compute_dtype
from .._layout import ROWS
from .._validation import check_vector_fields
from . import channel_math, kernels
from .arrays import as_device_array, copy_from_host, device_array, overlap, to_device, to_host
from .launch import device_views, geometry, launch, launch_per_channel, use_warp_shuffle
from .scratch import scratch_array

#: A missing weight or bias, per dtype, for the per-channel kernels (every
#: kernel argument must be an array or a number on a real GPU, never None).
_absent = {}


def _absent_vector(dtype):
    array = _absent.get(dtype)
    if array is None:
        array = _absent[dtype] = device_array(0, dtype)
    return array


def _vector_or_absent(vector):
    return _absent_vector(np.float64) if vector is None else vector


def _channels_of(layout, view):
    return view.shape[4] if layout == ROWS else view.shape[0]


# ---------------------------------------------------- whole-array passes


def channel_stats(x, channel_axis):
    """``(count, mean, m2)`` per channel: count an int, mean and M2 float64 device arrays."""
    layout, (xv,), _ = device_views(channel_axis, [x])
    grid, block, parts, extra = geometry(layout, xv.shape, reduction=True)
    channels = _channels_of(layout, xv)
    states = scratch_array("states", (3, channels, parts))  # per-block count, mean, M2
    kernel = kernels.channel_stats_rows if layout == ROWS else kernels.channel_stats_runs
    shared_bytes = 3 * block[0] * block[1] * 8
    launch(kernel, grid, block, (xv, xv, _absent_vector(np.float64), states, use_warp_shuffle(), *extra), shared_bytes)
    mean, m2 = device_array((2, channels), np.float64)  # one allocation, two rows
    launch_per_channel(channel_math.merge_stat_parts, channels, states[0], states[1], states[2], mean, m2)
    return x.size // channels, mean, m2


def normalize(x, channel_axis, coefficients, out=None):
    """``(x - shift) * scale + offset`` per channel into ``out``, or a new C-contiguous array of ``x``'s dtype.

    ``coefficients`` rows: shift, scale, offset and one unused (``(4, C)``,
    compute dtype, as ``grad_input`` takes). ``out`` may have any strides;
    it must not overlap ``x`` other than being ``x`` itself.
    """
    y = device_array(x.shape, x.dtype) if out is None else out
    # Walk an output with negative strides backwards along those axes, and the input with it.
    flips = tuple(slice(None, None, -1) if stride < 0 else slice(None) for stride in y.strides)
    if any(step != slice(None) for step in flips):
        x, y = x[flips], y[flips]
    layout, (xv,), (yv,) = device_views(channel_axis, [x], [y])
    grid, block, _, extra = geometry(layout, xv.shape, reduction=False)
    kernel = kernels.normalize_rows if layout == ROWS else kernels.normalize_runs
    launch(kernel, grid, block, (xv, xv, yv, coefficients, *extra))
    return y if out is None else out


def grad_sum_parts(x, grad_output, channel_axis, mean):
    """Per-(channel, part) float64 partial ``sum(dy)`` and ``sum(dy * (x - mean))``.

    The CPU's ``grad_sums`` returns the totals; here the parts are summed, in
    order, by the per-channel kernel that consumes them.
    """
    layout, (xv, dyv), _ = device_views(channel_axis, [x, grad_output])
    grid, block, parts, extra = geometry(layout, xv.shape, reduction=True)
    channels = _channels_of(layout, xv)
    sums = scratch_array("sums", (3, channels, parts))  # rows: sum(dy), sum(dy * (x - mean)), unused
    kernel = kernels.grad_sums_rows if layout == ROWS else kernels.grad_sums_runs
    shared_bytes = 3 * block[0] * block[1] * 8
    launch(kernel, grid, block, (xv, dyv, mean, sums, use_warp_shuffle(), *extra), shared_bytes)
    return sums[0], sums[1]


def grad_input(x, grad_output, channel_axis, coefficients):
    """New C-contiguous ``(x - shift) * k_x + k_const + k_dy * dy``, ``x``'s dtype.

    ``coefficients`` rows: shift, k_x, k_const, k_dy (``(4, C)``, compute dtype).
    """
    dx = device_array(x.shape, x.dtype)
    layout, (xv, dyv), (dxv,) = device_views(channel_axis, [x, grad_output], [dx])
    grid, block, _, extra = geometry(layout, xv.shape, reduction=False)
    kernel = kernels.grad_input_rows if layout == ROWS else kernels.grad_input_runs
    launch(kernel, grid, block, (xv, dyv, dxv, coefficients, *extra))
    return dx


# --------------------------------------------------------------- backend


class CudaBackend:
    """``numba_bn._backend.Backend`` on ``numba.cuda`` device arrays."""

    device = "cuda"

    # ------------------------------------------------------------ arrays

    def as_array(self, name, value):
        return as_device_array(name, value)

    def check_vector(self, name, value, channels, dtype=None, writeable=False):
        return check_vector_fields(name, as_device_array(name, value), channels, dtype, writeable)

    def from_host(self, values, dtype):
        return to_device(np.asarray(values, dtype=dtype))

    def to_host(self, array):
        return to_host(array)

    def can_assign(self, target, values):
        return (
            hasattr(target, "copy_to_device") and tuple(target.shape) == values.shape and target.dtype == values.dtype
        )

    def assign(self, target, values):
        copy_from_host(target, values)

    def fill(self, target, value):
        copy_from_host(target, np.full(target.shape, value, target.dtype))

    # --------------------------------------------------------- the steps

    def batch_statistics(self, x, channel_axis):
        if x.size == 0:
            nan = np.full((2, x.shape[channel_axis]), np.nan)
            mean, m2 = to_device(nan)
            return BatchStatistics(0, mean, m2)
        return BatchStatistics(*channel_stats(x, channel_axis))

    def shares_memory(self, a, b):
        return overlap(a, b) != "none"

    def forward(self, x, channel_axis, statistics, weight, bias, eps, save=True, out=None):
        channels = x.shape[channel_axis]
        terms = normalizing_terms(x, channel_axis, statistics)
        # Saved for backward: one allocation; the coefficients only feed this call's kernel.
        saved_vectors = device_array((3, channels), np.float64)
        coefficients = scratch_array("forward", (4, channels), compute_dtype(x))  # the fourth row is unused
        launch_per_channel(
            channel_math.forward_coefficients, channels, terms.mean, terms.spread, terms.divisor, float(eps),
            _vector_or_absent(weight), _vector_or_absent(bias), saved_vectors, coefficients,
        )
        saved = None
        if save:
            saved_mean, invstd, saved_weight = saved_vectors
            saved = SavedForward(
                x, channel_axis, terms.batch_stats, saved_mean, invstd, saved_weight, terms.count, None,
            )
        if x.size == 0:
            return (device_array(x.shape, x.dtype) if out is None else out), saved
        if out is None or overlap(out, x) != "partial":
            return normalize(x, channel_axis, coefficients, out), saved
        # out overlaps x in another layout: normalise into a new array, then copy it over
        # (the normalisation with scale 1 and offset 0 copies exactly, with any strides).
        identity_rows = np.zeros((4, channels), coefficients.dtype)
        identity_rows[1] = 1.0
        identity = scratch_array("copy", (4, channels), coefficients.dtype)
        copy_from_host(identity, identity_rows)
        return normalize(normalize(x, channel_axis, coefficients), channel_axis, identity, out), saved

    def update_running(self, running_mean, running_var, statistics, factor):
        if statistics.count == 0:
            return
        launch_per_channel(
            channel_math.update_running, statistics.mean.shape[0], running_mean, running_var,
            statistics.mean, statistics.m2, float(statistics.count), float(factor),
        )

    def check_input_unchanged(self, saved):
        """Nothing to check: reading back a sample of device memory would wait for the GPU."""

    def backward(self, saved, grad_output, weight_grad_dtype, combine_totals=None):
        x, axis = saved.x, saved.channel_axis
        channels = x.shape[axis]
        sums_dtype = np.float64 if weight_grad_dtype is None else weight_grad_dtype
        if x.size == 0 and combine_totals is None:
            if weight_grad_dtype is None:
                return Gradients(device_array(x.shape, x.dtype), None, None)
            grad_weight, grad_bias = to_device(np.zeros((2, channels), weight_grad_dtype))
            return Gradients(device_array(x.shape, x.dtype), grad_weight, grad_bias)

        dtype = compute_dtype(x)
        sums = None  # rows: sum(dy * xhat), sum(dy)
        if saved.batch_stats:
            if x.size:
                part_dy, part_dy_xmu = grad_sum_parts(x, grad_output, axis, saved.mean)
            else:  # an empty share of a batch spread over processes: one zero part per channel
                part_dy, part_dy_xmu = to_device(np.zeros((2, channels, 1)))
            sums = device_array((2, channels), sums_dtype)
            coefficients = scratch_array("backward", (4, channels), dtype)
            if combine_totals is None:
                launch_per_channel(
                    channel_math.backward_coefficients, channels, part_dy, part_dy_xmu, saved.mean, saved.invstd,
                    saved.weight, float(saved.count), sums, coefficients,
                )
            else:
                # This share's sums are its weight and bias gradients; the totals of the whole batch,
                # staged through the host, give the input's gradient.
                if x.size:
                    launch_per_channel(channel_math.weight_grads, channels, part_dy, part_dy_xmu, saved.invstd, sums)
                else:  # nothing to scale: 0 even where the whole batch's invstd is not finite
                    copy_from_host(sums, np.zeros((2, channels), sums_dtype))
                totals = device_array((2, channels), np.float64)
                launch_per_channel(channel_math.sum_parts, channels, part_dy, part_dy_xmu, totals)
                combined = np.stack(combine_totals(*to_host(totals)))
                total_dy, total_dy_xmu = to_device(combined.reshape(2, channels, 1))
                launch_per_channel(
                    channel_math.backward_coefficients, channels, total_dy, total_dy_xmu, saved.mean, saved.invstd,
                    saved.weight, float(saved.count), device_array((2, channels), np.float64), coefficients,
                )
            grad_in = grad_input(x, grad_output, axis, coefficients) if x.size else device_array(x.shape, x.dtype)
        else:
            # The statistics were constants: dx = dy * w * invstd, one pass over dy.
            if weight_grad_dtype is not None:
                part_dy, part_dy_xmu = grad_sum_parts(x, grad_output, axis, saved.mean)
                sums = device_array((2, channels), sums_dtype)
                launch_per_channel(channel_math.weight_grads, channels, part_dy, part_dy_xmu, saved.invstd, sums)
            coefficients = scratch_array("grad_scale", (4, channels), dtype)  # shift 0, scale k_dy, offset 0
            copy_from_host(coefficients, np.zeros((4, channels), dtype))
            launch_per_channel(channel_math.grad_scale, channels, saved.invstd, saved.weight, coefficients[1])
            grad_in = normalize(grad_output, axis, coefficients)
        if weight_grad_dtype is None:
            return Gradients(grad_in, None, None)
        grad_weight, grad_bias = sums
        return Gradients(grad_in, grad_weight, grad_bias)

    def mean_and_variance(self, statistics, dtype):
        channels = statistics.mean.shape[0]
        out = device_array((2, channels), dtype)
        count = float(statistics.count) if statistics.count else math.nan
        launch_per_channel(channel_math.mean_and_variance, channels, statistics.mean, statistics.m2, count, out)
        return out[0], out[1]


CUDA = CudaBackend()
