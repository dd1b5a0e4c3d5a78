"""The row normalisations (GroupNorm, InstanceNorm, LayerNorm) on ``numba.cuda`` device arrays.

The twin of ``numba_bn/cpu/row_backend.py``, name for name: ``forward_rows``
and ``backward_rows`` over the rows of ``numba_bn/_row_layout.py``, with
float64 per-row statistics on the device. The kernels read C-contiguous data:
other inputs are first copied on the device (the copy is what backward reads).
Every launch goes through ``launch.launch``, on the current stream.
"""

from __future__ import annotations

import math

import numpy as np

from .. import config
from .._row_layout import RowGeometry
from ..cpu.row_backend import RowStatistics, SavedRows
from . import kernels, row_kernels
from .arrays import device_array, to_device, to_host
from .launch import _padded, launch, threads_per_block

_MAX_GRID_Y = 65535
_ELEMENTWISE_BLOCKS = 4096


def row_pieces(geometry: RowGeometry) -> int:
    """Blocks per row: enough that every thread has ``config.CUDA_VALUES_PER_THREAD`` values, within
    ``config.CUDA_TARGET_BLOCKS`` blocks in all (a few long rows still fill the GPU)."""
    length = geometry.row_length
    wanted = math.ceil(length / (threads_per_block() * max(1, int(config.CUDA_VALUES_PER_THREAD))))
    cap = max(1, config.CUDA_TARGET_BLOCKS // max(1, geometry.rows))
    return max(1, min(wanted, cap))


def _contiguous(x):
    """``x`` C-contiguous on the device (a device copy when it is not)."""
    if x.is_c_contiguous():
        return x
    if x.ndim > 5:  # beyond the copy kernel's five axes: through the host
        return to_device(np.ascontiguousarray(to_host(x)))
    copy = device_array(x.shape, x.dtype)
    threads = threads_per_block()
    launch(kernels.copy_5d, max(1, min(math.ceil(x.size / threads), _MAX_GRID_Y)), threads, (_padded(x), _padded(copy)))
    return copy


def _flat(array):
    return array.reshape(array.size)


def _elementwise_grid(size):
    threads = threads_per_block()
    return max(1, min(math.ceil(size / threads), _ELEMENTWISE_BLOCKS)), threads


def _per_row_grid(rows):
    threads = threads_per_block()
    return max(1, math.ceil(rows / threads)), threads


class CudaRows:
    """Row normalisations on device arrays."""

    device = "cuda"

    def affine_vector(self, values, count, fill):
        """The affine's vector per weight index as a float64 device array; ``fill`` when absent."""
        if values is None:
            return to_device(np.full(count, fill))
        return to_device(to_host(values).reshape(-1).astype(np.float64))

    def forward_rows(self, x, geometry, weight, bias, eps, given=None, save=True):
        """``(y, RowStatistics, SavedRows or None)``, as the CPU's ``forward_rows``."""
        source = x
        x = _contiguous(x)
        count = geometry.weight_count
        weight_v = self.affine_vector(weight, count, 1.0)
        bias_v = self.affine_vector(bias, count, 0.0)
        rows, length = geometry.rows, geometry.row_length
        _, G, _, B = geometry.shape
        sN, sG, sA = geometry.strides
        wg, wa, wb = geometry.weight_strides
        out = device_array(x.shape, x.dtype)
        if given is None:
            mean, var, invstd = (to_device(np.full(rows, np.nan)) for _ in range(3))
        else:
            mean, invstd = given
            var = None
        if x.size:
            flat_x = _flat(x)
            threads = threads_per_block()
            if given is None:
                pieces = row_pieces(geometry)
                states = device_array((rows, pieces, 3), np.float64)
                launch(
                    row_kernels.row_stat_parts, (pieces, min(rows, _MAX_GRID_Y)), threads,
                    (flat_x, rows, G, B, sN, sG, sA, length, states), 3 * threads * 8,
                )
                launch(row_kernels.merge_row_parts, *_per_row_grid(rows), (states, float(eps), mean, var, invstd))
            launch(
                row_kernels.row_normalize, *_elementwise_grid(x.size),
                (flat_x, _flat(out), G, B, sN, sG, sA, length, wg, wa, wb, weight_v, bias_v, mean, invstd),
            )
        statistics = RowStatistics(mean, var, invstd)
        saved = SavedRows(x, geometry, statistics, weight_v, given is None, None, source) if save else None
        return out, statistics, saved

    def check_input_unchanged(self, saved):
        """Nothing to compare on the device cheaply (see the CPU twin)."""

    def backward_rows(self, saved, grad_output, weights, grad_dtype):
        """``(grad_input, grad_weight, grad_bias)`` as the CPU's ``backward_rows``."""
        x, geometry = saved.x, saved.geometry
        dy = _contiguous(grad_output)
        dx = device_array(x.shape, x.dtype)
        count = geometry.weight_count
        if x.size == 0:
            zeros = np.zeros(count, grad_dtype)
            return dx, (to_device(zeros) if weights else None), (to_device(zeros) if weights else None)
        rows, length = geometry.rows, geometry.row_length
        N, G, A, B = geometry.shape
        sN, sG, sA = geometry.strides
        wg, wa, wb = geometry.weight_strides
        mean, invstd = saved.statistics.mean, saved.statistics.invstd
        flat_x, flat_dy = _flat(x), _flat(dy)
        threads = threads_per_block()
        terms = device_array((rows, 2), np.float64)
        pieces = row_pieces(geometry) if saved.batch_stats else 1
        sums = device_array((rows, pieces, 2), np.float64)
        if saved.batch_stats:
            launch(
                row_kernels.row_grad_parts, (pieces, min(rows, _MAX_GRID_Y)), threads,
                (flat_x, flat_dy, rows, G, B, sN, sG, sA, length, wg, wa, wb, saved.weight, mean, sums),
                2 * threads * 8,
            )
        launch(row_kernels.row_grad_terms, *_per_row_grid(rows),
               (sums, mean, invstd, saved.batch_stats, float(length), terms))
        launch(
            row_kernels.row_grad_input, *_elementwise_grid(x.size),
            (flat_x, flat_dy, _flat(dx), G, B, sN, sG, sA, length, wg, wa, wb, saved.weight, mean, invstd, terms),
        )
        if not weights:
            return dx, None, None
        grad_weight = device_array(count, np.float64)
        grad_bias = device_array(count, np.float64)
        launch(
            row_kernels.row_weight_grads, min(count, _MAX_GRID_Y), threads,
            (flat_x, flat_dy, N, G, A, B, sN, sG, sA, wg, wb, mean, invstd, grad_weight, grad_bias),
            2 * threads * 8,
        )
        return (dx, to_device(to_host(grad_weight).astype(grad_dtype)),
                to_device(to_host(grad_bias).astype(grad_dtype)))

    def repeated_rows(self, module, x, geometry, options):
        return None  # a launch's latency dwarfs the checks that a repeated CPU call skips

    def to_host(self, array):
        return to_host(array)

    def from_host(self, values, dtype):
        return to_device(np.asarray(values, dtype=dtype))


CUDA_ROWS = CudaRows()
