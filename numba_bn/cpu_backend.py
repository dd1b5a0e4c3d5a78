"""Whole-array CPU operations: lay the operands out for the kernels and call them.

Inputs arrive validated. Per-channel vectors go in and come out as float64;
elementwise coefficients are passed in the compute dtype (float32 for float16
and float32 data, float64 for float64 data).
"""

import numpy as np

from . import config, cpu_kernels
from ._layout import ROWS, kernel_views
from ._threading import serialize_unless_thread_safe


def _kernel_array(array):
    """The array as the kernels read it: float16 as its uint16 bits, native byte order."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.float16:
        return array.view(np.uint16)
    return array


def _output_dtype(kernel_array):
    """Native dtype of the result for an input as the kernels read it."""
    return np.float16 if kernel_array.dtype == np.uint16 else kernel_array.dtype


def _split_parameter(layout):
    return config.ROW_BLOCKS if layout == ROWS else config.RUN_CHUNK


@serialize_unless_thread_safe
def channel_stats(x, channel_axis):
    """``(count, mean, m2)`` per channel: count is an int, mean and M2 float64."""
    layout, (xv,), _ = kernel_views(channel_axis, [_kernel_array(x)])
    kernel = cpu_kernels.channel_stats_rows if layout == ROWS else cpu_kernels.channel_stats_runs
    counts, mean, m2 = kernel(xv, _split_parameter(layout))
    return int(counts[0]), mean, m2


@serialize_unless_thread_safe
def normalize(x, channel_axis, shift, scale, offset):
    """New C-contiguous ``(x - shift) * scale + offset`` (per channel), ``x``'s dtype in native byte order."""
    x = _kernel_array(x)
    y = np.empty(x.shape, _output_dtype(x))
    layout, (xv,), (yv,) = kernel_views(channel_axis, [x], [_kernel_array(y)])
    kernel = cpu_kernels.normalize_rows if layout == ROWS else cpu_kernels.normalize_runs
    kernel(xv, yv, shift, scale, offset, _split_parameter(layout))
    return y


@serialize_unless_thread_safe
def grad_sums(x, grad_output, channel_axis, mean):
    """Per-channel float64 ``sum(dy)`` and ``sum(dy * (x - mean))``."""
    layout, (xv, dyv), _ = kernel_views(
        channel_axis, [_kernel_array(x), _kernel_array(grad_output)]
    )
    kernel = cpu_kernels.grad_sums_rows if layout == ROWS else cpu_kernels.grad_sums_runs
    return kernel(xv, dyv, mean, _split_parameter(layout))


@serialize_unless_thread_safe
def grad_input(x, grad_output, channel_axis, shift, k_dy, k_x, k_const):
    """New C-contiguous ``k_dy * dy + k_x * (x - shift) + k_const``, ``x``'s dtype in native byte order."""
    x = _kernel_array(x)
    dx = np.empty(x.shape, _output_dtype(x))
    layout, (xv, dyv), (dxv,) = kernel_views(
        channel_axis, [x, _kernel_array(grad_output)], [_kernel_array(dx)]
    )
    kernel = cpu_kernels.grad_input_rows if layout == ROWS else cpu_kernels.grad_input_runs
    kernel(xv, dyv, dxv, shift, k_dy, k_x, k_const, _split_parameter(layout))
    return dx
