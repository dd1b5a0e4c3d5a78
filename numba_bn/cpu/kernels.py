"""Numba CPU kernels: per-channel reductions and elementwise passes over whole arrays.

Operands reach the kernels as flat 1-D buffers plus an element ``origin`` and
five element strides (see ``_layout.kernel_operands``), so the innermost loop
over a contiguous run is a plain unit-stride loop that LLVM vectorises; a
strided loop serves every other layout.

Every walk comes in two shapes: ``*_runs`` for ``(C, A, B, D, M)`` operands,
whose work units are chunks of one channel's values (contiguous runs along
``M``), and ``*_rows`` for ``(A, B, D, R, C)`` operands, whose work units are
blocks of rows. When rows are packed (channel stride 1, row stride C) a block
of rows is one flat stream, processed in tiles of whole rows that are a
multiple of the SIMD width long, so that even C=3 vectorises.

There are two walks, each serving two passes (compilation dominates a new
user's first call, so each walk is compiled once and a flag picks the pass):
``reduce_*`` sums a pair of float64 terms per unit and channel - the
statistics (deviations from each unit's first value, a shift that makes the
float64 sums exact enough and constant data exactly zero, merged with Chan's
formula) or the backward's ``sum(dy)`` and ``sum(dy * (x - mean))``; and
``elementwise_*`` writes ``(x - k0) * k1 + k2`` per element, plus ``k3 * dy``
for the input gradient, with per-channel coefficients ``k``. The flags are
loop invariants, hoisted by LLVM (timed against the separate kernels they
replaced: the same speed within this machine's noise).
Helpers are inlined by Numba (``inline="always"``): as calls they cost ~10%
on short runs such as 14x14 images.

Reductions are numbered by shape alone and merged in a fixed order, so
results never depend on the thread count. Elementwise passes compute with a
per-channel ``shift`` close to the mean, so no large terms cancel in float32.
Each kernel is a small driver that splits the work and calls one compiled
``part`` per unit; the driver is compiled twice, with ``prange`` and as a
``*_serial`` twin that tiny inputs use (they never wake the thread pool).
"""

import types

import numpy as np
from numba import njit, prange

from .. import config
from . import compile_notice
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


def _compiled_pair(name, driver, part):
    """``driver`` compiled twice - ``prange`` on the thread pool, and serially - around one compiled ``part``.

    ``part`` is the work of one iteration of the driver's loop (a unit of
    thousands of values, so a call per iteration costs nothing measurable).
    The heavy code is compiled once, for both drivers, and Numba's parallel
    passes only see the small loop: compilation takes a fraction of the time
    it took with the whole walk inside the ``prange`` loop, and a large
    input after a small one (or the other way round) compiles only a driver.
    Returns ``(parallel, serial)`` kernels named ``name`` and ``name + "_serial"``.
    The drivers call ``part`` as ``_part``, a name that only the globals of
    these compiled copies define.
    """
    compiled_part = njit(**_SERIAL)(_copy(part, part.__globals__, f"{name}.{part.__name__}"))
    namespace = dict(driver.__globals__, _part=compiled_part)
    parallel = njit(**_PARALLEL)(_copy(driver, namespace, name))
    serial = njit(**_SERIAL)(_copy(driver, namespace, name + "_serial"))
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
# One walk serves both reductions: with ``deviations`` (statistics: no
# per-channel reference, each unit's first value is its shift ``k``) the
# pair summed per element is ``(x - k, (x - k)**2)``; otherwise (backward,
# ``k`` the mean) it is ``(dy, dy * (x - k))``. The choice is a loop
# invariant that LLVM hoists out of the loops or turns into a vector select;
# timed against the separate kernels it replaced, it costs nothing
# measurable, and both reductions compile as one kernel.


@njit(inline="always", **_SERIAL)
def _terms(x, dy, k, deviations):
    """The pair of float64 values a reduction sums for one element."""
    deviation = np.float64(x) - k
    g = deviation if deviations else np.float64(dy)
    return g, g * deviation


@njit(inline="always", **_SERIAL)
def _segment_pairs(x, xb, xs, dy, gb, gs, n, k, deviations, first, second):
    """Add ``_terms`` of ``n`` values at ``xb``/``gb`` (strides ``xs``/``gs``) to the running pair."""
    if xs == 1 and gs == 1:
        xv = x[xb : xb + n]
        gv = dy[gb : gb + n]
        for i in range(n):
            a, b = _terms(load(xv[i]), load(gv[i]), k, deviations)
            first += a
            second += b
    else:
        for i in range(n):
            a, b = _terms(load(x[xb + i * xs]), load(dy[gb + i * gs]), k, deviations)
            first += a
            second += b
    return first, second


@njit(inline="always", **_SERIAL)
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
        first, second = _segment_pairs(x, xb, xst[4], dy, gb, gst[4], n, k, reference.size == 0, first, second)
        position += n
        m = 0
        a, b, d = _next3(a, b, d, B, D)
    return first, second, k


def _reduce_run_unit(x, xo, xst, dy, go, gst, shape, reference, units, u, first, second, references):
    """Unit ``u`` of ``_reduce_runs``: its sums and reference into ``(units, C)`` arrays."""
    total = shape[1] * shape[2] * shape[3] * shape[4]
    c, k = divmod(u, units)
    start = _part_start(k, total, units)
    stop = _part_start(k + 1, total, units)
    first[k, c], second[k, c], references[k, c] = _run_unit_pairs(
        x, xo, xst, dy, go, gst, shape, c, start, stop, reference
    )


def _reduce_runs(x, xo, xst, dy, go, gst, shape, reference, chunk):
    """``_reduction_result`` of per-unit sums over a ``(C, A, B, D, M)`` operand, units of ``chunk`` values."""
    C = shape[0]
    total = shape[1] * shape[2] * shape[3] * shape[4]
    units = _unit_count(total, chunk)
    first = np.empty((units, C))
    second = np.empty((units, C))
    references = np.empty((units, C))
    for u in prange(C * units):
        # prange indices may be unsigned
        _part(x, xo, xst, dy, go, gst, shape, reference, units, np.int64(u), first, second, references)  # noqa: F821
    return _reduction_result(_unit_sizes(total, units), first, second, references, reference.size == 0)


@njit(inline="always", **_SERIAL)
def _row_block_pairs(x, xo, xst, dy, go, gst, shape, first_row, stop, k, deviations, first, second):
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
                    u, v = _terms(load(xt[j]), load(gt[j]), k[j], deviations)
                    first[j] += u
                    second[j] += v
        else:
            for i in range(n):
                for c in range(C):
                    u, v = _terms(
                        load(x[xb + i * xst[3] + c * xst[4]]), load(dy[gb + i * gst[3] + c * gst[4]]), k[c], deviations
                    )
                    first[c] += u
                    second[c] += v
        row += n
        r = 0
        a, b, d = _next3(a, b, d, B, D)


def _reduce_rows(x, xo, xst, dy, go, gst, shape, reference, blocks):
    """``_reduction_result`` of per-block sums over an ``(A, B, D, R, C)`` operand."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    blocks = max(min(blocks, rows), 1)
    first = np.empty((blocks, C))
    second = np.empty((blocks, C))
    references = np.empty((blocks, C))
    for block in prange(blocks):
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, shape, reference, blocks, np.int64(block), first, second, references
        )
    return _reduction_result(_unit_sizes(rows, blocks), first, second, references, reference.size == 0)


def _reduce_row_block(x, xo, xst, dy, go, gst, shape, reference, blocks, block, first, second, references):
    """Block ``block`` of ``_reduce_rows``: its sums and references into ``(blocks, C)`` arrays."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    width = _tile_width(C)
    start = _part_start(block, rows, blocks)
    stop = _part_start(block + 1, rows, blocks)
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
    _row_block_pairs(x, xo, xst, dy, go, gst, shape, start, stop, k, reference.size == 0, tile_first, tile_second)
    for offset in range(C, width, C):
        for c in range(C):
            tile_first[c] += tile_first[offset + c]
            tile_second[c] += tile_second[offset + c]
    first[block] = tile_first[:C]
    second[block] = tile_second[:C]
    references[block] = k[:C]


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
def _reduction_result(sizes, first, second, references, deviations):
    """The count and the per-channel pair of a reduction from its per-unit sums and references.

    Statistics (the references are the units' shifts): ``(count, mean, M2)``;
    backward: ``(count, sum(dy), sum(dy * (x - mean)))``, added in unit order.
    """
    if deviations:
        return _merged_states(sizes, first, second, references)
    return sizes.sum(), _sum_units(first), _sum_units(second)


# ------------------------------------------------------ elementwise passes
# One walk serves both passes: ``(x - k0) * k1 + k2``, plus ``k3 * dy`` with
# ``gradient`` (``dy`` is ``x`` again for the one-input pass; the flag is a
# loop invariant, so each pass keeps a tight loop).


@njit(inline="always", **_SERIAL)
def _value(x, dy, k0, k1, k2, k3, gradient):
    """One output value from the input values and the channel's four coefficients."""
    value = (x - k0) * k1 + k2
    if gradient:
        value += k3 * dy
    return value


@njit(inline="always", **_SERIAL)
def _segment_values(x, xb, xs, dy, gb, gs, out, ob, os, n, k0, k1, k2, k3, gradient):
    """``n`` outputs at ``ob`` (stride ``os``) from the inputs at ``xb``/``gb``."""
    if xs == 1 and gs == 1 and os == 1:
        xv = x[xb : xb + n]
        gv = dy[gb : gb + n]
        ov = out[ob : ob + n]
        for i in range(n):
            ov[i] = store(_value(load(xv[i]), load(gv[i]), k0, k1, k2, k3, gradient), out)
    else:
        for i in range(n):
            value = _value(load(x[xb + i * xs]), load(dy[gb + i * gs]), k0, k1, k2, k3, gradient)
            out[ob + i * os] = store(value, out)


@njit(inline="always", **_SERIAL)
def _tile_values(x, xb, dy, gb, out, ob, n, k, gradient):
    """``n`` packed outputs with per-value coefficients: ``k`` holds four tiled rows."""
    xv = x[xb : xb + n]
    gv = dy[gb : gb + n]
    ov = out[ob : ob + n]
    k0, k1, k2, k3 = k[0], k[1], k[2], k[3]
    for j in range(n):
        ov[j] = store(_value(load(xv[j]), load(gv[j]), k0[j], k1[j], k2[j], k3[j], gradient), out)


def _elementwise_runs(x, xo, xst, dy, go, gst, out, oo, ost, shape, channel_position, k, gradient, part):
    """``out = _value(x, dy, k[:, c])`` on runs, walked in memory order, in parts of ``part`` values.

    ``shape`` is ``(N0, N1, N2, N3, M)`` with the channel axis at
    ``channel_position`` among the first four; ``k`` is ``(4, C)``.
    """
    total = shape[0] * shape[1] * shape[2] * shape[3] * shape[4]
    parts = _unit_count(total, part)
    packed = (
        _packed_runs(xst, shape, channel_position)
        and _packed_runs(gst, shape, channel_position)
        and _packed_runs(ost, shape, channel_position)
    )
    for p in prange(parts):
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, out, oo, ost, shape, channel_position, k, gradient, packed, parts, np.int64(p)
        )


def _elementwise_run_part(
    x, xo, xst, dy, go, gst, out, oo, ost, shape, channel_position, k, gradient, packed, parts, p
):
    """Part ``p`` of ``_elementwise_runs``."""
    N1, N2, N3, M = shape[1], shape[2], shape[3], shape[4]
    total = shape[0] * N1 * N2 * N3 * M
    position = _part_start(p, total, parts)
    stop = _part_start(p + 1, total, parts)
    if packed:
        # Runs lie back to back: a value's flat position is its offset from the origin.
        c = (position // M) % N3
        while position < stop:
            n = min(M - position % M, stop - position)
            _segment_values(
                x, xo + position, 1, dy, go + position, 1, out, oo + position, 1, n,
                k[0, c], k[1, c], k[2, c], k[3, c], gradient,
            )
            position += n
            c = c + 1 if c + 1 < N3 else 0
        return
    run, m = divmod(position, M)
    i0, i1, i2, i3 = _split4(run, N1, N2, N3)
    while position < stop:
        n = min(M - m, stop - position)
        c = _pick(channel_position, i0, i1, i2, i3)
        xb = _offset4(xo, xst, i0, i1, i2, i3) + m * xst[4]
        gb = _offset4(go, gst, i0, i1, i2, i3) + m * gst[4]
        ob = _offset4(oo, ost, i0, i1, i2, i3) + m * ost[4]
        _segment_values(
            x, xb, xst[4], dy, gb, gst[4], out, ob, ost[4], n, k[0, c], k[1, c], k[2, c], k[3, c], gradient
        )
        position += n
        m = 0
        i0, i1, i2, i3 = _next4(i0, i1, i2, i3, N1, N2, N3)


def _elementwise_rows(x, xo, xst, dy, go, gst, out, oo, ost, shape, k, gradient, blocks):
    """``out = _value(x, dy, k[:, c])`` on ``(A, B, D, R, C)`` operands; ``k`` is ``(4, C)``."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    tiled = np.empty((4, width), k.dtype)
    for i in range(4):
        tiled[i] = _tile(k[i], width)
    packed = xst[4] == 1 and xst[3] == C and gst[4] == 1 and gst[3] == C and ost[4] == 1 and ost[3] == C
    for block in prange(blocks):
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, out, oo, ost, shape, k, tiled, gradient, packed, blocks, np.int64(block)
        )


def _elementwise_row_block(x, xo, xst, dy, go, gst, out, oo, ost, shape, k, tiled, gradient, packed, blocks, block):
    """Block ``block`` of ``_elementwise_rows`` (``tiled``: the coefficients repeated to a tile's width)."""
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    rows = shape[0] * B * D * R
    width = tiled.shape[1]
    row = _part_start(block, rows, blocks)
    stop = _part_start(block + 1, rows, blocks)
    a, b, d = _split3(row // R, B, D)
    r = row % R
    while row < stop:
        n = min(R - r, stop - row)
        xb = _offset4(xo, xst, a, b, d, r)
        gb = _offset4(go, gst, a, b, d, r)
        ob = _offset4(oo, ost, a, b, d, r)
        if packed:
            for t in range(0, n * C, width):
                _tile_values(x, xb + t, dy, gb + t, out, ob + t, min(width, n * C - t), tiled, gradient)
        else:
            for i in range(n):
                for c in range(C):
                    value = _value(
                        load(x[xb + i * xst[3] + c * xst[4]]), load(dy[gb + i * gst[3] + c * gst[4]]),
                        k[0, c], k[1, c], k[2, c], k[3, c], gradient,
                    )
                    out[ob + i * ost[3] + c * ost[4]] = store(value, out)
        row += n
        r = 0
        a, b, d = _next3(a, b, d, B, D)


# ------------------------------------------------------------- the kernels

#: ``(x, xo, xst, dy, go, gst, shape, reference, chunk)`` over ``(C, A, B, D, M)`` runs:
#: ``(count, mean, m2)`` with ``NO_REFERENCE`` (``dy`` is ``x``), else
#: ``(count, sum(dy), sum(dy * (x - reference)))``; float64 per channel.
reduce_runs, reduce_runs_serial = _compiled_pair("reduce_runs", _reduce_runs, _reduce_run_unit)
#: ``(x, xo, xst, dy, go, gst, shape, reference, blocks)`` over ``(A, B, D, R, C)`` rows: as ``reduce_runs``.
reduce_rows, reduce_rows_serial = _compiled_pair("reduce_rows", _reduce_rows, _reduce_row_block)
#: ``(x, ..., dy, ..., out, ..., shape, channel_position, k, gradient, part)``:
#: ``out = (x - k0) * k1 + k2`` (``+ k3 * dy`` with ``gradient``).
elementwise_runs, elementwise_runs_serial = _compiled_pair("elementwise_runs", _elementwise_runs, _elementwise_run_part)
#: ``(x, ..., dy, ..., out, ..., shape, k, gradient, blocks)``: as ``elementwise_runs``.
elementwise_rows, elementwise_rows_serial = _compiled_pair(
    "elementwise_rows", _elementwise_rows, _elementwise_row_block
)

_RUNS_KERNELS = (reduce_runs, reduce_runs_serial, elementwise_runs, elementwise_runs_serial)
_ROWS_KERNELS = (reduce_rows, reduce_rows_serial, elementwise_rows, elementwise_rows_serial)
compile_notice.install(
    {kernel: "channels-first" for kernel in _RUNS_KERNELS} | {kernel: "channels-last" for kernel in _ROWS_KERNELS}
)
