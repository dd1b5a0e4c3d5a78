"""Whole-array CUDA operations: device views, launch geometry, stream, scratch.

The counterpart of ``cpu_backend`` for ``numba.cuda`` device arrays. Inputs
arrive validated. Operands are re-viewed (no copy) as the 5-D ``RUNS`` or
``ROWS`` views of ``_layout`` - the same plan as on the CPU, computed from the
arrays' shapes and strides - except that an input with a negative stride is
first copied to a C-contiguous device array (views of device memory must start
at the first element). Results are new C-contiguous device arrays. Everything
is queued on the stream of ``_stream.current_stream()``.

This module imports ``numba.cuda``: import it only when CUDA is in use.
"""

import functools
import math
import warnings

import numpy as np
from numba import config as numba_config
from numba import cuda
from numpy.lib.stride_tricks import as_strided

from . import config, cuda_kernels
from ._layout import ROWS, kernel_views
from ._stream import current_stream

_WARP = 32
_MAX_GRID_Y = 65535
_MAX_GRID_X = 2**31 - 1
_DIMS = 5

#: Reduction staging buffers, reused per (name, shape, stream): work queued
#: on one stream runs in order, so a buffer is free again when the next
#: reduction on that stream starts.
_scratch = {}


# ---------------------------------------------------------- environment


def is_simulator():
    return bool(numba_config.ENABLE_CUDASIM)


def use_warp_shuffle():
    flag = config.CUDA_WARP_SHUFFLE
    return (not is_simulator()) if flag is None else bool(flag)


def _threads_per_block():
    threads = config.CUDA_THREADS
    if not (isinstance(threads, int) and 32 <= threads <= 1024 and threads & (threads - 1) == 0):
        raise ValueError(f"expected config.CUDA_THREADS to be a power of two from 32 to 1024, got {threads!r}")
    return threads


def device_array(shape, dtype):
    return cuda.device_array(shape, np.dtype(dtype), stream=current_stream())


def to_device(host_array):
    return cuda.to_device(np.ascontiguousarray(host_array), stream=current_stream())


def to_host(array):
    """A NumPy copy of a device array, after the work queued on the stream."""
    stream = current_stream()
    host = array.copy_to_host(stream=stream)
    if stream:
        stream.synchronize()
    return host


def scratch_array(name, shape, dtype=np.float64):
    """A device buffer for work that the next kernels on the current stream consume.

    Reused by the next call with the same name on the same stream (stream
    order makes that safe), so a step allocates only what it returns or saves.
    """
    stream = current_stream()
    dtype = np.dtype(dtype)
    key = (name, shape, dtype, stream)
    array = _scratch.get(key)
    if array is None:
        # One buffer per name and stream: drop the ones of other shapes.
        for old in [k for k in _scratch if k[0] == name and k[3] is stream]:
            del _scratch[old]
        array = _scratch[key] = device_array(shape, dtype)
    return array


# ---------------------------------------------------------------- views


def _view(array, shape, strides):
    """A device array over ``array``'s memory with another shape/strides (same first element)."""
    if is_simulator():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(as_strided(array._ary, shape, strides), stream=array.stream)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(shape, strides, array.dtype, stream=array.stream, gpu_data=array.gpu_data)


def _padded(array):
    """``array`` as a 5-D view, size-1 axes in front."""
    missing = _DIMS - array.ndim
    return _view(array, (1,) * missing + tuple(array.shape), (0,) * missing + tuple(array.strides))


def _without_negative_strides(array):
    if all(s >= 0 for s in array.strides):
        return array
    copy = device_array(array.shape, array.dtype)
    source, target = _padded(array), _padded(copy)
    threads = _threads_per_block()
    blocks = max(1, min(math.ceil(array.size / threads), _MAX_GRID_Y))
    launch(cuda_kernels.copy_5d, blocks, threads, (source, target))
    return copy


@functools.lru_cache(maxsize=512)
def _layout_plan(channel_axis, specs, inputs):
    """``_layout.kernel_views``'s plan for operands described by (shape, strides, dtype).

    Computed on host arrays that have the operands' shapes and strides over a
    single element (never read), and cached: a training loop sees the same
    few shapes again and again. Returns ``(layout, ((shape, strides), ...))``.
    """
    shadows = [as_strided(np.zeros(1, dtype), shape, strides) for shape, strides, dtype in specs]
    layout, in_views, out_views = kernel_views(channel_axis, shadows[:inputs], shadows[inputs:])
    return layout, tuple((v.shape, v.strides) for v in list(in_views) + list(out_views))


def device_views(channel_axis, inputs, outputs=()):
    """``(layout, input_views, output_views)``: ``_layout.kernel_views`` for device arrays."""
    inputs = [_without_negative_strides(a) for a in inputs]
    arrays = list(inputs) + list(outputs)
    specs = tuple((tuple(a.shape), tuple(a.strides), a.dtype.str) for a in arrays)
    layout, plans = _layout_plan(channel_axis, specs, len(inputs))
    views = [_view(a, shape, strides) for a, (shape, strides) in zip(arrays, plans)]
    return layout, views[: len(inputs)], views[len(inputs) :]


# ------------------------------------------------------ launch geometry


def _next_power_of_two(n):
    return 1 << max(0, (n - 1).bit_length())


def geometry(layout, shape, reduction):
    """``(grid, block, parts, extra)`` for a 5-D view of ``shape``.

    Runs views: 1-D blocks, a warp along each segment of a run; ``extra`` is
    ``(splits,)``, the segments per run, chosen so every block has segments
    to read. Rows views: 2-D blocks of ``(TX channels, TY rows)`` with TX up
    to a warp, so small C still fills the warps; ``extra`` is empty.
    ``parts`` blocks share each channel (grid x); channel tiles are grid y.
    A reduction caps the total at ``CUDA_TARGET_BLOCKS`` (each part costs a
    merge); an elementwise pass only at the grid limit.
    """
    threads = _threads_per_block()
    shape = tuple(shape)
    values_per_thread = max(1, int(config.CUDA_VALUES_PER_THREAD))
    if layout == ROWS:
        channels, along = shape[4], math.prod(shape[:4])
        tx = min(_next_power_of_two(channels), _WARP)
        block = (tx, threads // tx)
        tiles = min(math.ceil(channels / tx), _MAX_GRID_Y)
        lanes = block[1]
    else:
        channels, along = shape[0], math.prod(shape[1:])
        block = (threads, 1)
        tiles = min(channels, _MAX_GRID_Y)
        lanes = threads
    parts = math.ceil(along / (lanes * values_per_thread))
    cap = max(1, config.CUDA_TARGET_BLOCKS // tiles) if reduction else _MAX_GRID_X
    parts = max(1, min(parts, cap))
    if layout == ROWS:
        return (parts, tiles), block, parts, ()
    runs, run_length = math.prod(shape[1:4]), shape[4]
    segments_per_pass = threads // min(run_length, _WARP)
    wanted = math.ceil(parts * segments_per_pass / runs)
    longest = math.ceil(run_length / (_WARP * values_per_thread))
    splits = max(1, min(wanted, longest))
    parts = min(parts, math.ceil(runs * splits / segments_per_pass))  # no block without a segment
    return (parts, tiles), block, parts, (splits,)


def launch(kernel, grid, block, args, shared_bytes=0):
    """Queue ``kernel`` on the current stream.

    Small grids are deliberate here (O(C) kernels, small inputs), so numba's
    low-occupancy performance warning is silenced for these launches only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
        kernel[grid, block, current_stream(), shared_bytes](*args)


def _per_channel_grid(channels):
    threads = _threads_per_block()
    return max(1, math.ceil(channels / threads)), threads


def launch_per_channel(kernel, channels, *args):
    """Run an O(C) kernel with one thread per channel."""
    blocks, threads = _per_channel_grid(channels)
    launch(kernel, blocks, threads, args)


# --------------------------------------------------------- whole arrays


def channel_stats(x, channel_axis):
    """``(count, mean, m2)`` per channel: count an int, mean and M2 float64 device arrays."""
    layout, (xv,), _ = device_views(channel_axis, [x])
    grid, block, parts, extra = geometry(layout, xv.shape, reduction=True)
    channels = xv.shape[4] if layout == ROWS else xv.shape[0]
    shape = (channels, parts)
    part_count = scratch_array("count", shape)
    part_mean = scratch_array("mean", shape)
    part_m2 = scratch_array("m2", shape)
    kernel = cuda_kernels.channel_stats_rows if layout == ROWS else cuda_kernels.channel_stats_runs
    shared_bytes = 3 * block[0] * block[1] * 8
    launch(kernel, grid, block, (xv, part_count, part_mean, part_m2, use_warp_shuffle(), *extra), shared_bytes)
    mean, m2 = device_array((2, channels), np.float64)  # one allocation, two rows
    launch_per_channel(cuda_kernels.merge_stat_parts, channels, part_count, part_mean, part_m2, mean, m2)
    return x.size // channels, mean, m2


def normalize(x, channel_axis, shift, scale, offset):
    """New C-contiguous ``(x - shift) * scale + offset`` (per channel), ``x``'s dtype."""
    y = device_array(x.shape, x.dtype)
    layout, (xv,), (yv,) = device_views(channel_axis, [x], [y])
    grid, block, _, extra = geometry(layout, xv.shape, reduction=False)
    kernel = cuda_kernels.normalize_rows if layout == ROWS else cuda_kernels.normalize_runs
    launch(kernel, grid, block, (xv, yv, shift, scale, offset, *extra))
    return y


def grad_sums(x, grad_output, channel_axis, mean):
    """Per-(channel, part) float64 partial ``sum(dy)`` and ``sum(dy * (x - mean))``.

    The parts are summed, in order, by ``cuda_kernels.backward_coefficients``.
    """
    layout, (xv, dyv), _ = device_views(channel_axis, [x, grad_output])
    grid, block, parts, extra = geometry(layout, xv.shape, reduction=True)
    channels = xv.shape[4] if layout == ROWS else xv.shape[0]
    part_dy = scratch_array("dy", (channels, parts))
    part_dy_xmu = scratch_array("dy_xmu", (channels, parts))
    kernel = cuda_kernels.grad_sums_rows if layout == ROWS else cuda_kernels.grad_sums_runs
    shared_bytes = 2 * block[0] * block[1] * 8
    launch(kernel, grid, block, (xv, dyv, mean, part_dy, part_dy_xmu, use_warp_shuffle(), *extra), shared_bytes)
    return part_dy, part_dy_xmu


def grad_input(x, grad_output, channel_axis, shift, k_dy, k_x, k_const):
    """New C-contiguous ``k_dy * dy + k_x * (x - shift) + k_const``, ``x``'s dtype."""
    dx = device_array(x.shape, x.dtype)
    layout, (xv, dyv), (dxv,) = device_views(channel_axis, [x, grad_output], [dx])
    grid, block, _, extra = geometry(layout, xv.shape, reduction=False)
    kernel = cuda_kernels.grad_input_rows if layout == ROWS else cuda_kernels.grad_input_runs
    launch(kernel, grid, block, (xv, dyv, dxv, shift, k_dy, k_x, k_const, *extra))
    return dx
