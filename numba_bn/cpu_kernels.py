"""Numba CPU kernels: per-channel statistics, normalisation and backward.

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

Reductions are numbered by shape alone and merged in a fixed order, so results
never depend on the thread count. Statistics use shifted sums per unit (shift
= the unit's first value, accumulated in float64), exact enough inside a
cache-sized unit, and Chan's pairwise formula to merge units. Elementwise
passes compute ``(x - shift) * scale + offset`` with a per-channel ``shift``
close to the mean, so no large terms cancel in float32.

Each kernel also has a ``*_serial`` twin compiled from the same source
without ``parallel``: tiny inputs use it and never wake the thread pool.
"""

import types

import numpy as np
from numba import njit, prange

from . import config
from ._half import load, store

_PARALLEL = dict(parallel=True, cache=True, fastmath=config.FASTMATH)
_SERIAL = dict(cache=True, fastmath=config.FASTMATH)

#: Flat tiles of packed rows hold at least this many values (a multiple of 8
#: whenever C allows), long enough for full-width SIMD in the tile loop.
_TILE_VALUES = 512


def _parallel_and_serial(function):
    """The kernel compiled twice: ``prange`` on the thread pool, and serially.

    The serial twin is a copy of the function under its own qualified name, so
    the two never share an on-disk cache entry.
    """
    twin = types.FunctionType(
        function.__code__, function.__globals__, function.__name__ + "_serial",
        function.__defaults__, function.__closure__,
    )
    twin.__qualname__ = function.__qualname__ + "_serial"
    twin.__doc__ = function.__doc__
    twin.__module__ = function.__module__
    return njit(**_PARALLEL)(function), njit(**_SERIAL)(twin)


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
def _shifted_sums_state(count, shift, sum_dev, sum_sq_dev):
    """(mean, M2) from sums of deviations from ``shift``; M2 clamped at 0, NaN kept."""
    mean = shift + sum_dev / count
    m2 = sum_sq_dev - sum_dev * sum_dev / count
    if m2 < 0.0:
        m2 = 0.0
    return mean, m2


@njit(**_SERIAL)
def _merge_units(sizes, means, m2s):
    """Chan-merge ``(units, C)`` states in unit order; every unit holds ``sizes[k]`` values."""
    units = sizes.size
    count = sizes[0]
    mean = means[0].copy()
    m2 = m2s[0].copy()
    for k in range(1, units):
        total = count + sizes[k]
        weight = sizes[k] / total
        cross = count * weight
        for c in range(mean.size):
            delta = means[k, c] - mean[c]
            mean[c] += delta * weight
            m2[c] += m2s[k, c] + delta * delta * cross
        count = total
    return count, mean, m2


@njit(**_SERIAL)
def _sum_units(partials):
    """Sum ``(units, C)`` partials along units, in unit order."""
    total = partials[0].copy()
    for k in range(1, partials.shape[0]):
        for c in range(total.size):
            total[c] += partials[k, c]
    return total


# ---------------------------------------------------- per-segment loops
# ``base``/``step`` address ``n`` values of a flat buffer; step 1 takes a
# unit-stride slice so the loop vectorises.


@njit(**_SERIAL)
def _segment_sums(x, base, step, n, shift, sum_dev, sum_sq_dev):
    if step == 1:
        values = x[base : base + n]
        for i in range(n):
            dev = np.float64(load(values[i])) - shift
            sum_dev += dev
            sum_sq_dev += dev * dev
    else:
        for i in range(n):
            dev = np.float64(load(x[base + i * step])) - shift
            sum_dev += dev
            sum_sq_dev += dev * dev
    return sum_dev, sum_sq_dev


@njit(**_SERIAL)
def _segment_grad_sums(x, xb, xs, dy, gb, gs, n, mean, sum_dy, sum_dy_xmu):
    if xs == 1 and gs == 1:
        xv = x[xb : xb + n]
        gv = dy[gb : gb + n]
        for i in range(n):
            g = np.float64(load(gv[i]))
            sum_dy += g
            sum_dy_xmu += g * (np.float64(load(xv[i])) - mean)
    else:
        for i in range(n):
            g = np.float64(load(dy[gb + i * gs]))
            sum_dy += g
            sum_dy_xmu += g * (np.float64(load(x[xb + i * xs])) - mean)
    return sum_dy, sum_dy_xmu


@njit(**_SERIAL)
def _segment_affine(x, xb, xs, y, yb, ys, n, shift, scale, offset):
    if xs == 1 and ys == 1:
        xv = x[xb : xb + n]
        yv = y[yb : yb + n]
        for i in range(n):
            yv[i] = store((load(xv[i]) - shift) * scale + offset, y)
    else:
        for i in range(n):
            y[yb + i * ys] = store((load(x[xb + i * xs]) - shift) * scale + offset, y)


@njit(**_SERIAL)
def _segment_grad_input(x, xb, xs, dy, gb, gs, dx, db, ds, n, shift, k_dy, k_x, k_const):
    if xs == 1 and gs == 1 and ds == 1:
        xv = x[xb : xb + n]
        gv = dy[gb : gb + n]
        dv = dx[db : db + n]
        for i in range(n):
            dv[i] = store(k_dy * load(gv[i]) + k_x * (load(xv[i]) - shift) + k_const, dx)
    else:
        for i in range(n):
            value = k_dy * load(dy[gb + i * gs]) + k_x * (load(x[xb + i * xs]) - shift) + k_const
            dx[db + i * ds] = store(value, dx)


# ---------------------------------------------------------------- statistics


@njit(**_SERIAL)
def _stats_run_unit(x, origin, strides, shape, c, start, stop):
    """(mean, M2) of values ``start:stop`` of channel ``c`` (channel-major runs)."""
    B, D, M = shape[2], shape[3], shape[4]
    sc, sa, sb, sd, sm = strides
    row, m = divmod(start, M)
    a, b, d = _split3(row, B, D)
    shift = np.float64(load(x[origin + c * sc + a * sa + b * sb + d * sd + m * sm]))
    sum_dev = 0.0
    sum_sq_dev = 0.0
    position = start
    while position < stop:
        n = min(M - m, stop - position)
        base = origin + c * sc + a * sa + b * sb + d * sd + m * sm
        sum_dev, sum_sq_dev = _segment_sums(x, base, sm, n, shift, sum_dev, sum_sq_dev)
        position += n
        m = 0
        a, b, d = _next3(a, b, d, B, D)
    return _shifted_sums_state(stop - start, shift, sum_dev, sum_sq_dev)


def _channel_stats_runs(x, origin, strides, shape, chunk):
    """Per-channel (count, mean, M2) of a ``(C, A, B, D, M)`` operand, float64."""
    C = shape[0]
    total = shape[1] * shape[2] * shape[3] * shape[4]
    units = _unit_count(total, chunk)
    means = np.empty((units, C))
    m2s = np.empty((units, C))
    for u in prange(C * units):
        c, k = divmod(np.int64(u), units)  # prange indices may be unsigned
        start = _part_start(k, total, units)
        stop = _part_start(k + 1, total, units)
        means[k, c], m2s[k, c] = _stats_run_unit(x, origin, strides, shape, c, start, stop)
    return _merge_units(_unit_sizes(total, units), means, m2s)


@njit(**_SERIAL)
def _stats_row_block(x, origin, strides, shape, first, stop, sum_dev, sum_sq_dev, shift):
    """Shifted sums of rows ``first:stop`` into tiles (``shift`` = tiled first row)."""
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    sa, sb, sd, sr, sc = strides
    width = shift.size
    a, b, d = _split3(first // R, B, D)
    r = first % R
    head = origin + a * sa + b * sb + d * sd + r * sr
    for c in range(C):
        shift[c] = np.float64(load(x[head + c * sc]))
    for start in range(C, width, C):
        shift[start : start + C] = shift[:C]
    sum_dev[:] = 0.0
    sum_sq_dev[:] = 0.0
    packed = sc == 1 and sr == C
    row = first
    while row < stop:
        n = min(R - r, stop - row)
        base = origin + a * sa + b * sb + d * sd + r * sr
        if packed:
            values = x[base : base + n * C]
            full = n * C - (n * C) % width
            for t in range(0, full, width):
                tile = values[t : t + width]
                for j in range(width):
                    dev = np.float64(load(tile[j])) - shift[j]
                    sum_dev[j] += dev
                    sum_sq_dev[j] += dev * dev
            tail = values[full:]
            for j in range(tail.size):
                dev = np.float64(load(tail[j])) - shift[j]
                sum_dev[j] += dev
                sum_sq_dev[j] += dev * dev
        else:
            for i in range(n):
                for c in range(C):
                    dev = np.float64(load(x[base + i * sr + c * sc])) - shift[c]
                    sum_dev[c] += dev
                    sum_sq_dev[c] += dev * dev
        row += n
        r = 0
        a, b, d = _next3(a, b, d, B, D)


def _channel_stats_rows(x, origin, strides, shape, blocks):
    """Per-channel (count, mean, M2) of an ``(A, B, D, R, C)`` operand, float64."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    means = np.empty((blocks, C))
    m2s = np.empty((blocks, C))
    for k in prange(blocks):
        first = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        # Per-block tiles: small heap allocations, where (blocks, width)
        # scratch would be fresh pages that fault on every call.
        sum_dev = np.empty(width)
        sum_sq_dev = np.empty(width)
        shift = np.empty(width)
        _stats_row_block(x, origin, strides, shape, first, stop, sum_dev, sum_sq_dev, shift)
        for start in range(C, width, C):
            for c in range(C):
                sum_dev[c] += sum_dev[start + c]
                sum_sq_dev[c] += sum_sq_dev[start + c]
        for c in range(C):
            means[k, c], m2s[k, c] = _shifted_sums_state(stop - first, shift[c], sum_dev[c], sum_sq_dev[c])
    return _merge_units(_unit_sizes(rows, blocks), means, m2s)


# ------------------------------------------------------------ normalisation


def _normalize_runs(x, xo, xst, y, yo, yst, shape, channel_position, shift, scale, offset, part):
    """``y = (x - shift[c]) * scale[c] + offset[c]`` on runs in memory order.

    ``shape`` is ``(N0, N1, N2, N3, M)`` with the channel axis at
    ``channel_position`` among the first four.
    """
    N1, N2, N3, M = shape[1], shape[2], shape[3], shape[4]
    total = shape[0] * N1 * N2 * N3 * M
    parts = _unit_count(total, part)
    if _packed_runs(xst, shape, channel_position) and _packed_runs(yst, shape, channel_position):
        for p in prange(parts):
            position = _part_start(np.int64(p), total, parts)
            stop = _part_start(np.int64(p) + 1, total, parts)
            c = (position // M) % N3
            while position < stop:
                n = min(M - position % M, stop - position)
                _segment_affine(x, xo + position, 1, y, yo + position, 1, n, shift[c], scale[c], offset[c])
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
            yb = _offset4(yo, yst, i0, i1, i2, i3) + m * yst[4]
            _segment_affine(x, xb, xst[4], y, yb, yst[4], n, shift[c], scale[c], offset[c])
            position += n
            m = 0
            i0, i1, i2, i3 = _next4(i0, i1, i2, i3, N1, N2, N3)


def _normalize_rows(x, xo, xst, y, yo, yst, shape, shift, scale, offset, blocks):
    """``y = (x - shift[c]) * scale[c] + offset[c]`` on ``(A, B, D, R, C)`` operands."""
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    rows = shape[0] * B * D * R
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    shift_t, scale_t, offset_t = _tile(shift, width), _tile(scale, width), _tile(offset, width)
    packed = xst[4] == 1 and xst[3] == C and yst[4] == 1 and yst[3] == C
    for k in prange(blocks):
        row = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        a, b, d = _split3(row // R, B, D)
        r = row % R
        while row < stop:
            n = min(R - r, stop - row)
            xb = _offset4(xo, xst, a, b, d, r)
            yb = _offset4(yo, yst, a, b, d, r)
            if packed:
                for t in range(0, n * C, width):
                    _segment_tile_affine(x, xb + t, y, yb + t, min(width, n * C - t), shift_t, scale_t, offset_t)
            else:
                for i in range(n):
                    for c in range(C):
                        value = (load(x[xb + i * xst[3] + c * xst[4]]) - shift[c]) * scale[c] + offset[c]
                        y[yb + i * yst[3] + c * yst[4]] = store(value, y)
            row += n
            r = 0
            a, b, d = _next3(a, b, d, B, D)


@njit(**_SERIAL)
def _segment_tile_affine(x, xb, y, yb, n, shift, scale, offset):
    xv = x[xb : xb + n]
    yv = y[yb : yb + n]
    for j in range(n):
        yv[j] = store((load(xv[j]) - shift[j]) * scale[j] + offset[j], y)


# ----------------------------------------------------------------- backward


@njit(**_SERIAL)
def _grad_sums_run_unit(x, xo, xst, dy, go, gst, shape, c, start, stop, mean):
    B, D, M = shape[2], shape[3], shape[4]
    row, m = divmod(start, M)
    a, b, d = _split3(row, B, D)
    sum_dy = 0.0
    sum_dy_xmu = 0.0
    position = start
    while position < stop:
        n = min(M - m, stop - position)
        xb = xo + c * xst[0] + a * xst[1] + b * xst[2] + d * xst[3] + m * xst[4]
        gb = go + c * gst[0] + a * gst[1] + b * gst[2] + d * gst[3] + m * gst[4]
        sum_dy, sum_dy_xmu = _segment_grad_sums(x, xb, xst[4], dy, gb, gst[4], n, mean, sum_dy, sum_dy_xmu)
        position += n
        m = 0
        a, b, d = _next3(a, b, d, B, D)
    return sum_dy, sum_dy_xmu


def _grad_sums_runs(x, xo, xst, dy, go, gst, shape, mean, chunk):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` in float64, runs operands."""
    C = shape[0]
    total = shape[1] * shape[2] * shape[3] * shape[4]
    units = _unit_count(total, chunk)
    partial_dy = np.empty((units, C))
    partial_dy_xmu = np.empty((units, C))
    for u in prange(C * units):
        c, k = divmod(np.int64(u), units)  # prange indices may be unsigned
        start = _part_start(k, total, units)
        stop = _part_start(k + 1, total, units)
        partial_dy[k, c], partial_dy_xmu[k, c] = _grad_sums_run_unit(
            x, xo, xst, dy, go, gst, shape, c, start, stop, mean[c]
        )
    return _sum_units(partial_dy), _sum_units(partial_dy_xmu)


@njit(**_SERIAL)
def _grad_sums_row_block(x, xo, xst, dy, go, gst, shape, first, stop, mean, sum_dy, sum_dy_xmu):
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    width = mean.size
    for j in range(width):
        sum_dy[j] = 0.0
        sum_dy_xmu[j] = 0.0
    packed = xst[4] == 1 and xst[3] == C and gst[4] == 1 and gst[3] == C
    a, b, d = _split3(first // R, B, D)
    r = first % R
    row = first
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
                    g = np.float64(load(gt[j]))
                    sum_dy[j] += g
                    sum_dy_xmu[j] += g * (np.float64(load(xt[j])) - mean[j])
        else:
            for i in range(n):
                for c in range(C):
                    g = np.float64(load(dy[gb + i * gst[3] + c * gst[4]]))
                    sum_dy[c] += g
                    sum_dy_xmu[c] += g * (np.float64(load(x[xb + i * xst[3] + c * xst[4]])) - mean[c])
        row += n
        r = 0
        a, b, d = _next3(a, b, d, B, D)


def _grad_sums_rows(x, xo, xst, dy, go, gst, shape, mean, blocks):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` in float64, rows operands."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    mean_t = _tile(mean, width)
    partial_dy = np.empty((blocks, C))
    partial_dy_xmu = np.empty((blocks, C))
    for k in prange(blocks):
        first = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        sum_dy = np.empty(width)  # per-block tiles, as in _channel_stats_rows
        sum_dy_xmu = np.empty(width)
        _grad_sums_row_block(x, xo, xst, dy, go, gst, shape, first, stop, mean_t, sum_dy, sum_dy_xmu)
        for start in range(C, width, C):
            for c in range(C):
                sum_dy[c] += sum_dy[start + c]
                sum_dy_xmu[c] += sum_dy_xmu[start + c]
        partial_dy[k] = sum_dy[:C]
        partial_dy_xmu[k] = sum_dy_xmu[:C]
    return _sum_units(partial_dy), _sum_units(partial_dy_xmu)


def _grad_input_runs(x, xo, xst, dy, go, gst, dx, do, dst, shape, channel_position, shift, k_dy, k_x, k_const, part):
    """``dx = k_dy[c] * dy + k_x[c] * (x - shift[c]) + k_const[c]`` on runs in memory order."""
    N1, N2, N3, M = shape[1], shape[2], shape[3], shape[4]
    total = shape[0] * N1 * N2 * N3 * M
    parts = _unit_count(total, part)
    if (
        _packed_runs(xst, shape, channel_position)
        and _packed_runs(gst, shape, channel_position)
        and _packed_runs(dst, shape, channel_position)
    ):
        for p in prange(parts):
            position = _part_start(np.int64(p), total, parts)
            stop = _part_start(np.int64(p) + 1, total, parts)
            c = (position // M) % N3
            while position < stop:
                n = min(M - position % M, stop - position)
                _segment_grad_input(
                    x, xo + position, 1, dy, go + position, 1, dx, do + position, 1, n,
                    shift[c], k_dy[c], k_x[c], k_const[c],
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
            db = _offset4(do, dst, i0, i1, i2, i3) + m * dst[4]
            _segment_grad_input(
                x, xb, xst[4], dy, gb, gst[4], dx, db, dst[4], n, shift[c], k_dy[c], k_x[c], k_const[c]
            )
            position += n
            m = 0
            i0, i1, i2, i3 = _next4(i0, i1, i2, i3, N1, N2, N3)


@njit(**_SERIAL)
def _segment_tile_grad_input(x, xb, dy, gb, dx, db, n, shift, k_dy, k_x, k_const):
    xv = x[xb : xb + n]
    gv = dy[gb : gb + n]
    dv = dx[db : db + n]
    for j in range(n):
        dv[j] = store(k_dy[j] * load(gv[j]) + k_x[j] * (load(xv[j]) - shift[j]) + k_const[j], dx)


def _grad_input_rows(x, xo, xst, dy, go, gst, dx, do, dst, shape, shift, k_dy, k_x, k_const, blocks):
    """``dx = k_dy[c] * dy + k_x[c] * (x - shift[c]) + k_const[c]``, rows operands."""
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    rows = shape[0] * B * D * R
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    shift_t, k_dy_t = _tile(shift, width), _tile(k_dy, width)
    k_x_t, k_const_t = _tile(k_x, width), _tile(k_const, width)
    packed = (
        xst[4] == 1 and xst[3] == C and gst[4] == 1 and gst[3] == C and dst[4] == 1 and dst[3] == C
    )
    for k in prange(blocks):
        row = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        a, b, d = _split3(row // R, B, D)
        r = row % R
        while row < stop:
            n = min(R - r, stop - row)
            xb = _offset4(xo, xst, a, b, d, r)
            gb = _offset4(go, gst, a, b, d, r)
            db = _offset4(do, dst, a, b, d, r)
            if packed:
                for t in range(0, n * C, width):
                    _segment_tile_grad_input(
                        x, xb + t, dy, gb + t, dx, db + t, min(width, n * C - t),
                        shift_t, k_dy_t, k_x_t, k_const_t,
                    )
            else:
                for i in range(n):
                    for c in range(C):
                        value = (
                            k_dy[c] * load(dy[gb + i * gst[3] + c * gst[4]])
                            + k_x[c] * (load(x[xb + i * xst[3] + c * xst[4]]) - shift[c])
                            + k_const[c]
                        )
                        dx[db + i * dst[3] + c * dst[4]] = store(value, dx)
            row += n
            r = 0
            a, b, d = _next3(a, b, d, B, D)


channel_stats_runs, channel_stats_runs_serial = _parallel_and_serial(_channel_stats_runs)
channel_stats_rows, channel_stats_rows_serial = _parallel_and_serial(_channel_stats_rows)
normalize_runs, normalize_runs_serial = _parallel_and_serial(_normalize_runs)
normalize_rows, normalize_rows_serial = _parallel_and_serial(_normalize_rows)
grad_sums_runs, grad_sums_runs_serial = _parallel_and_serial(_grad_sums_runs)
grad_sums_rows, grad_sums_rows_serial = _parallel_and_serial(_grad_sums_rows)
grad_input_runs, grad_input_runs_serial = _parallel_and_serial(_grad_input_runs)
grad_input_rows, grad_input_rows_serial = _parallel_and_serial(_grad_input_rows)
