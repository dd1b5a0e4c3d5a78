"""The row normalisations (GroupNorm, InstanceNorm, LayerNorm) on NumPy arrays.

``numba_bn/cuda/row_backend.py`` is this module's twin, name for name: both
offer ``forward_rows`` and ``backward_rows`` over the rows that
``numba_bn/_row_layout.py`` describes, with float64 per-row statistics.
The kernels read C-contiguous data in native byte order: other inputs are
copied once to that layout (the copy is what backward then reads).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from .. import config
from .._dtypes import compute_dtype, native_dtype
from .._row_layout import RowGeometry, row_blocks, row_parts
from . import fingerprint, row_kernels
from .backend import _kernel_array, _output_dtype
from .thread_safety import serialize_unless_thread_safe


class RowStatistics(NamedTuple):
    """Per-row float64 statistics of a forward (device arrays of the backend's device)."""

    mean: Any
    var: Any  # biased; None when the statistics were given (running statistics)
    invstd: Any


class SavedRows(NamedTuple):
    """What a row backward needs from its forward."""

    x: Any  # the input as the kernels read it (a reference to the caller's when no copy was needed)
    geometry: RowGeometry
    statistics: RowStatistics
    weight: Any  # the affine's scale at forward time, compute dtype, per weight index (ones without one)
    batch_stats: bool  # normalised with the rows' own statistics
    input_sample: Optional[bytes]
    source: Any  # the caller's array (x is a copy of it when it was not C-contiguous and native)


def readable(x):
    """``x`` as the kernels read it: C-contiguous, native byte order, float16 as its bits."""
    if not (x.flags.c_contiguous and x.dtype.isnative):
        x = np.ascontiguousarray(x, dtype=native_dtype(x))
    return _kernel_array(x)


def _serial(x):
    return x.size < config.SERIAL_BELOW


def forward_kernel(x):
    """The forward kernel for ``x``: serial below ``config.SERIAL_BELOW`` values."""
    return row_kernels.forward_serial if _serial(x) else row_kernels.forward


class CpuRows:
    """Row normalisations on NumPy arrays."""

    device = "cpu"

    def affine_vector(self, values, count, fill, dtype):
        """The affine's vector per weight index in the kernels' compute ``dtype``; ``fill`` when absent."""
        if values is None:
            return np.full(count, fill, dtype)
        if values.dtype == dtype and values.ndim == 1 and values.flags.c_contiguous:
            return values  # the common case: a module's own parameter, read as it is
        return np.ascontiguousarray(np.asarray(values).reshape(-1), dtype=dtype)

    def forward_rows(self, x, geometry, weight, bias, eps, given=None, save=True):
        """``(y, RowStatistics, SavedRows or None)``: every row of ``x`` normalised with its own statistics,
        or with ``given`` ``(mean, invstd)`` float64 per row, then ``y * weight + bias`` per weight index."""
        source = x
        x = readable(x)
        dtype = compute_dtype(source)
        count = geometry.weight_count
        weight_c = self.affine_vector(weight, count, 1.0, dtype)
        bias_c = self.affine_vector(bias, count, 0.0, dtype)
        rows = geometry.rows
        out = np.empty(x.shape, _output_dtype(x))
        if given is None:
            mean, var, invstd = np.empty((3, rows)) if x.size else np.full((3, rows), np.nan)
        else:
            mean, invstd = (np.ascontiguousarray(v, dtype=np.float64) for v in given)
            var = np.empty(rows)
        terms = np.empty((rows, 3), dtype)
        if x.size:
            run_kernel(
                forward_kernel(x), x.reshape(-1), _kernel_array(out).reshape(-1), geometry.shape, geometry.strides,
                weight_c, bias_c, geometry.weight_strides, float(eps), row_parts(geometry), given is not None, mean,
                var, invstd, terms,
            )
        statistics = RowStatistics(mean, None if given is not None else var, invstd)
        saved = None
        if save:
            saved = SavedRows(
                x, geometry, statistics, borrowed_copy(weight_c, weight), given is None, fingerprint.record(source),
                source,
            )
        return out, statistics, saved

    def check_input_unchanged(self, saved):
        if saved.input_sample is not None:
            fingerprint.check_unchanged(saved.source, saved.input_sample)

    def backward_rows(self, saved, grad_output, weights, grad_dtype):
        """``(grad_input, grad_weight, grad_bias)``: ``sum(dy * xhat)`` and ``sum(dy)`` per weight index in
        ``grad_dtype`` (accumulated in float64) when ``weights``, else None."""
        x, geometry = saved.x, saved.geometry
        dy = readable(grad_output)
        dx = np.empty(x.shape, _output_dtype(x))
        rows = geometry.rows
        terms = np.empty((rows, 3), saved.weight.dtype)
        grad_terms = np.empty((rows, 2), saved.weight.dtype)
        statistics = saved.statistics
        if x.size == 0:
            zeros = np.zeros(geometry.weight_count, grad_dtype)
            return dx, (zeros if weights else None), (zeros.copy() if weights else None)
        kernel = row_kernels.backward_serial if _serial(x) else row_kernels.backward
        sum_dy_xhat, sum_dy = run_kernel(
            kernel, x.reshape(-1), dy.reshape(-1), _kernel_array(dx).reshape(-1), geometry.shape, geometry.strides,
            saved.weight, geometry.weight_strides, geometry.weight_count, statistics.mean, statistics.invstd,
            saved.batch_stats, bool(weights), row_parts(geometry), row_blocks(geometry), terms, grad_terms,
        )
        if not weights:
            return dx, None, None
        return dx, sum_dy_xhat.astype(grad_dtype), sum_dy.astype(grad_dtype)

    def repeated_rows(self, module, x, geometry, options):
        """After a forward of ``module`` on ``x`` (rows ``geometry``, module ``options``) succeeded on the
        general path: an object whose ``repeats(module, x, options)`` tells in O(1) whether a later forward
        is the same call again, and whose ``forward(x, save)`` then runs it with the same results; None
        where it does not apply. See ``numba_bn/cpu/row_small_calls.py``."""
        from .row_small_calls import RepeatedRows  # it builds on this module

        return RepeatedRows.of(module, x, geometry, options)

    def to_host(self, array):
        return np.array(array, copy=True)

    def from_host(self, values, dtype):
        return np.array(values, dtype=dtype, order="C", copy=True)


def borrowed_copy(vector, values):
    """``vector`` (``affine_vector(values, ...)``) as a backward may keep it: a copy when it is the caller's
    ``values`` or a view of them, which the caller may update in place (an optimizer's step) before that
    backward; ``affine_vector``'s own new arrays own their data."""
    return vector.copy() if vector is values or vector.base is not None else vector


@serialize_unless_thread_safe
def run_kernel(kernel, *args):
    return kernel(*args)


CPU_ROWS = CpuRows()
