"""Whole-array CPU operations: lay the operands out for the kernels and call them.

Inputs arrive validated. Per-channel vectors go in and come out as float64;
elementwise coefficients are passed in the compute dtype (float32 for float16
and float32 data, float64 for float64 data). Inputs smaller than
``config.SERIAL_BELOW`` values run on the calling thread only.
"""

import numpy as np

from . import config, cpu_kernels
from ._layout import ROWS, RUNS, kernel_operands
from ._threading import serialize_unless_thread_safe


def _kernel_array(array):
    """The array as the kernels read it: float16 as its uint16 bits, native byte order,
    strides in whole elements."""
    dtype = array.dtype
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    elif not array.flags.c_contiguous and any(s % dtype.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    if dtype.char == "e":  # float16
        return array.view(np.uint16)
    return array


def _output_dtype(kernel_array):
    """Native dtype of the result for an input as the kernels read it."""
    return np.float16 if kernel_array.dtype == np.uint16 else kernel_array.dtype


_KERNELS = {
    (name, layout, serial): getattr(cpu_kernels, f"{name}_{layout}{'_serial' if serial else ''}")
    for name in ("channel_stats", "normalize", "grad_sums", "grad_input")
    for layout in (ROWS, RUNS)
    for serial in (False, True)
}


def _kernel(name, layout, size):
    """The ``name`` kernel for ``layout``, serial when ``size`` is below the threshold."""
    return _KERNELS[name, layout, size < config.SERIAL_BELOW]


def _row_blocks(x):
    """Row blocks for an input of ``x``'s size: ``config.ROW_BLOCKS`` or fewer when small."""
    return max(1, min(config.ROW_BLOCKS, x.size // config.ROW_BLOCK_VALUES))


def _split(layout, x, shape):
    """Work split of a reduction over the kernel ``shape``: the run chunk, or row blocks.

    Row blocks are also bounded by the row count, so that their partial
    states (O(C) each) stay small next to the data when C is large.
    """
    if layout != ROWS:
        return config.RUN_CHUNK
    rows = shape[0] * shape[1] * shape[2] * shape[3]  # (A, B, D, R, C)
    return max(1, min(_row_blocks(x), rows // config.ROW_BLOCK_MIN_ROWS))


def _elementwise_part():
    """Values per parallel part of an elementwise pass over runs."""
    return 16 * config.RUN_CHUNK


@serialize_unless_thread_safe
def channel_stats(x, channel_axis):
    """``(count, mean, m2)`` per channel: count is an int, mean and M2 float64."""
    layout, shape, ((xb, xo, xs),), _ = kernel_operands(channel_axis, [_kernel_array(x)])
    count, mean, m2 = _kernel("channel_stats", layout, x.size)(xb, xo, xs, shape, _split(layout, x, shape))
    return int(count), mean, m2


@serialize_unless_thread_safe
def normalize(x, channel_axis, shift, scale, offset):
    """New C-contiguous ``(x - shift) * scale + offset`` (per channel), ``x``'s dtype in native byte order."""
    x = _kernel_array(x)
    y = np.empty(x.shape, _output_dtype(x))
    layout, shape, ((xb, xo, xs), (yb, yo, ys)), position = kernel_operands(
        channel_axis, [x], [_kernel_array(y)], memory_order=True
    )
    kernel = _kernel("normalize", layout, x.size)
    if layout == ROWS:
        kernel(xb, xo, xs, yb, yo, ys, shape, shift, scale, offset, _row_blocks(x))
    else:
        kernel(xb, xo, xs, yb, yo, ys, shape, position, shift, scale, offset, _elementwise_part())
    return y


@serialize_unless_thread_safe
def grad_sums(x, grad_output, channel_axis, mean):
    """Per-channel float64 ``sum(dy)`` and ``sum(dy * (x - mean))``."""
    layout, shape, ((xb, xo, xs), (gb, go, gs)), _ = kernel_operands(
        channel_axis, [_kernel_array(x), _kernel_array(grad_output)]
    )
    return _kernel("grad_sums", layout, x.size)(xb, xo, xs, gb, go, gs, shape, mean, _split(layout, x, shape))


@serialize_unless_thread_safe
def grad_input(x, grad_output, channel_axis, shift, k_dy, k_x, k_const):
    """New C-contiguous ``k_dy * dy + k_x * (x - shift) + k_const``, ``x``'s dtype in native byte order."""
    x = _kernel_array(x)
    dx = np.empty(x.shape, _output_dtype(x))
    layout, shape, ((xb, xo, xs), (gb, go, gs), (db, do, ds)), position = kernel_operands(
        channel_axis, [x, _kernel_array(grad_output)], [_kernel_array(dx)], memory_order=True
    )
    kernel = _kernel("grad_input", layout, x.size)
    if layout == ROWS:
        kernel(xb, xo, xs, gb, go, gs, db, do, ds, shape, shift, k_dy, k_x, k_const, _row_blocks(x))
    else:
        kernel(
            xb, xo, xs, gb, go, gs, db, do, ds, shape, position,
            shift, k_dy, k_x, k_const, _elementwise_part(),
        )
    return dx
