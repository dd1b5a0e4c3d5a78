"""The CPU backend: batch normalisation on NumPy arrays with the kernels of ``kernels``.

Implements ``numba_bn._backend.Backend``. Each step lays its operands out for
the kernels (``_layout.kernel_operands``), runs one whole-array kernel per
pass over the data and the per-channel arithmetic of ``channel_math`` in
between. Per-channel vectors are float64; elementwise coefficients are in the
compute dtype (float32 for float16 and float32 data, float64 for float64
data). Inputs smaller than ``config.SERIAL_BELOW`` values run on the calling
thread only. The elementwise passes use a per-channel ``shift`` equal to the
mean rounded to the compute dtype, so ``(x - shift)`` is small and exact and
no large terms cancel in float32.

``numba_bn/cuda/backend.py`` is this module's twin, name for name.
"""

import numpy as np

from .. import config
from .._backend import BatchStatistics, Gradients, SavedForward, normalizing_terms
from .._device_arrays import reject_device_array
from .._dtypes import compute_dtype, native_dtype
from .._layout import ROWS, RUNS, kernel_operands, walk_positions
from .._validation import check_ndarray, check_vector_fields
from . import channel_math, fingerprint, kernels
from .small_calls import RepeatedCall
from .thread_safety import serialize_unless_thread_safe

_ABSENT = np.empty(0)  # a missing weight or bias, for the compiled helpers
_KERNEL_VECTOR_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: ``(walk, layout, serial)`` -> kernel. The statistics and the backward sums
#: share the reduction kernels; the normalisation and the input gradient share
#: the elementwise ones (a flag picks what they compute). The ``relu_*`` and
#: ``gated_*`` walks are their twins through a fused ReLU.
_KERNELS = {
    (walk, layout, serial): getattr(kernels, f"{walk}_{layout}" + ("_serial" if serial else ""))
    for walk in kernels.WALKS
    for layout in (RUNS, ROWS)
    for serial in (False, True)
}


# ------------------------------------------------------------- operands


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


def _kernel(walk, layout, size):
    """The ``walk`` kernel for ``layout``, serial when ``size`` is below the threshold."""
    return _KERNELS[walk, layout, size < config.SERIAL_BELOW]


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


def _kernel_vector(vector):
    """A per-channel vector as the compiled helpers take it (zero-length when absent)."""
    if vector is None:
        return _ABSENT
    if vector.dtype in _KERNEL_VECTOR_DTYPES and vector.flags.c_contiguous:
        return vector
    return np.ascontiguousarray(vector, dtype=np.float64)


# ---------------------------------------------------- whole-array passes


@serialize_unless_thread_safe
def channel_stats(x, channel_axis):
    """``(count, mean, m2)`` per channel: count an int, mean and M2 float64."""
    layout, shape, ((xb, xo, xs),), _ = kernel_operands(channel_axis, [_kernel_array(x)])
    kernel = _kernel("reduce", layout, x.size)
    count, mean, m2 = kernel(
        xb, xo, xs, xb, xo, xs, shape, kernels.NO_REFERENCE, kernels.NO_MASK, kernels.NO_POSITIONS,
        _split(layout, x, shape),
    )
    return int(count), mean, m2


def _elementwise(x, second, channel_axis, coefficients, mode, out=None, out2=None, mask=kernels.NO_MASK):
    """An elementwise pass (``kernels.elementwise_*``'s ``mode``) over ``x`` and ``second`` (or None)
    into ``out``, or a new C-contiguous array; ``out2`` receives what a ``GATE`` pass let through.

    ``out`` must be native, with whole-element strides, and not overlap ``x``
    or ``second`` other than being one of them (see :func:`_writes_directly`).
    """
    x = _kernel_array(x)
    if out is None:
        out = np.empty(x.shape, _output_dtype(x))
    inputs = [x] if second is None else [x, _kernel_array(second)]
    outputs = [_kernel_array(out)] if out2 is None else [_kernel_array(out), out2]
    layout, shape, operands, position = kernel_operands(channel_axis, inputs, outputs, memory_order=True)
    # The kernels read (x, second) and write (out, out2): a one-input pass reads x twice, for free,
    # and a pass without out2 gets an empty one with out's strides.
    (xb, xo, xs), (gb, go, gs) = operands[0], operands[len(inputs) - 1]
    (ob, oo, os), (o2b, o2o, o2s) = operands[len(inputs)], operands[-1]
    if out2 is None:
        o2b = ob[:0]
    walk = "gated_elementwise" if mode & kernels.GATE else "relu_elementwise" if mode & kernels.RELU else "elementwise"
    kernel = _kernel(walk, layout, x.size)
    if layout == ROWS:
        kernel(xb, xo, xs, gb, go, gs, ob, oo, os, o2b, o2o, o2s, shape, coefficients, mode, mask, _row_blocks(x))
    else:
        kernel(
            xb, xo, xs, gb, go, gs, ob, oo, os, o2b, o2o, o2s, shape, position, coefficients, mode, mask,
            _elementwise_part(),
        )
    return out


@serialize_unless_thread_safe
def normalize(x, channel_axis, coefficients, out=None, residual=None, relu=False, mask=kernels.NO_MASK):
    """``(x - shift) * scale + offset`` per channel into ``out``, or a new C-contiguous array of
    ``x``'s dtype in native byte order.

    ``coefficients`` rows: shift, scale, offset and the residual's factor
    (a ``(4, C)`` array in the compute dtype, as ``grad_input`` takes). With
    a ``residual`` it is added (times the fourth row); with ``relu`` the
    result is clamped at 0 and, given a ``mask`` of ``ceil(x.size / 8)``
    bytes, each value's ``result > 0`` is recorded there for the backward.
    ``out`` as :func:`_elementwise` takes it.
    """
    mode = (0 if residual is None else kernels.ADD) | (kernels.RELU if relu else 0)
    return _elementwise(x, residual, channel_axis, coefficients, mode, out, mask=mask)


def _writes_directly(out, x):
    """Whether the kernels can write into ``out`` itself: native, whole-element strides, and either
    apart from ``x`` or ``x`` itself (each element is read before it is written)."""
    itemsize = out.dtype.itemsize
    if not out.dtype.isnative or any(stride % itemsize for stride in out.strides):
        return False
    same_elements = out.__array_interface__["data"][0] == x.__array_interface__["data"][0] and out.strides == x.strides
    if same_elements:
        return x.dtype.isnative
    return not _shares_memory(out, x)


def _shares_memory(a, b):
    """Exactly whether ``a`` and ``b`` share memory; the exact test only where their bounds meet."""
    return bool(np.may_share_memory(a, b) and np.shares_memory(a, b))


@serialize_unless_thread_safe
def grad_sums(x, grad_output, channel_axis, mean, mask=kernels.NO_MASK):
    """Per-channel float64 totals ``sum(dy)`` and ``sum(dy * (x - mean))``, ``dy`` gated by a
    forward's ReLU ``mask`` when one is given."""
    layout, shape, ((xb, xo, xs), (gb, go, gs)), _ = kernel_operands(
        channel_axis, [_kernel_array(x), _kernel_array(grad_output)]
    )
    positions = walk_positions(layout, shape, xs) if mask.size else kernels.NO_POSITIONS
    kernel = _kernel("gated_reduce" if mask.size else "reduce", layout, x.size)
    _, sum_dy, sum_dy_xmu = kernel(xb, xo, xs, gb, go, gs, shape, mean, mask, positions, _split(layout, x, shape))
    return sum_dy, sum_dy_xmu


@serialize_unless_thread_safe
def grad_input(x, grad_output, channel_axis, coefficients, mask=kernels.NO_MASK, grad_residual=False, x_term=True):
    """``(grad_input, grad_residual)``: new C-contiguous arrays of ``x``'s dtype in native byte order.

    ``grad_input = (x - shift) * k_x + k_const + k_dy * dy`` (without the
    first terms unless ``x_term``), ``coefficients`` rows shift, k_x,
    k_const, k_dy (``(4, C)``, compute dtype). Given a forward's ReLU
    ``mask``, ``dy`` passes only where the forward's result was not <= 0,
    and with ``grad_residual`` what passed is the second result (else None).
    """
    if not mask.size:
        return _elementwise(x, grad_output, channel_axis, coefficients, kernels.ADD), None
    passed = np.empty(x.shape, native_dtype(x)) if grad_residual else None
    mode = kernels.ADD | kernels.GATE | (0 if x_term else kernels.NO_X)
    out2 = None if passed is None else _kernel_array(passed)
    return _elementwise(x, grad_output, channel_axis, coefficients, mode, out2=out2, mask=mask), passed


@serialize_unless_thread_safe
def backward_by_channel(x, grad_output, channel_axis, mean, invstd, weight, count):
    """The training backward a channel at a time (``kernels.backward_runs``), where it pays:
    ``(grad_input, sums, coefficients)`` as ``grad_sums``, ``channel_math.backward_coefficients`` and
    ``grad_input`` give them (equal to rounding: the sums' vector loops differ); None for
    channels-last data (its channels share every row), small inputs (which must match their
    one-step lane, ``small_calls``, bit for bit), and fewer than ``config.BACKWARD_BY_CHANNEL``
    channels or ``config.BACKWARD_BY_CHANNEL_VALUES`` values per channel (where it does not pay).
    The choice depends on the shape alone, so results never depend on the thread count.
    """
    channels = x.shape[channel_axis]
    if (
        x.size < config.SERIAL_BELOW or channels < config.BACKWARD_BY_CHANNEL
        or x.size < channels * config.BACKWARD_BY_CHANNEL_VALUES
    ):
        return None
    dtype = compute_dtype(x)
    x = _kernel_array(x)
    out = np.empty(x.shape, _output_dtype(x))
    layout, shape, operands, _ = kernel_operands(channel_axis, [x, _kernel_array(grad_output)], [_kernel_array(out)])
    if layout != RUNS:
        return None
    (xb, xo, xs), (gb, go, gs), (ob, oo, os) = operands
    sums = np.empty((2, channels))
    coefficients = np.empty((4, channels), dtype)
    kernels.backward_runs(
        xb, xo, xs, gb, go, gs, ob, oo, os, shape, mean, invstd, weight, float(count), config.RUN_CHUNK,
        sums, coefficients,
    )
    return out, sums, coefficients


# --------------------------------------------------------------- backend


class CpuBackend:
    """``numba_bn._backend.Backend`` on NumPy arrays."""

    device = "cpu"

    # ------------------------------------------------------------ arrays

    def as_array(self, name, value):
        if type(value) is np.ndarray:  # the common case, checked in O(1) on every call
            return value
        return check_ndarray(name, reject_device_array(name, value))

    def check_vector(self, name, value, channels, dtype=None, writeable=False):
        return check_vector_fields(name, self.as_array(name, value), channels, dtype, writeable)

    def from_host(self, values, dtype):
        return np.array(values, dtype=dtype, order="C", copy=True)

    def to_host(self, array):
        return np.array(array, copy=True)

    def can_assign(self, target, values):
        return (
            isinstance(target, np.ndarray)
            and target.shape == values.shape
            and target.dtype == values.dtype
            and target.flags.writeable
        )

    def assign(self, target, values):
        target[...] = values

    def fill(self, target, value):
        target[...] = value

    # --------------------------------------------------------- the steps

    def batch_statistics(self, x, channel_axis, merge=True):
        # Always merged: the reduction merges its parts in the same compiled call.
        if x.size == 0:
            nan = np.full(x.shape[channel_axis], np.nan)
            return BatchStatistics(0, nan, nan.copy())
        return BatchStatistics(*channel_stats(x, channel_axis))

    def shares_memory(self, a, b):
        return _shares_memory(a, b)

    def forward(
        self, x, channel_axis, statistics, weight, bias, eps, save=True, out=None, residual=None, relu=False,
        running=None,
    ):
        y, saved = self._normalized(x, channel_axis, statistics, weight, bias, eps, save, out, residual, relu)
        if running is not None:  # last: a step that raised before leaves the buffers as they were
            self.update_running(running.mean, running.var, statistics, running.factor)
        return y, saved

    def _normalized(self, x, channel_axis, statistics, weight, bias, eps, save, out, residual, relu):
        channels = x.shape[channel_axis]
        terms = normalizing_terms(x, channel_axis, statistics)
        # The float64 rows are snapshots for backward: the caller may change the originals.
        saved_vectors = np.empty((3, channels))
        coefficients = np.zeros((4, channels), compute_dtype(x))  # the fourth row: the residual's factor
        channel_math.forward_coefficients(
            _kernel_vector(terms.mean), _kernel_vector(terms.spread), terms.divisor, float(eps),
            _kernel_vector(weight), _kernel_vector(bias), saved_vectors, coefficients,
        )
        if residual is not None:
            coefficients[3] = 1.0
        mask = np.empty((x.size + 7) // 8, np.uint8) if relu and save else kernels.NO_MASK
        saved = None
        if save:
            saved_mean, invstd, saved_weight = saved_vectors
            saved = SavedForward(
                x, channel_axis, terms.batch_stats, saved_mean, invstd, saved_weight, terms.count,
                fingerprint.record(x), mask if relu else None, residual is not None,
            )
        if x.size == 0:
            return (np.empty(x.shape, native_dtype(x)) if out is None else out), saved
        if out is None or (_writes_directly(out, x) and (residual is None or _writes_directly(out, residual))):
            return normalize(x, channel_axis, coefficients, out, residual, relu, mask), saved
        # A byte-swapped or oddly strided out, or one overlapping an input in another layout: via a new array.
        out[...] = normalize(x, channel_axis, coefficients, None, residual, relu, mask)
        return out, saved

    def update_running(self, running_mean, running_var, statistics, factor):
        """Blend the batch mean and unbiased variance into the buffers, in place (also ``numba_bn.dask``'s step)."""
        # Overflow to inf in a float32 buffer is the honest result for data beyond ~1e19.
        if statistics.count == 0:
            return
        count, mean, m2, factor = float(statistics.count), statistics.mean, statistics.m2, float(factor)
        if running_mean.dtype in _KERNEL_VECTOR_DTYPES and running_var.dtype in _KERNEL_VECTOR_DTYPES:
            channel_math.update_running(running_mean, running_var, mean, m2, count, factor)
            return
        # float16 or byte-swapped buffers: the same blend on float64 copies.
        mean64, var64 = running_mean.astype(np.float64), running_var.astype(np.float64)
        channel_math.update_running(mean64, var64, mean, m2, count, factor)
        with np.errstate(over="ignore", invalid="ignore"):
            running_mean[...] = mean64
            running_var[...] = var64

    def check_input_unchanged(self, saved):
        if saved.input_sample is not None:
            fingerprint.check_unchanged(saved.x, saved.input_sample)

    def backward(self, saved, grad_output, weight_grad_dtype, combine_totals=None):
        x, axis = saved.x, saved.channel_axis
        channels = x.shape[axis]
        mask = kernels.NO_MASK if saved.relu_mask is None else saved.relu_mask
        # Without a ReLU the residual's gradient is dy itself (a copy: the caller owns dy).
        grad_residual = None
        if saved.residual and saved.relu_mask is None:
            grad_residual = np.array(grad_output, dtype=native_dtype(grad_output), order="C")
        if x.size == 0 and combine_totals is None:
            zeros = None if weight_grad_dtype is None else np.zeros(channels, weight_grad_dtype)
            if saved.residual:
                grad_residual = np.empty(x.shape, native_dtype(x))
            return Gradients(
                np.empty(x.shape, native_dtype(x)), zeros, None if zeros is None else zeros.copy(), grad_residual
            )

        dtype = compute_dtype(x)
        sums = None  # rows: sum(dy * xhat), sum(dy)
        passed = None  # dy where the ReLU let it through
        by_channel = None
        if saved.batch_stats and x.size and combine_totals is None and not mask.size:
            by_channel = backward_by_channel(x, grad_output, axis, saved.mean, saved.invstd, saved.weight, saved.count)
        if by_channel is not None:
            grad_in, sums, _ = by_channel
        elif saved.batch_stats:
            if x.size:
                sum_dy, sum_dy_xmu = grad_sums(x, grad_output, axis, saved.mean, mask)
            else:  # an empty share of a batch spread over processes
                sum_dy, sum_dy_xmu = np.zeros((2, channels))
            sums = np.empty((2, channels))
            coefficients = np.empty((4, channels), dtype)
            if combine_totals is None:
                channel_math.backward_coefficients(
                    sum_dy, sum_dy_xmu, saved.mean, saved.invstd, saved.weight, float(saved.count), sums, coefficients
                )
            else:
                # This share's sums are its weight and bias gradients; the totals of the whole batch
                # give the input's gradient.
                if x.size:
                    channel_math.weight_grads(sum_dy, sum_dy_xmu, saved.invstd, sums)
                else:
                    sums[...] = 0.0  # nothing to scale: 0 even where the whole batch's invstd is not finite
                total_dy, total_dy_xmu = combine_totals(sum_dy, sum_dy_xmu)
                channel_math.backward_coefficients(
                    total_dy, total_dy_xmu, saved.mean, saved.invstd, saved.weight, float(saved.count),
                    np.empty((2, channels)), coefficients,
                )
            if x.size:
                grad_in, passed = grad_input(x, grad_output, axis, coefficients, mask, saved.residual)
            else:
                grad_in = np.empty(x.shape, native_dtype(x))
                passed = grad_in.copy() if saved.residual else None
        else:
            # The statistics were constants: dx = dy * w * invstd, one pass over dy (and the mask).
            if weight_grad_dtype is not None:
                sum_dy, sum_dy_xmu = grad_sums(x, grad_output, axis, saved.mean, mask)
                sums = np.empty((2, channels))
                channel_math.weight_grads(sum_dy, sum_dy_xmu, saved.invstd, sums)
            coefficients = np.zeros((4, channels), dtype)
            if mask.size:  # gated dy times k_dy (fourth row), no x term
                channel_math.grad_scale(saved.invstd, saved.weight, coefficients[3])
                grad_in, passed = grad_input(x, grad_output, axis, coefficients, mask, saved.residual, x_term=False)
            else:  # shift 0, scale k_dy, offset 0
                channel_math.grad_scale(saved.invstd, saved.weight, coefficients[1])
                grad_in = normalize(grad_output, axis, coefficients)
        if passed is not None:
            grad_residual = passed
        if weight_grad_dtype is None:
            return Gradients(grad_in, None, None, grad_residual)
        grad_weight, grad_bias = sums.astype(weight_grad_dtype)
        return Gradients(grad_in, grad_weight, grad_bias, grad_residual)

    def repeated_call(self, module, x, channel_axis, save):
        return RepeatedCall.of(module, x, channel_axis, save)

    def mean_and_variance(self, statistics, dtype):
        out = np.empty((2, statistics.mean.size), dtype)
        channel_math.mean_and_variance(statistics.mean, statistics.m2, float(statistics.count), out)
        return out[0], out[1]


CPU = CpuBackend()
