"""``numba.cuda`` kernels: per-channel statistics, normalisation and backward over whole arrays.

The same operations as ``numba_bn/cpu/kernels.py``, under the same names, on the same 5-D views (see
``_layout``): ``*_runs`` kernels take ``(C, A, B, D, M)`` views, cut each
contiguous run of ``M`` values into ``splits`` segments and let a warp read
along a segment (1-D blocks); ``*_rows`` kernels take ``(A, B, D, R, C)``
views with 2-D blocks of ``(TX channels, TY rows)``, so a warp reads
neighbouring channels of neighbouring rows. Block ``x`` index = part of a
channel's values, block ``y`` index = channel (tile); both loop when the grid
is smaller. Threads step through segments or rows with a fixed stride and
carry their (a, b, d, ...) indices along, so the inner loops do no 64-bit
division; all index arithmetic is 64-bit.

Reductions: each thread accumulates float64 sums of deviations from a shift
(the first value it reads), which makes constant data give exactly zero; the block
merges the per-thread (count, mean, M2) states with Chan's formula in a fixed
tree (optionally starting with warp shuffles), and writes one partial state
per (channel, part) to a staging buffer. A per-channel kernel then merges the
parts in order (``channel_math``), so many blocks share a channel (PyTorch
uses one block per channel) and results do not depend on scheduling.

This module imports ``numba.cuda``; import it only when CUDA is in use.
Kernels are compiled lazily (no signatures) on first launch.
"""

import types

import numpy as np
from numba import float64

from .channel_math import formulas
from .numba_cuda import cuda, kernel

_FULL_MASK = 0xFFFFFFFF
_WARP = 32

# What a fused elementwise pass computes (``mode``, a sum of these flags), as on the CPU:
#: add ``k3 * second`` (the forward's residual, or ``dy``);
ADD = 1
#: clamp at 0 (ReLU) and, when a mask is given, record ``not result <= 0`` as one bit per value;
RELU = 2
#: leave out the ``(x - k0) * k1 + k2`` term (the backward through constant statistics).
NO_X = 8


# ------------------------------------------------------------ indexing


@cuda.jit(device=True)
def _locate_row(row, B, D, R):
    """Indices (a, b, d, r) of the ``row``-th row of ``(A, B, D, R)`` rows (divisions: call once)."""
    rest = row // R
    r = row - rest * R
    rest2 = rest // D
    d = rest - rest2 * D
    a = rest2 // B
    b = rest2 - a * B
    return a, b, d, r


@cuda.jit(device=True)
def _carry(a, b, d, r, B, D, R):
    """Normalise indices after ``r`` grew: carry into d, b and a (divides only on overflow).

    Threads step through rows by a fixed stride, so most steps stay inside
    the innermost axis and cost no 64-bit division.
    """
    if r >= R:
        q = r // R
        r -= q * R
        d += q
        if d >= D:
            q = d // D
            d -= q * D
            b += q
            if b >= B:
                q = b // B
                b -= q * B
                a += q
    return a, b, d, r


@cuda.jit(device=True)
def _run_lanes(tx, TX, span):
    """How the threads of a 1-D block share segments of ``span`` values of a run.

    A warp (or ``span`` threads, when shorter) reads along one segment,
    coalesced, so a block covers ``per_pass`` segments at a time and short
    runs (7x7 images) still keep the threads busy. Returns
    ``(lanes, per_pass, sub, m0)``: this thread reads segment ``sub`` of each
    pass from offset ``m0`` on, or nothing when ``sub >= per_pass``.
    """
    lanes = min(span, _WARP)
    per_pass = TX // lanes
    sub = tx // lanes
    return lanes, per_pass, sub, tx - sub * lanes


@cuda.jit(device=True)
def _runs_partition(tx, TX, part, nparts, shape, splits):
    """How a thread of a 1-D block walks a ``(C, A, B, D, M)`` view cut into ``splits`` segments per run.

    Returns ``(units, span, lanes, first, step, m0)``: the segments in all,
    values per segment, the threads reading along one segment, this thread's
    first segment (``units`` when it has none) and its step between
    segments, and its offset inside a segment.
    """
    units = shape[1] * shape[2] * shape[3] * splits
    span = (shape[4] + splits - 1) // splits
    lanes, per_pass, sub, m0 = _run_lanes(tx, TX, span)
    first = part * per_pass + sub if sub < per_pass else units
    return units, span, lanes, min(first, units), nparts * per_pass, m0


@cuda.jit(device=True)
def _rows_partition(ty, TY, part, nparts, shape):
    """How a thread of a 2-D block walks an ``(A, B, D, R, C)`` view: ``(rows, first, step)``."""
    return shape[0] * shape[1] * shape[2] * shape[3], part * TY + ty, nparts * TY


@cuda.jit(device=True)
def _block_ids():
    """Thread and block indices as int64, so index arithmetic never wraps at 2**31."""
    return (
        np.int64(cuda.threadIdx.x),
        np.int64(cuda.threadIdx.y),
        np.int64(cuda.blockDim.x),
        np.int64(cuda.blockDim.y),
        np.int64(cuda.blockIdx.x),
        np.int64(cuda.blockIdx.y),
        np.int64(cuda.gridDim.x),
        np.int64(cuda.gridDim.y),
    )


@cuda.jit(device=True)
def _unsigned(i0, i1, i2, i3, i4):
    """A 5-D index as unsigned integers, for indexing.

    Indices here are never negative, but numba adds Python's wrap-around
    (``-1`` is the last element) to every signed index: a compare and an
    add per axis, with each array's shape kept live. Unsigned indices skip
    it; on sm_90 that is what lets the channels-first passes fit the launch
    bounds' 64 registers without spilling.
    """
    return np.uint64(i0), np.uint64(i1), np.uint64(i2), np.uint64(i3), np.uint64(i4)


# ------------------------------------------------------------- merging


def _block_tree(shared, lane, j, stride, n, v0, v1, v2, shuffle):
    """Combine the ``(v0, v1, v2)`` of items ``lane + j * stride`` (j < n) of a block with ``_pair``.

    A template, compiled per ``_pair`` (Chan's merge, or a sum) by
    ``_specialise``. Every thread of the block calls it once (it
    synchronises); thread ``(lane, j)`` brings its own values. Returns the
    combined values of its lane, valid in the threads with ``j == 0``.
    ``shared`` holds ``3 * n * stride`` float64 values. With ``shuffle``,
    items inside one warp are combined with warp shuffles first (``stride``
    must divide 32 and ``n * stride`` be a multiple of 32), so the
    shared-memory tree has 32 / stride times fewer levels. The order of the
    combinations is fixed, so results do not depend on scheduling.
    """
    threads = n * stride
    if shuffle:
        width = _WARP // stride  # items of one lane inside a warp
        offset = width // 2
        while offset > 0:
            other0 = cuda.shfl_down_sync(_FULL_MASK, v0, offset * stride)
            other1 = cuda.shfl_down_sync(_FULL_MASK, v1, offset * stride)
            other2 = cuda.shfl_down_sync(_FULL_MASK, v2, offset * stride)
            if j % width + offset < width:
                v0, v1, v2 = _pair(v0, v1, v2, other0, other1, other2)
            offset //= 2
        active = j % width == 0
        j //= width
        n //= width
    else:
        active = True
    if active:
        slot = lane + j * stride
        shared[slot] = v0
        shared[threads + slot] = v1
        shared[2 * threads + slot] = v2
    cuda.syncthreads()
    step = 1
    while step < n:
        if active and j % (2 * step) == 0 and j + step < n:
            mine = lane + j * stride
            other = mine + step * stride
            combined = _pair(
                shared[mine], shared[threads + mine], shared[2 * threads + mine],
                shared[other], shared[threads + other], shared[2 * threads + other],
            )
            shared[mine] = combined[0]
            shared[threads + mine] = combined[1]
            shared[2 * threads + mine] = combined[2]
        step *= 2
        cuda.syncthreads()
    result = shared[lane], shared[threads + lane], shared[2 * threads + lane]
    cuda.syncthreads()  # the caller may reuse ``shared`` right away
    return result


@cuda.jit(device=True)
def _add(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


def _specialise(name, template, device=False, **bound):
    """``template`` compiled as the kernel (or device function) ``name`` with ``bound`` in its globals.

    A template is written once and compiled per use with the functions it
    calls for the per-element work bound into it: they inline, so each
    specialisation is the code one would write by hand for it.
    """
    namespace = dict(template.__globals__, **bound)
    copy = types.FunctionType(template.__code__, namespace, name, template.__defaults__)
    copy.__qualname__ = name
    copy.__doc__ = template.__doc__
    copy.__module__ = template.__module__
    return cuda.jit(device=True)(copy) if device else kernel(copy)


#: Chan's merge of ``(count, mean, M2)`` states over a block.
_merge_block_states = _specialise("_merge_block_states", _block_tree, device=True, _pair=formulas.chan_merge)
#: Sums of three values over a block.
_sum_block = _specialise("_sum_block", _block_tree, device=True, _pair=_add)


# --------------------------------------------------------------- walks
# Each walk is written once, as a template, and compiled per pass with the
# pass's per-element work bound into it (``_specialise``): the bound device
# functions inline, so a specialisation is the kernel one would write by hand.
#
# Reductions bind ``_start(reference, c)`` -> a thread's initial ``k``,
# ``_accumulate(count, k, first, second, x, dy, mask, position)`` -> the updated state, and
# ``_combine(shared, lane, j, stride, n, count, k, first, second, shuffle)``
# -> the block's three results for the staging buffer ``parts[:, c, part]``.
# Elementwise passes bind ``_value(x, dy, k0, k1, k2, k3, mode, mask, position)``
# -> ``(value, passed)`` with the channel's four coefficients (``dy`` is ``x``
# again for one-input passes: reading it costs nothing when unused, the
# compiler drops the load), and ``_keep(out, out2, at, mask, mode, position,
# passed)`` (``at``: the element's index), which may record a ReLU's bit or
# write ``passed`` to a second output after ``out`` was written.
#
# A fused ReLU's mask has one bit per value (uint32 words): the bit of the
# value at view index ``i`` is its position in the view's C order, which
# only depends on the input ``x`` (the views order axes by its strides).


def _reduce_runs(x, dy, reference, mask, parts, shuffle, splits):
    """Per-(channel, block part) results of a reduction over ``(C, A, B, D, M)`` views."""
    shared = cuda.shared.array(0, float64)
    tx, _, TX, _, part, tile, nparts, tiles = _block_ids()
    C, A, B, D, M = x.shape
    units, span, lanes, first_unit, step, m0 = _runs_partition(tx, TX, part, nparts, x.shape, splits)
    c = tile
    while c < C:
        count, k, first, second = 0.0, _start(reference, c), 0.0, 0.0
        unit = first_unit
        a, b, d, seg = _locate_row(unit, B, D, splits)
        while unit < units:
            m, stop = seg * span + m0, min(M, seg * span + span)
            while m < stop:
                position = (((c * A + a) * B + b) * D + d) * M + m
                at = _unsigned(c, a, b, d, m)
                count, k, first, second = _accumulate(count, k, first, second, x[at], dy[at], mask, position)
                m += lanes
            unit += step
            a, b, d, seg = _carry(a, b, d, seg + step, B, D, splits)
        results = _combine(shared, 0, tx, 1, TX, count, k, first, second, shuffle)
        if tx == 0:
            parts[0, c, part], parts[1, c, part], parts[2, c, part] = results
        c += tiles


def _reduce_rows(x, dy, reference, mask, parts, shuffle):
    """Per-(channel, block part) results of a reduction over ``(A, B, D, R, C)`` views."""
    shared = cuda.shared.array(0, float64)
    tx, ty, TX, TY, part, tile, nparts, tiles = _block_ids()
    A, B, D, R, C = x.shape
    rows, first_row, step = _rows_partition(ty, TY, part, nparts, x.shape)
    while tile * TX < C:
        c = tile * TX + tx
        count, k, first, second = 0.0, 0.0, 0.0, 0.0
        row = first_row
        if c < C and row < rows:
            k = _start(reference, c)
            a, b, d, r = _locate_row(row, B, D, R)
            while row < rows:
                at = _unsigned(a, b, d, r, c)
                count, k, first, second = _accumulate(count, k, first, second, x[at], dy[at], mask, row * C + c)
                row += step
                a, b, d, r = _carry(a, b, d, r + step, B, D, R)
        results = _combine(shared, tx, ty, TX, TY, count, k, first, second, shuffle)
        if ty == 0 and c < C:
            parts[0, c, part], parts[1, c, part], parts[2, c, part] = results
        tile += tiles


def _elementwise_runs(x, dy, out, out2, k, mask, mode, splits):
    """``out = _value(x, dy, k[:, c])`` on ``(C, A, B, D, M)`` views; ``k`` is ``(4, C)``."""
    tx, _, TX, _, part, tile, nparts, tiles = _block_ids()
    C, A, B, D, M = x.shape
    units, span, lanes, first_unit, step, m0 = _runs_partition(tx, TX, part, nparts, x.shape, splits)
    c = tile
    while c < C:
        k0, k1, k2, k3 = k[0, c], k[1, c], k[2, c], k[3, c]
        unit = first_unit
        a, b, d, seg = _locate_row(unit, B, D, splits)
        while unit < units:
            m, stop = seg * span + m0, min(M, seg * span + span)
            while m < stop:
                position = (((c * A + a) * B + b) * D + d) * M + m
                at = _unsigned(c, a, b, d, m)
                out[at], passed = _value(x[at], dy[at], k0, k1, k2, k3, mode, mask, position)
                _keep(out, out2, at, mask, mode, position, passed)
                m += lanes
            unit += step
            a, b, d, seg = _carry(a, b, d, seg + step, B, D, splits)
        c += tiles


def _elementwise_rows(x, dy, out, out2, k, mask, mode):
    """``out = _value(x, dy, k[:, c])`` on ``(A, B, D, R, C)`` views; ``k`` is ``(4, C)``."""
    tx, ty, TX, TY, part, tile, nparts, tiles = _block_ids()
    A, B, D, R, C = x.shape
    rows, first_row, step = _rows_partition(ty, TY, part, nparts, x.shape)
    while tile * TX < C:
        c = tile * TX + tx
        row = first_row
        if c < C and row < rows:
            k0, k1, k2, k3 = k[0, c], k[1, c], k[2, c], k[3, c]
            a, b, d, r = _locate_row(row, B, D, R)
            while row < rows:
                position = row * C + c
                at = _unsigned(a, b, d, r, c)
                out[at], passed = _value(x[at], dy[at], k0, k1, k2, k3, mode, mask, position)
                _keep(out, out2, at, mask, mode, position, passed)
                row += step
                a, b, d, r = _carry(a, b, d, r + step, B, D, R)
        tile += tiles


# ------------------------------------------------------ what passes compute


@cuda.jit(device=True)
def _no_start(reference, c):
    return 0.0


@cuda.jit(device=True)
def _deviations(count, shift, sum_dev, sum_sq_dev, x, dy, mask, position):
    """Statistics: sums of deviations from the thread's first value and of their squares."""
    value = np.float64(x)
    if count == 0.0:
        shift = value
    dev = value - shift
    return count + 1.0, shift, sum_dev + dev, sum_sq_dev + dev * dev


@cuda.jit(device=True)
def _merged_state(shared, lane, j, stride, n, count, shift, sum_dev, sum_sq_dev, shuffle):
    """The block's Chan-merged ``(count, mean, M2)``."""
    mean, m2 = formulas.shifted_sums_state(count, shift, sum_dev, sum_sq_dev)
    return _merge_block_states(shared, lane, j, stride, n, count, mean, m2, shuffle)


@cuda.jit(device=True)
def _reference_mean(reference, c):
    return np.float64(reference[c])


@cuda.jit(device=True)
def _gradient_terms(count, mean, sum_dy, sum_dy_xmu, x, dy, mask, position):
    """Backward: sums of ``dy`` and ``dy * (x - mean)``."""
    g = np.float64(dy)
    return count, mean, sum_dy + g, sum_dy_xmu + g * (np.float64(x) - mean)


@cuda.jit(device=True)
def _bit(mask, position):
    """The ReLU mask's bit for the value at ``position``."""
    return (mask[position >> 5] >> (position & 31)) & 1


@cuda.jit(device=True)
def _gated_gradient_terms(count, mean, sum_dy, sum_dy_xmu, x, dy, mask, position):
    """Backward through a ReLU: ``_gradient_terms`` of ``dy`` where the forward's result was not <= 0."""
    g = np.float64(dy) if _bit(mask, position) else 0.0
    return count, mean, sum_dy + g, sum_dy_xmu + g * (np.float64(x) - mean)


@cuda.jit(device=True)
def _summed(shared, lane, j, stride, n, count, mean, sum_dy, sum_dy_xmu, shuffle):
    """The block's ``(sum(dy), sum(dy * (x - mean)), 0)``."""
    return _sum_block(shared, lane, j, stride, n, sum_dy, sum_dy_xmu, 0.0, shuffle)


@cuda.jit(device=True)
def _normalized(x, dy, shift, scale, offset, unused, mode, mask, position):
    """Forward: ``(x - shift) * scale + offset`` (``dy`` unused)."""
    return (x - shift) * scale + offset, dy


@cuda.jit(device=True)
def _input_gradient(x, dy, shift, k_x, k_const, k_dy, mode, mask, position):
    """Backward: ``(x - shift) * k_x + k_const + k_dy * dy``."""
    return (x - shift) * k_x + k_const + k_dy * dy, dy


@cuda.jit(device=True)
def _fused_normalized(x, residual, shift, scale, offset, factor, mode, mask, position):
    """Forward, fused: ``(x - shift) * scale + offset``, plus ``factor * residual`` with ``ADD``,
    clamped at 0 with ``RELU`` (NaN stays NaN, as with torch.relu)."""
    value = (x - shift) * scale + offset
    if mode & ADD:
        value += factor * residual
    if mode & RELU and value <= 0:
        value = np.float32(0.0)  # unifies with the compute type
    return value, residual


@cuda.jit(device=True)
def _gated_input_gradient(x, dy, shift, k_x, k_const, k_dy, mode, mask, position):
    """Backward through a ReLU: ``_input_gradient`` with ``dy`` only where the forward's result was
    positive (and without the ``x`` terms with ``NO_X``); ``passed`` is that gated ``dy``."""
    passed = dy if _bit(mask, position) else np.float32(0.0)
    if mode & NO_X:
        return k_dy * passed, passed
    return (x - shift) * k_x + k_const + k_dy * passed, passed


@cuda.jit(device=True)
def _nothing_kept(out, out2, at, mask, mode, position, passed):
    pass


@cuda.jit(device=True)
def _record_positive(out, out2, at, mask, mode, position, passed):
    """A fused ReLU's mask bit: set where the stored result is not <= 0 (positive, or NaN: PyTorch's
    ReLU passes the gradient there), in the output's own dtype; the mask starts at zero."""
    if mode & RELU and mask.size > 0 and not out[at] <= 0:
        cuda.atomic.or_(mask, position >> 5, np.uint32(1) << np.uint32(position & 31))


@cuda.jit(device=True)
def _write_passed(out, out2, at, mask, mode, position, passed):
    """The residual's gradient: the ``dy`` that passed the ReLU, when ``out2`` is not empty."""
    if out2.size > 0:
        out2[at] = passed


@kernel
def fill_zero(words):
    """Set every element of the 1-D ``words`` to 0 (a ReLU mask before a forward records it)."""
    for i in range(cuda.grid(1), words.size, cuda.gridsize(1)):
        words[i] = 0


@kernel
def copy_5d(source, target):
    """``target[...] = source`` for 5-D views of any strides (the negative-stride fallback)."""
    start = np.int64(cuda.grid(1))
    step = np.int64(cuda.gridsize(1))
    P, Q, S, T, U = source.shape
    total = P * Q * S * T * U
    while start < total:
        rest = start // U
        u = start - rest * U
        p, q, s, t = _locate_row(rest, Q, S, T)
        at = _unsigned(p, q, s, t, u)
        target[at] = source[at]
        start += step


# ------------------------------------------------------------- the kernels
# Names and meanings as on the CPU (``numba_bn/cpu/kernels.py``).

#: ``(x, x, empty, empty mask, parts, shuffle[, splits])``: ``parts`` (3, C, blocks) receive per-block
#: (count, mean, M2).
channel_stats_runs = _specialise(
    "channel_stats_runs", _reduce_runs, _start=_no_start, _accumulate=_deviations, _combine=_merged_state
)
channel_stats_rows = _specialise(
    "channel_stats_rows", _reduce_rows, _start=_no_start, _accumulate=_deviations, _combine=_merged_state
)
#: ``(x, dy, mean, mask, parts, shuffle[, splits])``: ``parts`` rows 0, 1 receive per-block ``sum(dy)``,
#: ``sum(dy * (x - mean))`` (``*_relu``: ``dy`` gated by a forward's ReLU ``mask``).
grad_sums_runs = _specialise(
    "grad_sums_runs", _reduce_runs, _start=_reference_mean, _accumulate=_gradient_terms, _combine=_summed
)
grad_sums_rows = _specialise(
    "grad_sums_rows", _reduce_rows, _start=_reference_mean, _accumulate=_gradient_terms, _combine=_summed
)
grad_sums_relu_runs = _specialise(
    "grad_sums_relu_runs", _reduce_runs, _start=_reference_mean, _accumulate=_gated_gradient_terms, _combine=_summed
)
grad_sums_relu_rows = _specialise(
    "grad_sums_relu_rows", _reduce_rows, _start=_reference_mean, _accumulate=_gated_gradient_terms, _combine=_summed
)
#: ``(x, x, y, y, k, empty mask, 0[, splits])``: ``y = (x - k0) * k1 + k2``.
normalize_runs = _specialise("normalize_runs", _elementwise_runs, _value=_normalized, _keep=_nothing_kept)
normalize_rows = _specialise("normalize_rows", _elementwise_rows, _value=_normalized, _keep=_nothing_kept)
#: ``(x, residual, y, y, k, mask, mode[, splits])``: ``normalize_*`` with ``ADD`` (``+ k3 * residual``) and
#: ``RELU`` (recording the bits into a zeroed ``mask`` when it is not empty).
normalize_fused_runs = _specialise(
    "normalize_fused_runs", _elementwise_runs, _value=_fused_normalized, _keep=_record_positive
)
normalize_fused_rows = _specialise(
    "normalize_fused_rows", _elementwise_rows, _value=_fused_normalized, _keep=_record_positive
)
#: ``(x, dy, dx, dx, k, empty mask, 0[, splits])``: ``dx = (x - k0) * k1 + k2 + k3 * dy``.
grad_input_runs = _specialise("grad_input_runs", _elementwise_runs, _value=_input_gradient, _keep=_nothing_kept)
grad_input_rows = _specialise("grad_input_rows", _elementwise_rows, _value=_input_gradient, _keep=_nothing_kept)
#: ``(x, dy, dx, passed, k, mask, mode[, splits])``: ``grad_input_*`` with ``dy`` gated by a forward's ReLU
#: ``mask``, what passed written to ``passed`` unless it is empty, and without the x terms with ``NO_X``.
grad_input_relu_runs = _specialise(
    "grad_input_relu_runs", _elementwise_runs, _value=_gated_input_gradient, _keep=_write_passed
)
grad_input_relu_rows = _specialise(
    "grad_input_relu_rows", _elementwise_rows, _value=_gated_input_gradient, _keep=_write_passed
)
