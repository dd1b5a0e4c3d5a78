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

from .._backend import BatchStatistics, Gradients, RunningStatistics, SavedForward, normalizing_terms
from .._dtypes import compute_dtype
from .._layout import ROWS
from .._validation import check_vector_fields
from . import channel_math, kernels
from .arrays import as_device_array, copy_from_host, device_array, overlap, to_device, to_host
from .launch import device_views, geometry, launch, launch_per_channel, use_warp_shuffle
from .scratch import scratch_array

#: Empty arrays by (rank, dtype): a missing weight, bias, mask or second
#: output for the kernels (every kernel argument must be an array or a number
#: on a real GPU, never None).
_absent = {}


def _empty(ndim, dtype):
    key = (ndim, np.dtype(dtype))
    array = _absent.get(key)
    if array is None:
        array = _absent[key] = device_array((0,) * ndim, dtype)
    return array


def _absent_vector(dtype):
    return _empty(1, dtype)


def _vector_or_absent(vector):
    return _absent_vector(np.float64) if vector is None else vector


def _no_mask():
    return _absent_vector(np.uint32)


def _no_second_output(dtype):
    """An empty 5-D array: a pass without a second output."""
    return _empty(5, dtype)


def relu_mask(size):
    """A zeroed ReLU mask for ``size`` values: one bit each, in uint32 words."""
    words = device_array(max(1, (size + 31) // 32), np.uint32)
    launch_per_channel(kernels.fill_zero, words.size, words)
    return words


def _channels_of(layout, view):
    return view.shape[4] if layout == ROWS else view.shape[0]


# ---------------------------------------------------- whole-array passes


def channel_stat_parts(x, channel_axis):
    """``(count, parts)``: the values per channel, and float64 ``(3, C, parts)`` per-block
    ``(count, mean, M2)`` states in the stream's staging buffer, to be merged in part order."""
    layout, (xv,), _ = device_views(channel_axis, [x])
    grid, block, parts, extra = geometry(layout, xv.shape, reduction=True)
    channels = _channels_of(layout, xv)
    states = scratch_array("states", (3, channels, parts))
    kernel = kernels.channel_stats_rows if layout == ROWS else kernels.channel_stats_runs
    shared_bytes = 3 * block[0] * block[1] * 8
    args = (xv, xv, _absent_vector(np.float64), _no_mask(), states, use_warp_shuffle(), *extra)
    launch(kernel, grid, block, args, shared_bytes)
    return x.size // channels, states


def channel_stats(x, channel_axis):
    """``(count, mean, m2)`` per channel: count an int, mean and M2 float64 device arrays."""
    count, parts = channel_stat_parts(x, channel_axis)
    mean, m2 = device_array((2, parts.shape[1]), np.float64)  # one allocation, two rows
    launch_per_channel(channel_math.merge_stat_parts, parts.shape[1], parts, mean, m2)
    return count, mean, m2


def normalize(x, channel_axis, coefficients, out=None, residual=None, relu=False, mask=None):
    """``(x - shift) * scale + offset`` per channel into ``out``, or a new C-contiguous array of ``x``'s dtype.

    ``coefficients`` rows: shift, scale, offset and the residual's factor
    (``(4, C)``, compute dtype, as ``grad_input`` takes). With a ``residual``
    it is added (times the fourth row); with ``relu`` the result is clamped
    at 0 and, given a zeroed ``mask`` (:func:`relu_mask`), each value's
    ``result > 0`` is recorded there for the backward. ``out`` may have any
    strides; it must not overlap ``x`` or ``residual`` other than being one
    of them.
    """
    y = device_array(x.shape, x.dtype) if out is None else out
    # Walk an output with negative strides backwards along those axes, and the inputs with it
    # (a recorded mask's positions follow x's own order: then through a new array).
    flips = tuple(slice(None, None, -1) if stride < 0 else slice(None) for stride in y.strides)
    if any(step != slice(None) for step in flips):
        if mask is not None:
            return _copied(normalize(x, channel_axis, coefficients, None, residual, relu, mask), channel_axis, y)
        x, y = x[flips], y[flips]
        residual = None if residual is None else residual[flips]
    if residual is None and not relu:
        layout, (xv,), (yv,) = device_views(channel_axis, [x], [y])
        kernel = kernels.normalize_rows if layout == ROWS else kernels.normalize_runs
        args = (xv, xv, yv, yv, coefficients, _no_mask(), 0)
    else:
        inputs = [x] if residual is None else [x, residual]
        layout, views, (yv,) = device_views(channel_axis, inputs, [y])
        mode = (0 if residual is None else kernels.ADD) | (kernels.RELU if relu else 0)
        kernel = kernels.normalize_fused_rows if layout == ROWS else kernels.normalize_fused_runs
        args = (views[0], views[-1], yv, yv, coefficients, _no_mask() if mask is None else mask, mode)
    grid, block, _, extra = geometry(layout, args[0].shape, reduction=False)
    launch(kernel, grid, block, (*args, *extra))
    return y if out is None else out


def _copied(source, channel_axis, target):
    """``target`` (any strides) receives ``source``: the normalisation with scale 1 and offset 0
    copies exactly."""
    channels = source.shape[channel_axis]
    dtype = compute_dtype(source)
    identity_rows = np.zeros((4, channels), dtype)
    identity_rows[1] = 1.0
    identity = scratch_array("copy", (4, channels), dtype)
    copy_from_host(identity, identity_rows)
    return normalize(source, channel_axis, identity, target)


def grad_sum_parts(x, grad_output, channel_axis, mean, mask=None):
    """Per-(channel, part) float64 partial ``sum(dy)`` and ``sum(dy * (x - mean))``, ``dy`` gated by a
    forward's ReLU ``mask`` when one is given.

    The CPU's ``grad_sums`` returns the totals; here the parts are summed, in
    order, by the per-channel kernel that consumes them.
    """
    layout, (xv, dyv), _ = device_views(channel_axis, [x, grad_output])
    grid, block, parts, extra = geometry(layout, xv.shape, reduction=True)
    channels = _channels_of(layout, xv)
    sums = scratch_array("sums", (3, channels, parts))  # rows: sum(dy), sum(dy * (x - mean)), unused
    if mask is None:
        kernel = kernels.grad_sums_rows if layout == ROWS else kernels.grad_sums_runs
    else:
        kernel = kernels.grad_sums_relu_rows if layout == ROWS else kernels.grad_sums_relu_runs
    shared_bytes = 3 * block[0] * block[1] * 8
    args = (xv, dyv, mean, _no_mask() if mask is None else mask, sums, use_warp_shuffle(), *extra)
    launch(kernel, grid, block, args, shared_bytes)
    return sums[0], sums[1]


def grad_input(x, grad_output, channel_axis, coefficients, mask=None, grad_residual=False, x_term=True):
    """``(grad_input, grad_residual)``: new C-contiguous arrays of ``x``'s dtype.

    ``grad_input = (x - shift) * k_x + k_const + k_dy * dy`` (without the
    first terms unless ``x_term``), ``coefficients`` rows shift, k_x,
    k_const, k_dy (``(4, C)``, compute dtype). Given a forward's ReLU
    ``mask``, ``dy`` passes only where the forward's result was not <= 0,
    and with ``grad_residual`` what passed is the second result (else None).
    """
    dx = device_array(x.shape, x.dtype)
    passed = device_array(x.shape, x.dtype) if mask is not None and grad_residual else None
    outputs = [dx] if passed is None else [dx, passed]
    layout, (xv, dyv), views = device_views(channel_axis, [x, grad_output], outputs)
    second = views[-1] if passed is not None else _no_second_output(x.dtype)
    grid, block, _, extra = geometry(layout, xv.shape, reduction=False)
    if mask is None:
        kernel = kernels.grad_input_rows if layout == ROWS else kernels.grad_input_runs
        args = (xv, dyv, views[0], views[0], coefficients, _no_mask(), 0)
    else:
        kernel = kernels.grad_input_relu_rows if layout == ROWS else kernels.grad_input_relu_runs
        args = (xv, dyv, views[0], second, coefficients, mask, kernels.ADD | (0 if x_term else kernels.NO_X))
    launch(kernel, grid, block, (*args, *extra))
    return dx, passed


def _batch_coefficients(statistics, eps, weight, bias, residual_factor, running, saved_vectors, coefficients):
    """Launch ``channel_math.batch_coefficients`` for batch ``statistics`` (merged, or parts to merge).

    Returns what puts the running buffers of ``running`` back as they were
    (None when they were not touched).
    """
    channels = coefficients.shape[1]
    no_vector = _absent_vector(np.float64)
    if statistics.parts is not None:
        parts, mean, m2 = statistics.parts, no_vector, no_vector
    else:  # merged already: SyncBatchNorm's statistics of the whole batch, or an empty batch's NaN
        parts, mean, m2 = _empty(3, np.float64), statistics.mean, statistics.m2
    # NaN, never a division by zero, for an empty batch (the simulator divides in Python).
    count = float(statistics.count) if statistics.count else math.nan
    updating = running is not None and statistics.count > 0
    running_mean, running_var = (running.mean, running.var) if updating else (no_vector, no_vector)
    previous = scratch_array("running_before", (2, channels)) if updating else _empty(2, np.float64)
    launch_per_channel(
        channel_math.batch_coefficients, channels, parts, mean, m2, count, float(eps),
        _vector_or_absent(weight), _vector_or_absent(bias), residual_factor, running_mean, running_var,
        float(running.factor) if updating else 0.0, previous, saved_vectors, coefficients,
    )
    if not updating:
        return None

    def restore():
        # A later launch of the forward failed, or the user interrupted it: the call raises, so the
        # buffers keep their values (stream order puts this after the blend). A failure here as well
        # (a broken CUDA context) must not hide the error that the caller needs to see.
        try:
            launch_per_channel(channel_math.restore_running, channels, previous, running_mean, running_var)
        except Exception:
            pass

    return restore


def _normalized(x, channel_axis, coefficients, out, residual, relu, mask):
    """The forward's elementwise pass with the coefficients already computed: ``out``, or a new array."""
    if x.size == 0:
        return device_array(x.shape, x.dtype) if out is None else out
    apart = out is None or (overlap(out, x) != "partial" and (residual is None or overlap(out, residual) != "partial"))
    if apart:
        return normalize(x, channel_axis, coefficients, out, residual, relu, mask)
    # out overlaps an input in another layout: normalise into a new array, then copy it over.
    return _copied(normalize(x, channel_axis, coefficients, None, residual, relu, mask), channel_axis, out)


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

    def batch_statistics(self, x, channel_axis, merge=True):
        if x.size == 0:
            nan = np.full((2, x.shape[channel_axis]), np.nan)
            mean, m2 = to_device(nan)
            return BatchStatistics(0, mean, m2)
        if not merge:  # forward merges the parts in its per-channel kernel: one launch fewer
            count, parts = channel_stat_parts(x, channel_axis)
            return BatchStatistics(count, None, None, parts)
        return BatchStatistics(*channel_stats(x, channel_axis))

    def shares_memory(self, a, b):
        return overlap(a, b) != "none"

    def forward(
        self, x, channel_axis, statistics, weight, bias, eps, save=True, out=None, residual=None, relu=False,
        running=None,
    ):
        channels = x.shape[channel_axis]
        # Saved for backward: one allocation; the coefficients only feed this call's kernels.
        saved_vectors = device_array((3, channels), np.float64)
        coefficients = scratch_array("forward", (4, channels), compute_dtype(x))  # the fourth row: residual's factor
        residual_factor = 0.0 if residual is None else 1.0
        # Zeroed before any buffer changes: nothing to undo if this launch fails.
        mask = relu_mask(x.size) if relu and save else None
        if isinstance(statistics, RunningStatistics):
            terms = normalizing_terms(x, channel_axis, statistics)
            launch_per_channel(
                channel_math.forward_coefficients, channels, terms.mean, terms.spread, terms.divisor, float(eps),
                _vector_or_absent(weight), _vector_or_absent(bias), residual_factor, saved_vectors, coefficients,
            )
            count, batch_stats, restore = terms.count, False, None
        else:
            count, batch_stats = statistics.count, True
            restore = _batch_coefficients(
                statistics, eps, weight, bias, residual_factor, running, saved_vectors, coefficients
            )
        try:
            saved = None
            if save:
                saved_mean, invstd, saved_weight = saved_vectors
                saved = SavedForward(
                    x, channel_axis, batch_stats, saved_mean, invstd, saved_weight, count, None,
                    mask, residual is not None,
                )
            return _normalized(x, channel_axis, coefficients, out, residual, relu, mask), saved
        except BaseException:  # an interrupt too: the running buffers must not keep this call's blend
            if restore is not None:
                restore()
            raise

    def check_input_unchanged(self, saved):
        """Nothing to check: reading back a sample of device memory would wait for the GPU."""

    def backward(self, saved, grad_output, weight_grad_dtype, combine_totals=None):
        x, axis = saved.x, saved.channel_axis
        channels = x.shape[axis]
        mask = saved.relu_mask
        sums_dtype = np.float64 if weight_grad_dtype is None else weight_grad_dtype
        # Without a ReLU the residual's gradient is dy itself (a copy: the caller owns dy).
        grad_residual = None
        if saved.residual and mask is None:
            grad_residual = device_array(x.shape, x.dtype)
            if x.size:
                _copied(grad_output, axis, grad_residual)
        if x.size == 0 and combine_totals is None:
            if saved.residual:
                grad_residual = device_array(x.shape, x.dtype)
            if weight_grad_dtype is None:
                return Gradients(device_array(x.shape, x.dtype), None, None, grad_residual)
            grad_weight, grad_bias = to_device(np.zeros((2, channels), weight_grad_dtype))
            return Gradients(device_array(x.shape, x.dtype), grad_weight, grad_bias, grad_residual)

        dtype = compute_dtype(x)
        sums = None  # rows: sum(dy * xhat), sum(dy)
        passed = None  # dy where the ReLU let it through
        if saved.batch_stats:
            if x.size:
                part_dy, part_dy_xmu = grad_sum_parts(x, grad_output, axis, saved.mean, mask)
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
            if x.size:
                grad_in, passed = grad_input(x, grad_output, axis, coefficients, mask, saved.residual)
            else:
                grad_in = device_array(x.shape, x.dtype)
                passed = device_array(x.shape, x.dtype) if saved.residual else None
        else:
            # The statistics were constants: dx = dy * w * invstd, one pass over dy (and the mask).
            if weight_grad_dtype is not None:
                part_dy, part_dy_xmu = grad_sum_parts(x, grad_output, axis, saved.mean, mask)
                sums = device_array((2, channels), sums_dtype)
                launch_per_channel(channel_math.weight_grads, channels, part_dy, part_dy_xmu, saved.invstd, sums)
            coefficients = scratch_array("grad_scale", (4, channels), dtype)
            copy_from_host(coefficients, np.zeros((4, channels), dtype))
            if mask is not None:  # gated dy times k_dy (fourth row), no x term
                launch_per_channel(channel_math.grad_scale, channels, saved.invstd, saved.weight, coefficients[3])
                grad_in, passed = grad_input(x, grad_output, axis, coefficients, mask, saved.residual, x_term=False)
            else:  # shift 0, scale k_dy, offset 0
                launch_per_channel(channel_math.grad_scale, channels, saved.invstd, saved.weight, coefficients[1])
                grad_in = normalize(grad_output, axis, coefficients)
        if passed is not None:
            grad_residual = passed
        if weight_grad_dtype is None:
            return Gradients(grad_in, None, None, grad_residual)
        grad_weight, grad_bias = sums
        return Gradients(grad_in, grad_weight, grad_bias, grad_residual)

    def repeated_call(self, module, x, channel_axis, save):
        return None  # a launch's latency dwarfs the checks that a repeated CPU call skips

    def mean_and_variance(self, statistics, dtype):
        channels = statistics.mean.shape[0]
        out = device_array((2, channels), dtype)
        count = float(statistics.count) if statistics.count else math.nan
        launch_per_channel(channel_math.mean_and_variance, channels, statistics.mean, statistics.m2, count, out)
        return out[0], out[1]


CUDA = CudaBackend()
