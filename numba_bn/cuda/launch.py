"""Launching CUDA kernels: device views of the operands, launch geometry, the launch itself.

Operands are re-viewed (no copy) as the 5-D ``RUNS`` or ``ROWS`` views of
``_layout`` - the same plan as on the CPU, computed from the arrays' shapes
and strides - except that an input with a negative stride is first copied
to a C-contiguous device array (views of device memory must start at the
first element). Every kernel of the backend is launched through
:func:`launch`, on the stream of ``stream.current_stream()``.
"""

import functools
import math
import warnings

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import config
from .._layout import ROWS, kernel_views
from . import kernels
from .arrays import device_array
from .limits import check_threads
from .numba_cuda import is_simulator, strided_view
from .stream import current_stream

_WARP = 32
_MAX_GRID_Y = 65535
_MAX_GRID_X = 2**31 - 1
_DIMS = 5



def use_warp_shuffle():
    flag = config.CUDA_WARP_SHUFFLE
    return (not is_simulator()) if flag is None else bool(flag)


def threads_per_block():
    return check_threads(config.CUDA_THREADS)


# ---------------------------------------------------------------- views


def _padded(array):
    """``array`` as a 5-D view, size-1 axes in front."""
    missing = _DIMS - array.ndim
    return strided_view(array, (1,) * missing + tuple(array.shape), (0,) * missing + tuple(array.strides))


def _without_negative_strides(array):
    if all(s >= 0 for s in array.strides):
        return array
    copy = device_array(array.shape, array.dtype)
    source, target = _padded(array), _padded(copy)
    threads = threads_per_block()
    blocks = max(1, min(math.ceil(array.size / threads), _MAX_GRID_Y))
    launch(kernels.copy_5d, blocks, threads, (source, target))
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
    views = [strided_view(a, shape, strides) for a, (shape, strides) in zip(arrays, plans)]
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
    threads = threads_per_block()
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


#: Sees every launch before it is queued (``set_launch_observer``); None almost always.
_observer = None


def set_launch_observer(observer):
    """Have ``observer(kernel, block, args, shared_bytes)`` see every launch from now on (None: none);
    a launch is queued only when it returns True. Returns the previous observer.

    The CUDA report records what the backend launches this way (``launch_record``).
    """
    global _observer
    previous, _observer = _observer, observer
    return previous


def launch(kernel, grid, block, args, shared_bytes=0):
    """Queue ``kernel`` on the current stream.

    Small grids are deliberate here (O(C) kernels, small inputs), so numba's
    low-occupancy performance warning is silenced for these launches only.
    """
    if _observer is not None and not _observer(kernel, block, args, shared_bytes):
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
        kernel[grid, block, current_stream(), shared_bytes](*args)


def _per_channel_grid(channels):
    threads = threads_per_block()
    return max(1, math.ceil(channels / threads)), threads


def launch_per_channel(kernel, channels, *args):
    """Run an O(C) kernel with one thread per channel."""
    blocks, threads = _per_channel_grid(channels)
    launch(kernel, blocks, threads, args)


