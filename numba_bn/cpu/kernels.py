"""Numba CPU kernels: per-channel statistics, normalisation and backward over whole arrays.

Operands reach the kernels as flat 1-D buffers plus an element ``origin`` and
five element strides (see ``_layout.kernel_operands``), so the innermost loop
over a contiguous run is a plain unit-stride loop that LLVM vectorises; a
strided loop serves every other layout.

Every operation comes in two shapes: ``*_runs`` for ``(C, A, B, D, M)``
operands, whose work units are chunks of one channel's values (contiguous
runs along ``M``), and ``*_rows`` for ``(A, B, D, R, C)`` operands, whose work
units are blocks of rows. When rows are packed (channel stride 1, row stride
C) a block of rows is one flat stream, processed in tiles of whole rows that
are a multiple of the SIMD width long, so that even C=3 vectorises.

The walks over the data are written once, as templates, and what a pass
computes is a small function bound into them (``_specialise``), as
numbagg's aggregation decorators do: the elementwise walks apply
``value(x, dy, k0, k1, k2, k3)`` per element with per-channel coefficients
``k``, the reduction walks sum the pair ``terms(x, dy, k)`` per unit and per
channel, with ``k`` a per-channel reference (the mean) or, for statistics,
the unit's first value (a shift that makes the float64 sums exact enough and
constant data exactly zero). Each specialisation is compiled to code as tight
as a hand-written kernel: Numba inlines the helpers and the bound functions
(as calls, they cost ~10% on short runs such as 14x14 images), and reading
``dy`` in a pass that does not use it costs nothing (dead loads are
removed). Timed against the hand-written kernels they replaced, kernel by
kernel, the specialisations were as fast, within this machine's noise.

Reductions are numbered by shape alone and merged in a fixed order (Chan's
formula for statistics), so results never depend on the thread count.
Elementwise passes compute with a per-channel ``shift`` close to the mean,
so no large terms cancel in float32. Each kernel also has a ``*_serial`` twin
compiled from the same source without ``parallel``: tiny inputs use it and
never wake the thread pool.
"""

import types

import numpy as np
from numba import njit, prange

from .. import config
from .channel_math import formulas
from .half import load, store

_PARALLEL = dict(parallel=True, cache=True, fastmath=config.FASTMATH)
_SERIAL = dict(cache=True, fastmath=config.FASTMATH)

#: Flat tiles of packed rows hold at least this many values (a multiple of 8
#: whenever C allows), long enough for full-width SIMD in the tile loop.
_TILE_VALUES = 512

#: A reduction's per-channel reference when each unit takes its first value instead.
NO_REFERENCE = np.empty(0)


def _copy(function, namespace, qualname):
    """``function`` under another qualified name, resolving its globals in ``namespace``.

    Numba keys its on-disk cache by qualified name, so every copy gets its own entry.
    """
    copy = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__)
    copy.__qualname__ = qualname
    copy.__doc__ = function.__doc__
    copy.__module__ = function.__module__
    return copy


def _specialise(name, template, helpers, **bound):
    """``template`` compiled twice - ``prange`` on the thread pool, and serially - with ``bound`` in its globals.

    ``helpers`` are the template's callees that use the bound names: each is
    compiled again for this specialisation, so the bound functions inline all
    the way down. Returns ``(parallel, serial)`` kernels named ``name`` and
    ``name + "_serial"``.
    """
    namespace = dict(template.__globals__, **bound)
    for helper in helpers:
        # Inlined by Numba itself: a call per short segment (a 14x14 image's run)
        # passing the array structs would cost as much as the segment's values.
        copy = _copy(helper, namespace, f"{name}.{helper.__name__}")
        namespace[helper.__name__] = njit(inline="always", **_SERIAL)(copy)
    parallel = njit(**_PARALLEL)(_copy(template, namespace, name))
    serial = njit(**_SERIAL)(_copy(template, namespace, name + "_serial"))
    return parallel, serial


# ------------------------------------------------------------------ helpers


@njit(**_SERIAL)
def _part_start(part, total, parts):
    """First index of ``part`` when ``total`` items are split into near-equal parts."""
    quotient, remainder = divmod(total, parts)
    return part * quotient + min(part, remainder)


@njit(**_SERIAL)
def _unit_count(total, chunk):
    return max((total + chunk - 1) // chunk, 1)


@njit(**_SERIAL)
def _unit_sizes(total, units):
    sizes = np.empty(units, np.int64)
    for k in range(units):
        sizes[k] = _part_start(k + 1, total, units) - _part_start(k, total, units)
    return sizes


@njit(**_SERIAL)
def _split3(index, B, D):
    """Indices (a, b, d) of the ``index``-th element of an ``(A, B, D)`` grid."""
    rest, d = divmod(index, D)
    a, b = divmod(rest, B)
    return a, b, d


@njit(**_SERIAL)
def _next3(a, b, d, B, D):
    d += 1
    if d == D:
        d = 0
        b += 1
        if b == B:
            b = 0
            a += 1
    return a, b, d


@njit(**_SERIAL)
def _split4(index, N1, N2, N3):
    rest, i3 = divmod(index, N3)
    rest, i2 = divmod(rest, N2)
    i0, i1 = divmod(rest, N1)
    return i0, i1, i2, i3


@njit(**_SERIAL)
def _next4(i0, i1, i2, i3, N1, N2, N3):
    i3 += 1
    if i3 == N3:
        i3 = 0
        i2 += 1
        if i2 == N2:
            i2 = 0
            i1 += 1
            if i1 == N1:
                i1 = 0
                i0 += 1
    return i0, i1, i2, i3


@njit(**_SERIAL)
def _pick(position, i0, i1, i2, i3):
    if position == 0:
        return i0
    if position == 1:
        return i1
    if position == 2:
        return i2
    return i3


@njit(**_SERIAL)
def _offset4(origin, strides, i0, i1, i2, i3):
    return origin + i0 * strides[0] + i1 * strides[1] + i2 * strides[2] + i3 * strides[3]


@njit(**_SERIAL)
def _packed_runs(strides, shape, channel_position):
    """Runs lie back to back, channel after channel (contiguous ``(N, C, ...)`` data):
    then the flat position of a value is its offset from the origin."""
    M = shape[4]
    return (
        channel_position == 3
        and shape[0] == 1
        and shape[1] == 1
        and strides[4] == 1
        and strides[3] == M
        and (shape[2] == 1 or strides[2] == shape[3] * M)
    )


@njit(**_SERIAL)
def _tile_width(C):
    """Values per tile of packed rows: whole rows, a multiple of 8 when cheap."""
    a, b = C, 8
    while b:
        a, b = b, a % b
    period = C * 8 // a  # lcm(C, 8)
    if period > 8 * _TILE_VALUES:
        period = C
    return period * max(1, (_TILE_VALUES + period - 1) // period)


@njit(**_SERIAL)
def _tile(values, width):
    """``values`` repeated to ``width`` (a multiple of its length)."""
    C = values.size
    tiled = np.empty(width, values.dtype)
    for start in range(0, width, C):  # no integer modulo per value: it is slow
        tiled[start : start + C] = values
    return tiled


@njit(**_SERIAL)
def _sum_units(partials):
    """Sum ``(units, C)`` partials along units, in unit order."""
    total = partials[0].copy()
    for k in range(1, partials.shape[0]):
        for c in range(total.size):
            total[c] += partials[k, c]
    return total



# ------------------------------------------------------------ reductions
# ``_terms(x, dy, k)`` -> the pair of float64 values a reduction sums per
# element; ``_finish(sizes, first, second, references)`` -> its result from
# the per-unit ``(units, C)`` sums and references.


def _segment_pairs(x, xb, xs, dy, gb, gs, n, k, first, second):
    """Add ``_terms`` of ``n`` values at ``xb``/``gb`` (strides ``xs``/``gs``) to the running pair."""
    if xs == 1 and gs == 1:
        xv = x[xb : xb + n]
        gv = dy[gb : gb + n]
        for i in range(n):
            a, b = _terms(load(xv[i]), load(gv[i]), k)
            first += a
            second += b
    else:
        for i in range(n):
            a, b = _terms(load(x[xb + i * xs]), load(dy[gb + i * gs]), k)
            first += a
            second += b
    return first, second


def _run_unit_pairs(x, xo, xst, dy, go, gst, shape, c, start, stop, reference):
    """Sums of ``_terms`` over values ``start:stop`` of channel ``c`` (channel-major runs), and the ``k`` used."""
    B, D, M = shape[2], shape[3], shape[4]
    row, m = divmod(start, M)
    a, b, d = _split3(row, B, D)
    if reference.size:
        k = np.float64(reference[c])
    else:
        k = np.float64(load(x[xo + c * xst[0] + a * xst[1] + b * xst[2] + d * xst[3] + m * xst[4]]))
    first = 0.0
    second = 0.0
    position = start
    while position < stop:
        n = min(M - m, stop - position)
        xb = xo + c * xst[0] + a * xst[1] + b * xst[2] + d * xst[3] + m * xst[4]
        gb = go + c * gst[0] + a * gst[1] + b * gst[2] + d * gst[3] + m * gst[4]
        first, second = _segment_pairs(x, xb, xst[4], dy, gb, gst[4], n, k, first, second)
        position += n
        m = 0
        a, b, d = _next3(a, b, d, B, D)
    return first, second, k


def _reduce_runs(x, xo, xst, dy, go, gst, shape, reference, chunk):
    """``_finish`` of per-unit sums over a ``(C, A, B, D, M)`` operand, units of ``chunk`` values."""
    C = shape[0]
    total = shape[1] * shape[2] * shape[3] * shape[4]
    units = _unit_count(total, chunk)
    first = np.empty((units, C))
    second = np.empty((units, C))
    references = np.empty((units, C))
    for u in prange(C * units):
        c, k = divmod(np.int64(u), units)  # prange indices may be unsigned
        start = _part_start(k, total, units)
        stop = _part_start(k + 1, total, units)
        first[k, c], second[k, c], references[k, c] = _run_unit_pairs(
            x, xo, xst, dy, go, gst, shape, c, start, stop, reference
        )
    return _finish(_unit_sizes(total, units), first, second, references)


def _row_block_pairs(x, xo, xst, dy, go, gst, shape, first_row, stop, k, first, second):
    """Sums of ``_terms`` over rows ``first_row:stop`` into tiles (``k``: the tiled references)."""
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    width = k.size
    first[:] = 0.0
    second[:] = 0.0
    packed = xst[4] == 1 and xst[3] == C and gst[4] == 1 and gst[3] == C
    a, b, d = _split3(first_row // R, B, D)
    r = first_row % R
    row = first_row
    while row < stop:
        n = min(R - r, stop - row)
        xb = _offset4(xo, xst, a, b, d, r)
        gb = _offset4(go, gst, a, b, d, r)
        if packed:
            xv = x[xb : xb + n * C]
            gv = dy[gb : gb + n * C]
            for t in range(0, n * C, width):
                xt = xv[t : t + width]
                gt = gv[t : t + width]
                for j in range(xt.size):
                    u, v = _terms(load(xt[j]), load(gt[j]), k[j])
                    first[j] += u
                    second[j] += v
        else:
            for i in range(n):
                for c in range(C):
                    u, v = _terms(load(x[xb + i * xst[3] + c * xst[4]]), load(dy[gb + i * gst[3] + c * gst[4]]), k[c])
                    first[c] += u
                    second[c] += v
        row += n
        r = 0
        a, b, d = _next3(a, b, d, B, D)


def _reduce_rows(x, xo, xst, dy, go, gst, shape, reference, blocks):
    """``_finish`` of per-block sums over an ``(A, B, D, R, C)`` operand."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    first = np.empty((blocks, C))
    second = np.empty((blocks, C))
    references = np.empty((blocks, C))
    for block in prange(blocks):
        start = _part_start(np.int64(block), rows, blocks)
        stop = _part_start(np.int64(block) + 1, rows, blocks)
        # Per-block tiles: small heap allocations, where (blocks, width)
        # scratch would be fresh pages that fault on every call.
        k = np.empty(width)
        tile_first = np.empty(width)
        tile_second = np.empty(width)
        if reference.size:
            k[:C] = reference
        else:  # the block's first row
            a, b, d = _split3(start // shape[3], shape[1], shape[2])
            head = _offset4(xo, xst, a, b, d, start % shape[3])
            for c in range(C):
                k[c] = np.float64(load(x[head + c * xst[4]]))
        for offset in range(C, width, C):
            k[offset : offset + C] = k[:C]
        _row_block_pairs(x, xo, xst, dy, go, gst, shape, start, stop, k, tile_first, tile_second)
        for offset in range(C, width, C):
            for c in range(C):
                tile_first[c] += tile_first[offset + c]
                tile_second[c] += tile_second[offset + c]
        first[block] = tile_first[:C]
        second[block] = tile_second[:C]
        references[block] = k[:C]
    return _finish(_unit_sizes(rows, blocks), first, second, references)


@njit(**_SERIAL)
def _deviation_terms(x, dy, shift):
    """Statistics: sums of deviations from the unit's shift and of their squares."""
    deviation = np.float64(x) - shift
    return deviation, deviation * deviation


@njit(**_SERIAL)
def _merged_states(sizes, sum_dev, sum_sq_dev, shifts):
    """``(count, mean, M2)``: each unit's state from its shifted sums, Chan-merged in unit order.

    Units outside, channels inside: the merges of different channels are
    independent, so their divisions overlap (a channel-by-channel order
    would chain them, and costs ~10 ns per merge).
    """
    units, C = sum_dev.shape
    mean = np.empty(C)
    m2 = np.empty(C)
    count = 0.0
    for k in range(units):
        size = np.float64(sizes[k])
        for c in range(C):
            unit_mean, unit_m2 = formulas.shifted_sums_state(size, shifts[k, c], sum_dev[k, c], sum_sq_dev[k, c])
            _, mean[c], m2[c] = formulas.chan_merge(count, mean[c], m2[c], size, unit_mean, unit_m2)
        count += size
    return sizes.sum(), mean, m2


@njit(**_SERIAL)
def _gradient_terms(x, dy, mean):
    """Backward: ``dy`` and ``dy * (x - mean)``."""
    g = np.float64(dy)
    return g, g * (np.float64(x) - mean)


@njit(**_SERIAL)
def _summed(sizes, sum_dy, sum_dy_xmu, references):
    """Per-channel totals of per-unit sums, added in unit order."""
    return _sum_units(sum_dy), _sum_units(sum_dy_xmu)


# ------------------------------------------------------ elementwise passes
# ``_value(x, dy, k0, k1, k2, k3)`` -> the output value of one element from
# the input values (``dy`` is ``x`` again for one-input passes) and the
# channel's four coefficients.


def _segment_values(x, xb, xs, dy, gb, gs, out, ob, os, n, k0, k1, k2, k3):
    """``n`` outputs at ``ob`` (stride ``os``) from the inputs at ``xb``/``gb``."""
    if xs == 1 and gs == 1 and os == 1:
        xv = x[xb : xb + n]
        gv = dy[gb : gb + n]
        ov = out[ob : ob + n]
        for i in range(n):
            ov[i] = store(_value(load(xv[i]), load(gv[i]), k0, k1, k2, k3), out)
    else:
        for i in range(n):
            value = _value(load(x[xb + i * xs]), load(dy[gb + i * gs]), k0, k1, k2, k3)
            out[ob + i * os] = store(value, out)


def _tile_values(x, xb, dy, gb, out, ob, n, k):
    """``n`` packed outputs with per-value coefficients: ``k`` holds four tiled rows."""
    xv = x[xb : xb + n]
    gv = dy[gb : gb + n]
    ov = out[ob : ob + n]
    k0, k1, k2, k3 = k[0], k[1], k[2], k[3]
    for j in range(n):
        ov[j] = store(_value(load(xv[j]), load(gv[j]), k0[j], k1[j], k2[j], k3[j]), out)


def _elementwise_runs(x, xo, xst, dy, go, gst, out, oo, ost, shape, channel_position, k, part):
    """``out = _value(x, dy, k[:, c])`` on runs, walked in memory order.

    ``shape`` is ``(N0, N1, N2, N3, M)`` with the channel axis at
    ``channel_position`` among the first four; ``k`` is ``(4, C)``.
    """
    N1, N2, N3, M = shape[1], shape[2], shape[3], shape[4]
    total = shape[0] * N1 * N2 * N3 * M
    parts = _unit_count(total, part)
    if (
        _packed_runs(xst, shape, channel_position)
        and _packed_runs(gst, shape, channel_position)
        and _packed_runs(ost, shape, channel_position)
    ):
        for p in prange(parts):
            position = _part_start(np.int64(p), total, parts)
            stop = _part_start(np.int64(p) + 1, total, parts)
            c = (position // M) % N3
            while position < stop:
                n = min(M - position % M, stop - position)
                _segment_values(
                    x, xo + position, 1, dy, go + position, 1, out, oo + position, 1, n,
                    k[0, c], k[1, c], k[2, c], k[3, c],
                )
                position += n
                c = c + 1 if c + 1 < N3 else 0
        return
    for p in prange(parts):
        position = _part_start(np.int64(p), total, parts)
        stop = _part_start(np.int64(p) + 1, total, parts)
        run, m = divmod(position, M)
        i0, i1, i2, i3 = _split4(run, N1, N2, N3)
        while position < stop:
            n = min(M - m, stop - position)
            c = _pick(channel_position, i0, i1, i2, i3)
            xb = _offset4(xo, xst, i0, i1, i2, i3) + m * xst[4]
            gb = _offset4(go, gst, i0, i1, i2, i3) + m * gst[4]
            ob = _offset4(oo, ost, i0, i1, i2, i3) + m * ost[4]
            _segment_values(x, xb, xst[4], dy, gb, gst[4], out, ob, ost[4], n, k[0, c], k[1, c], k[2, c], k[3, c])
            position += n
            m = 0
            i0, i1, i2, i3 = _next4(i0, i1, i2, i3, N1, N2, N3)


def _elementwise_rows(x, xo, xst, dy, go, gst, out, oo, ost, shape, k, blocks):
    """``out = _value(x, dy, k[:, c])`` on ``(A, B, D, R, C)`` operands; ``k`` is ``(4, C)``."""
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    rows = shape[0] * B * D * R
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    tiled = np.empty((4, width), k.dtype)
    for i in range(4):
        tiled[i] = _tile(k[i], width)
    packed = xst[4] == 1 and xst[3] == C and gst[4] == 1 and gst[3] == C and ost[4] == 1 and ost[3] == C
    for block in prange(blocks):
        row = _part_start(np.int64(block), rows, blocks)
        stop = _part_start(np.int64(block) + 1, rows, blocks)
        a, b, d = _split3(row // R, B, D)
        r = row % R
        while row < stop:
            n = min(R - r, stop - row)
            xb = _offset4(xo, xst, a, b, d, r)
            gb = _offset4(go, gst, a, b, d, r)
            ob = _offset4(oo, ost, a, b, d, r)
            if packed:
                for t in range(0, n * C, width):
                    _tile_values(x, xb + t, dy, gb + t, out, ob + t, min(width, n * C - t), tiled)
            else:
                for i in range(n):
                    for c in range(C):
                        value = _value(
                            load(x[xb + i * xst[3] + c * xst[4]]), load(dy[gb + i * gst[3] + c * gst[4]]),
                            k[0, c], k[1, c], k[2, c], k[3, c],
                        )
                        out[ob + i * ost[3] + c * ost[4]] = store(value, out)
            row += n
            r = 0
            a, b, d = _next3(a, b, d, B, D)


@njit(**_SERIAL)
def _normalized(x, dy, shift, scale, offset, unused):
    """Forward: ``(x - shift) * scale + offset`` (``dy`` is unused)."""
    return (x - shift) * scale + offset


@njit(**_SERIAL)
def _input_gradient(x, dy, shift, k_dy, k_x, k_const):
    """Backward: ``k_dy * dy + k_x * (x - shift) + k_const``."""
    return k_dy * dy + k_x * (x - shift) + k_const


# ------------------------------------------------------------- the kernels

_REDUCTION_HELPERS = (_segment_pairs, _run_unit_pairs, _row_block_pairs)
_ELEMENTWISE_HELPERS = (_segment_values, _tile_values)

#: ``(x, xo, xst, x, xo, xst, shape, NO_REFERENCE, chunk)`` -> ``(count, mean, m2)``: per-channel float64 statistics.
channel_stats_runs, channel_stats_runs_serial = _specialise(
    "channel_stats_runs", _reduce_runs, _REDUCTION_HELPERS, _terms=_deviation_terms, _finish=_merged_states
)
#: ``(x, xo, xst, x, xo, xst, shape, NO_REFERENCE, blocks)`` -> ``(count, mean, m2)``.
channel_stats_rows, channel_stats_rows_serial = _specialise(
    "channel_stats_rows", _reduce_rows, _REDUCTION_HELPERS, _terms=_deviation_terms, _finish=_merged_states
)
#: ``(x, xo, xst, dy, go, gst, shape, mean, chunk)`` -> float64 ``(sum(dy), sum(dy * (x - mean)))``.
grad_sums_runs, grad_sums_runs_serial = _specialise(
    "grad_sums_runs", _reduce_runs, _REDUCTION_HELPERS, _terms=_gradient_terms, _finish=_summed
)
#: ``(x, xo, xst, dy, go, gst, shape, mean, blocks)`` -> float64 ``(sum(dy), sum(dy * (x - mean)))``.
grad_sums_rows, grad_sums_rows_serial = _specialise(
    "grad_sums_rows", _reduce_rows, _REDUCTION_HELPERS, _terms=_gradient_terms, _finish=_summed
)
#: ``(x, ..., x, ..., y, ..., shape, channel_position, k, part)``: ``y = (x - k0) * k1 + k2``.
normalize_runs, normalize_runs_serial = _specialise(
    "normalize_runs", _elementwise_runs, _ELEMENTWISE_HELPERS, _value=_normalized
)
#: ``(x, ..., x, ..., y, ..., shape, k, blocks)``.
normalize_rows, normalize_rows_serial = _specialise(
    "normalize_rows", _elementwise_rows, _ELEMENTWISE_HELPERS, _value=_normalized
)
#: ``(x, ..., dy, ..., dx, ..., shape, channel_position, k, part)``: ``dx = k1 * dy + k2 * (x - k0) + k3``.
grad_input_runs, grad_input_runs_serial = _specialise(
    "grad_input_runs", _elementwise_runs, _ELEMENTWISE_HELPERS, _value=_input_gradient
)
#: ``(x, ..., dy, ..., dx, ..., shape, k, blocks)``.
grad_input_rows, grad_input_rows_serial = _specialise(
    "grad_input_rows", _elementwise_rows, _ELEMENTWISE_HELPERS, _value=_input_gradient
)
