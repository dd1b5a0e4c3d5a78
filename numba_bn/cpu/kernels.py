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
for the input gradient (or ``k3 * residual`` for a fused residual add), with
per-channel coefficients ``k``. The flags are loop invariants, hoisted by
LLVM (timed against the separate kernels they replaced: the same speed
within this machine's noise).

A fused ReLU keeps one bit per value for its backward: the forward's
elementwise pass records ``not result <= 0`` at each value's position in its
walk (the memory order of ``x``), and the backward's passes read the bit of
the same position to let ``dy`` through. These passes are the same walks
compiled again with their own per-segment work (``relu_elementwise_*``,
``gated_elementwise_*``, ``gated_reduce_*``), on first use: the plain
kernels hold none of their code, which would triple their compile time.
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

#: Bytes of scratch into which the passes that read or write a ReLU mask unpack its bits (a byte
#: each), so that their loops over the values stay branch-free and vectorise; a tile of values
#: is 8 fewer, for a start inside a byte.
_GATE_TILE = 512

#: A reduction's per-channel reference when each unit takes its first value instead.
NO_REFERENCE = np.empty(0)

#: Whether a compiled reduction counts ``dy`` only where a ReLU mask lets it through: each
#: reduction is compiled with this constant False and True (see ``_compiled_pair``).
_GATED = False

#: No ReLU mask: a pass that neither records nor applies one.
NO_MASK = np.empty(0, np.uint8)

#: No position strides (reductions over rows, or without a mask).
NO_POSITIONS = (0, 0, 0, 0, 0)

# What an elementwise pass computes (``mode``, a sum of these flags):
#: add ``k3 * second`` (the gradient ``dy``, or the forward's residual);
ADD = 1
#: clamp at 0 (ReLU) and, when a mask is given, record ``not result <= 0`` as one bit per value;
RELU = 2
#: pass the second operand only where the mask's bit is set (the backward through a ReLU), and
#: write what passed to the second output when one is given;
GATE = 4
#: leave out the ``(x - k0) * k1 + k2`` term (the backward through constant statistics).
NO_X = 8


def _copy(function, namespace, qualname):
    """``function`` under another qualified name, resolving its globals in ``namespace``.

    Numba keys its on-disk cache by qualified name, so every copy gets its own entry.
    """
    copy = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__)
    copy.__qualname__ = qualname
    copy.__doc__ = function.__doc__
    copy.__module__ = function.__module__
    return copy


def _compiled_pair(name, driver, part, part_options=_SERIAL, **part_globals):
    """``driver`` compiled twice - ``prange`` on the thread pool, and serially - around one compiled ``part``.

    ``part`` is the work of one iteration of the driver's loop (a unit of
    thousands of values, so a call per iteration costs nothing measurable).
    The heavy code is compiled once, for both drivers, and Numba's parallel
    passes only see the small loop: compilation takes a fraction of the time
    it took with the whole walk inside the ``prange`` loop, and a large
    input after a small one (or the other way round) compiles only a driver.
    Returns ``(parallel, serial)`` kernels named ``name`` and ``name + "_serial"``.
    The drivers call ``part`` as ``_part``, a name that only the globals of
    these compiled copies define. ``part_globals`` replace globals of
    ``part`` in its compiled copy: the kind of pass it compiles (``_GATED``,
    or an entry of ``_PASSES``), so that each kernel holds only its own code.
    """
    part_namespace = dict(part.__globals__, **part_globals)
    compiled_part = njit(**part_options)(_copy(part, part_namespace, f"{name}.{part.__name__}"))
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
def _gcd8(C):
    """gcd(C, 8)."""
    a, b = C, 8
    while b:
        a, b = b, a % b
    return a


@njit(**_SERIAL)
def _tile_width(C):
    """Values per tile of packed rows: whole rows, a multiple of 8 when cheap."""
    period = C * 8 // _gcd8(C)  # lcm(C, 8)
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


@njit(**_SERIAL)
def _aligned_part_start(part, total, parts, align):
    """``_part_start`` rounded down to a multiple of ``align`` (the last part still ends at ``total``).

    Parts that record a ReLU mask start on a whole byte of it, so no two
    threads write the same byte.
    """
    if part >= parts:
        return total
    start = _part_start(part, total, parts)
    return start - start % align


@njit(**_SERIAL)
def _rows_per_byte(C):
    """Fewest whole rows of C values that fill whole bytes of a mask."""
    return 8 // _gcd8(C)


@njit(inline="always", **_SERIAL)
def _bit(mask, position):
    """The mask's bit for the value at walk ``position``."""
    return (mask[position >> 3] >> (position & 7)) & 1


@njit(inline="always", **_SERIAL)
def _passes(value):
    """1 where a ReLU passes the gradient (``not value <= 0``: positive, or NaN as in PyTorch), else 0."""
    return 0 if value <= 0 else 1


#: The eight bits of a byte spread over the eight bytes of a word (bit j -> byte j, as 0 or 1).
_SPREAD_BYTE = np.array([sum(((b >> j) & 1) << (8 * j) for j in range(8)) for b in range(256)], np.uint64)


@njit(**_SERIAL)
def _scratch(size):
    """``(keep, words)``: ``size`` bytes (a multiple of 8) in which passes unpack or pack mask bits,
    and the same memory as uint64 words (viewed once: a view per segment costs as much as its work)."""
    keep = np.empty(size, np.uint8)
    return keep, keep.view(np.uint64)


@njit(inline="always", **_SERIAL)
def _spread_bits(mask, position, n, words):
    """Unpack the mask's bits of walk positions ``position + i`` (``i < n``) into the bytes of
    ``words`` (at least ``n + 7`` bytes): returns ``offset``, with the bit of ``position + i`` in
    byte ``offset + i``. A byte of the mask at a time, from the one that holds ``position``'s bit."""
    offset = position & 7
    first = position >> 3
    for w in range((offset + n + 7) >> 3):
        words[w] = _SPREAD_BYTE[mask[first + w]]
    return offset


@njit(inline="always", **_SERIAL)
def _pack_bytes(words, n, mask, position):
    """The mask bytes of walk positions ``position`` (a multiple of 8) on, from ``n`` 0/1 bytes in
    ``words``, eight at a time (a multiply gathers bit 0 of each byte of a word into its top byte)."""
    first = position >> 3
    for w in range(n >> 3):
        mask[first + w] = (words[w] * np.uint64(0x0102040810204080)) >> np.uint64(56)


@njit(inline="always", **_SERIAL)
def _record_signs(out, ob, os, n, mask, position, pending, scratch):
    """Record ``not out[ob + i * os] <= 0`` (i < n) as the mask bits of walk positions ``position + i``.

    The result is positive or NaN there: PyTorch's ReLU lets the gradient
    through unless the value is <= 0, so it passes at NaN too.

    Returns the bits of a byte that is still incomplete at the end (a
    ``pending`` one is completed first); the caller flushes the last one.
    Whole bytes are built eight values at a time.
    """
    i = 0
    while i < n and (position + i) & 7:
        pending |= _passes(load(out[ob + i * os])) << ((position + i) & 7)
        i += 1
        if (position + i) & 7 == 0:
            mask[(position + i - 1) >> 3] = pending
            pending = 0
    keep, words = scratch
    while i + 8 <= n:  # whole bytes, a tile of ``keep`` at a time
        m = min(keep.size, (n - i) & ~7)
        if os == 1:
            ov = out[ob + i : ob + i + m]
            for j in range(m):
                keep[j] = _passes(load(ov[j]))
        else:
            for j in range(m):
                keep[j] = _passes(load(out[ob + (i + j) * os]))
        _pack_bytes(words, m, mask, position + i)
        i += m
    while i < n:
        pending |= _passes(load(out[ob + i * os])) << ((position + i) & 7)
        i += 1
    return pending


@njit(inline="always", **_SERIAL)
def _flush_signs(mask, stop, pending):
    """Write the last, incomplete byte of a part that ends at walk position ``stop``."""
    if stop & 7:
        mask[stop >> 3] = pending


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
def _segment_pairs(x, xb, xs, dy, gb, gs, n, k, deviations, first, second, gated, mask, position, scratch):
    """Add ``_terms`` of ``n`` values at ``xb``/``gb`` (strides ``xs``/``gs``) to the running pair.

    ``gated`` (the backward through a ReLU): ``dy`` counts only where
    the bit of its walk position (``position + i``) is set; ``scratch`` (see
    ``_scratch``) receives ``_GATE_TILE`` unpacked bits at a time.
    """
    if gated:
        keep, words = scratch
        for t in range(0, n, _GATE_TILE - 8):
            m = min(_GATE_TILE - 8, n - t)
            o = _spread_bits(mask, position + t, m, words)
            if xs == 1 and gs == 1:
                xv, gv = x[xb + t : xb + t + m], dy[gb + t : gb + t + m]
                for i in range(m):
                    g = np.float64(load(gv[i]))
                    a, b = _terms(load(xv[i]), g if keep[o + i] != 0 else 0.0, k, deviations)
                    first += a
                    second += b
            else:
                for i in range(m):
                    g = np.float64(load(dy[gb + (t + i) * gs]))
                    a, b = _terms(load(x[xb + (t + i) * xs]), g if keep[o + i] != 0 else 0.0, k, deviations)
                    first += a
                    second += b
    elif xs == 1 and gs == 1:
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
def _run_unit_pairs(x, xo, xst, dy, go, gst, shape, c, start, stop, reference, mask, positions, scratch, gated):
    """Sums of ``_terms`` over values ``start:stop`` of channel ``c`` (channel-major runs), and the ``k`` used.

    ``positions``: the walk-position strides of the view's axes, where a
    ``gated`` walk reads ``mask``.
    """
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
        walk = c * positions[0] + a * positions[1] + b * positions[2] + d * positions[3] + m * positions[4]
        first, second = _segment_pairs(
            x, xb, xst[4], dy, gb, gst[4], n, k, reference.size == 0, first, second, gated, mask, walk, scratch
        )
        position += n
        m = 0
        a, b, d = _next3(a, b, d, B, D)
    return first, second, k


def _reduce_run_unit(
    x, xo, xst, dy, go, gst, shape, reference, mask, positions, no_scratch, units, u, first, second, references
):
    """Unit ``u`` of ``_reduce_runs``: its sums and reference into ``(units, C)`` arrays."""
    total = shape[1] * shape[2] * shape[3] * shape[4]
    c, k = divmod(u, units)
    start = _part_start(k, total, units)
    stop = _part_start(k + 1, total, units)
    # Scratch for unpacked mask bits only where a mask is read: an allocation per unit costs ~5%.
    if _GATED:
        first[k, c], second[k, c], references[k, c] = _run_unit_pairs(
            x, xo, xst, dy, go, gst, shape, c, start, stop, reference, mask, positions, _scratch(_GATE_TILE), True
        )
    else:
        first[k, c], second[k, c], references[k, c] = _run_unit_pairs(
            x, xo, xst, dy, go, gst, shape, c, start, stop, reference, mask, positions, no_scratch, False
        )


def _reduce_runs(x, xo, xst, dy, go, gst, shape, reference, mask, positions, chunk):
    """``_reduction_result`` of per-unit sums over a ``(C, A, B, D, M)`` operand, units of ``chunk`` values."""
    C = shape[0]
    total = shape[1] * shape[2] * shape[3] * shape[4]
    units = _unit_count(total, chunk)
    first = np.empty((units, C))
    second = np.empty((units, C))
    references = np.empty((units, C))
    no_scratch = _scratch(0)
    for u in prange(C * units):
        # prange indices may be unsigned
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, shape, reference, mask, positions, no_scratch, units, np.int64(u),
            first, second, references,
        )
    return _reduction_result(_unit_sizes(total, units), first, second, references, reference.size == 0)


@njit(inline="always", **_SERIAL)
def _row_block_pairs(x, xo, xst, dy, go, gst, shape, first_row, stop, k, deviations, first, second, mask, gated):
    """Sums of ``_terms`` over rows ``first_row:stop`` into tiles (``k``: the tiled references).

    ``gated``: ``dy`` counts only where the ``mask``'s bit of its walk
    position (``row * C + c``) is set.
    """
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    width = k.size
    first[:] = 0.0
    second[:] = 0.0
    keep, words = _scratch((width + 15) & ~7 if gated else 0)  # see _spread_bits
    packed = xst[4] == 1 and xst[3] == C and gst[4] == 1 and gst[3] == C
    a, b, d = _split3(first_row // R, B, D)
    r = first_row % R
    row = first_row
    while row < stop:
        n = min(R - r, stop - row)
        xb = _offset4(xo, xst, a, b, d, r)
        gb = _offset4(go, gst, a, b, d, r)
        if gated and packed:
            for t in range(0, n * C, width):
                m = min(width, n * C - t)
                o = _spread_bits(mask, row * C + t, m, words)
                for j in range(m):
                    g = np.float64(load(dy[gb + t + j]))
                    u, v = _terms(load(x[xb + t + j]), g if keep[o + j] != 0 else 0.0, k[j], deviations)
                    first[j] += u
                    second[j] += v
        elif gated:
            for i in range(n):
                for c in range(C):
                    g = np.float64(load(dy[gb + i * gst[3] + c * gst[4]])) if _bit(mask, (row + i) * C + c) else 0.0
                    u, v = _terms(load(x[xb + i * xst[3] + c * xst[4]]), g, k[c], deviations)
                    first[c] += u
                    second[c] += v
        elif packed:
            xv = x[xb : xb + n * C]
            gv = dy[gb : gb + n * C]
            total = n * C
            t = 0
            # Four tiles per step, added up in registers before they reach the tile's sums: the loads
            # and stores of those sums bounded this loop (a quarter of them: 2x on 4 MB, one thread).
            while t + 4 * width <= total:
                x0, x1 = xv[t : t + width], xv[t + width : t + 2 * width]
                x2, x3 = xv[t + 2 * width : t + 3 * width], xv[t + 3 * width : t + 4 * width]
                g0, g1 = gv[t : t + width], gv[t + width : t + 2 * width]
                g2, g3 = gv[t + 2 * width : t + 3 * width], gv[t + 3 * width : t + 4 * width]
                for j in range(width):
                    u0, v0 = _terms(load(x0[j]), load(g0[j]), k[j], deviations)
                    u1, v1 = _terms(load(x1[j]), load(g1[j]), k[j], deviations)
                    u2, v2 = _terms(load(x2[j]), load(g2[j]), k[j], deviations)
                    u3, v3 = _terms(load(x3[j]), load(g3[j]), k[j], deviations)
                    first[j] += (u0 + u1) + (u2 + u3)
                    second[j] += (v0 + v1) + (v2 + v3)
                t += 4 * width
            while t < total:
                xt = xv[t : t + width]
                gt = gv[t : t + width]
                for j in range(xt.size):
                    u, v = _terms(load(xt[j]), load(gt[j]), k[j], deviations)
                    first[j] += u
                    second[j] += v
                t += width
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


def _reduce_rows(x, xo, xst, dy, go, gst, shape, reference, mask, positions, blocks):
    """``_reduction_result`` of per-block sums over an ``(A, B, D, R, C)`` operand."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    blocks = max(min(blocks, rows), 1)
    first = np.empty((blocks, C))
    second = np.empty((blocks, C))
    references = np.empty((blocks, C))
    for block in prange(blocks):
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, shape, reference, mask, blocks, np.int64(block), first, second, references
        )
    return _reduction_result(_unit_sizes(rows, blocks), first, second, references, reference.size == 0)


def _reduce_row_block(x, xo, xst, dy, go, gst, shape, reference, mask, blocks, block, first, second, references):
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
    _row_block_pairs(
        x, xo, xst, dy, go, gst, shape, start, stop, k, reference.size == 0, tile_first, tile_second, mask, _GATED
    )
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
# Three kinds of pass, each compiled as its own kernels from one walk (see
# ``_PASSES``): plain ``(x - k0) * k1 + k2``, plus ``k3 * second`` with ``ADD``
# (``dy`` for the input gradient, or the forward's residual); ``relu``, the
# same clamped at 0 and recording its mask; ``gated``, the backward through a
# ReLU (``GATE``, and ``NO_X`` through constant statistics). ``second`` is
# ``x`` again for a one-input pass, and an unused second output is empty. The
# flags are loop invariants, so each pass keeps a tight loop. Parts start on
# whole bytes of the ReLU mask, whose bit for a value is its position in this
# walk (memory order of ``x``).


@njit(inline="always", **_SERIAL)
def _value(x, dy, k0, k1, k2, k3, mode, relu, zero):
    """One output value from the input values and the channel's four coefficients.

    ``relu`` is a constant of each kind of pass (not a test per value)."""
    value = (x - k0) * k1 + k2
    if mode & ADD:
        value += k3 * dy
    if relu and value <= 0:  # NaN stays NaN, as with torch.relu
        value = zero
    return value


@njit(inline="always", **_SERIAL)
def _gated_value(x, dy, keep, k0, k1, k2, k3, mode, zero):
    """The backward through a ReLU: the input gradient, ``dy`` passing only where ``keep``."""
    passed = dy if keep else zero
    if mode & NO_X:
        return k3 * passed
    return (x - k0) * k1 + k2 + k3 * passed


@njit(inline="always", **_SERIAL)
def _segment_values(x, xb, xs, dy, gb, gs, out, ob, os, n, k0, k1, k2, k3, mode, relu, zero):
    """``n`` outputs at ``ob`` (stride ``os``) from the inputs at ``xb``/``gb``."""
    if xs == 1 and gs == 1 and os == 1:
        xv = x[xb : xb + n]
        gv = dy[gb : gb + n]
        ov = out[ob : ob + n]
        for i in range(n):
            ov[i] = store(_value(load(xv[i]), load(gv[i]), k0, k1, k2, k3, mode, relu, zero), out)
    else:
        for i in range(n):
            value = _value(load(x[xb + i * xs]), load(dy[gb + i * gs]), k0, k1, k2, k3, mode, relu, zero)
            out[ob + i * os] = store(value, out)


@njit(inline="always", **_SERIAL)
def _tile_values(x, xb, dy, gb, out, ob, n, k, mode, relu, zero):
    """``n`` packed outputs with per-value coefficients: ``k`` holds four tiled rows."""
    xv = x[xb : xb + n]
    gv = dy[gb : gb + n]
    ov = out[ob : ob + n]
    k0, k1, k2, k3 = k[0], k[1], k[2], k[3]
    for j in range(n):
        ov[j] = store(_value(load(xv[j]), load(gv[j]), k0[j], k1[j], k2[j], k3[j], mode, relu, zero), out)


@njit(inline="always", **_SERIAL)
def _gated_run(x, xb, xs, dy, gb, gs, out, ob, os, out2, o2b, o2s, m, k0, k1, k2, k3, mode, zero, keep, o):
    """``m`` values of a gated segment with their bits already unpacked in ``keep[o:]``."""
    if xs == 1 and gs == 1 and os == 1:
        xv, gv, ov = x[xb : xb + m], dy[gb : gb + m], out[ob : ob + m]
        for i in range(m):
            value = _gated_value(load(xv[i]), load(gv[i]), keep[o + i] != 0, k0, k1, k2, k3, mode, zero)
            ov[i] = store(value, out)
    else:
        for i in range(m):
            value = _gated_value(
                load(x[xb + i * xs]), load(dy[gb + i * gs]), keep[o + i] != 0, k0, k1, k2, k3, mode, zero
            )
            out[ob + i * os] = store(value, out)
    if out2.size:
        _write_passed(dy, gb, gs, out2, o2b, o2s, m, keep, o, zero)


@njit(inline="always", **_SERIAL)
def _write_passed(dy, gb, gs, out2, o2b, o2s, n, keep, o, zero):
    """``out2`` receives ``dy`` where ``keep[o:]`` is set, else 0: the gradient that passed a ReLU."""
    if gs == 1 and o2s == 1:
        gv, o2v = dy[gb : gb + n], out2[o2b : o2b + n]
        for i in range(n):
            o2v[i] = store(load(gv[i]) if keep[o + i] != 0 else zero, out2)
    else:
        for i in range(n):
            out2[o2b + i * o2s] = store(load(dy[gb + i * gs]) if keep[o + i] != 0 else zero, out2)


# What each kind of pass does with one segment of a walk (strided, at walk
# ``position``) and with one tile of packed rows (per-value coefficients
# ``k``, four tiled rows); both return the mask bits still pending
# (``_record_signs``), and ``_pass_finish`` writes the last ones of a part.


@njit(inline="always", **_SERIAL)
def _plain_segment(
    x, xb, xs, dy, gb, gs, out, ob, os, out2, o2b, o2s, n, k0, k1, k2, k3, mode, zero, mask, position, pending, scratch
):
    _segment_values(x, xb, xs, dy, gb, gs, out, ob, os, n, k0, k1, k2, k3, mode, False, zero)
    return pending


@njit(inline="always", **_SERIAL)
def _plain_tile(x, xb, dy, gb, out, ob, out2, o2b, n, k, mode, zero, mask, position, pending, scratch):
    _tile_values(x, xb, dy, gb, out, ob, n, k, mode, False, zero)
    return pending


@njit(inline="always", **_SERIAL)
def _relu_segment(
    x, xb, xs, dy, gb, gs, out, ob, os, out2, o2b, o2s, n, k0, k1, k2, k3, mode, zero, mask, position, pending, scratch
):
    _segment_values(x, xb, xs, dy, gb, gs, out, ob, os, n, k0, k1, k2, k3, mode, True, zero)
    if mask.size:
        pending = _record_signs(out, ob, os, n, mask, position, pending, scratch)
    return pending


@njit(inline="always", **_SERIAL)
def _relu_tile(x, xb, dy, gb, out, ob, out2, o2b, n, k, mode, zero, mask, position, pending, scratch):
    _tile_values(x, xb, dy, gb, out, ob, n, k, mode, True, zero)
    if mask.size:
        pending = _record_signs(out, ob, 1, n, mask, position, pending, scratch)
    return pending


@njit(inline="always", **_SERIAL)
def _gated_segment(
    x, xb, xs, dy, gb, gs, out, ob, os, out2, o2b, o2s, n, k0, k1, k2, k3, mode, zero, mask, position, pending, scratch
):
    """The mask's bits are unpacked a tile at a time into ``scratch`` (see ``_scratch``), so the
    loops over the values select without branching; what passed goes to ``out2`` when it is not empty."""
    keep, words = scratch
    for t in range(0, n, _GATE_TILE - 8):
        m = min(_GATE_TILE - 8, n - t)
        o = _spread_bits(mask, position + t, m, words)
        _gated_run(
            x, xb + t * xs, xs, dy, gb + t * gs, gs, out, ob + t * os, os, out2, o2b + t * o2s, o2s, m,
            k0, k1, k2, k3, mode, zero, keep, o,
        )
    return pending


@njit(inline="always", **_SERIAL)
def _gated_tile(x, xb, dy, gb, out, ob, out2, o2b, n, k, mode, zero, mask, position, pending, scratch):
    keep, words = scratch
    o = _spread_bits(mask, position, n, words)
    xv, gv, ov = x[xb : xb + n], dy[gb : gb + n], out[ob : ob + n]
    k0, k1, k2, k3 = k[0], k[1], k[2], k[3]
    for j in range(n):
        value = _gated_value(load(xv[j]), load(gv[j]), keep[o + j] != 0, k0[j], k1[j], k2[j], k3[j], mode, zero)
        ov[j] = store(value, out)
    if out2.size:
        _write_passed(dy, gb, 1, out2, o2b, 1, n, keep, o, zero)
    return pending


@njit(inline="always", **_SERIAL)
def _finish_nothing(mask, stop, pending):
    """A pass that records no mask leaves it as it is."""


#: The kinds of elementwise pass: the globals of each one's compiled walk (``_pass_segment``,
#: ``_pass_tile``, ``_pass_finish``, and ``_MASKED``: whether it unpacks or packs mask bits, so needs scratch).
#: Each kind is its own kernel, so a plain call never compiles the fused code (compiled in one
#: walk, it more than doubled the first call's compile time; the literal modes that kept its
#: speed on 14x14 runs cost that much again).
_PASSES = {
    "plain": dict(_pass_segment=_plain_segment, _pass_tile=_plain_tile, _pass_finish=_finish_nothing, _MASKED=False),
    "relu": dict(_pass_segment=_relu_segment, _pass_tile=_relu_tile, _pass_finish=_flush_signs, _MASKED=True),
    "gated": dict(_pass_segment=_gated_segment, _pass_tile=_gated_tile, _pass_finish=_finish_nothing, _MASKED=True),
}


def _elementwise_runs(
    x, xo, xst, dy, go, gst, out, oo, ost, out2, o2o, o2st, shape, channel_position, k, mode, mask, part
):
    """``out = _value(x, dy, k[:, c])`` (or its ``mode``'s variant) on runs, walked in memory order, in parts
    of about ``part`` values.

    ``shape`` is ``(N0, N1, N2, N3, M)`` with the channel axis at
    ``channel_position`` among the first four; ``k`` is ``(4, C)``.
    """
    total = shape[0] * shape[1] * shape[2] * shape[3] * shape[4]
    parts = _unit_count(total, part)
    packed = (
        _packed_runs(xst, shape, channel_position)
        and _packed_runs(gst, shape, channel_position)
        and _packed_runs(ost, shape, channel_position)
        and _packed_runs(o2st, shape, channel_position)
    )
    for p in prange(parts):
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, out, oo, ost, out2, o2o, o2st, shape, channel_position, k, mode, mask,
            packed, parts, np.int64(p),
        )


def _elementwise_run_part(
    x, xo, xst, dy, go, gst, out, oo, ost, out2, o2o, o2st, shape, channel_position, k, mode, mask, packed, parts, p
):
    """Part ``p`` of ``_elementwise_runs``, a ``_pass_segment`` per run (the pass's, see ``_PASSES``)."""
    N1, N2, N3, M = shape[1], shape[2], shape[3], shape[4]
    total = shape[0] * N1 * N2 * N3 * M
    position = _aligned_part_start(p, total, parts, 8)
    stop = _aligned_part_start(p + 1, total, parts, 8)
    zero = k.dtype.type(0)
    pending = 0
    scratch = _scratch(_GATE_TILE if _MASKED else 0)  # noqa: F821 (unpacked or packing mask bits)
    if packed:
        # Runs lie back to back: a value's flat position is its offset from the origin.
        c = (position // M) % N3
        while position < stop:
            n = min(M - position % M, stop - position)
            pending = _pass_segment(  # noqa: F821
                x, xo + position, 1, dy, go + position, 1, out, oo + position, 1, out2, o2o + position, 1, n,
                k[0, c], k[1, c], k[2, c], k[3, c], mode, zero, mask, position, pending, scratch,
            )
            position += n
            c = c + 1 if c + 1 < N3 else 0
    else:
        run, m = divmod(position, M)
        i0, i1, i2, i3 = _split4(run, N1, N2, N3)
        while position < stop:
            n = min(M - m, stop - position)
            c = _pick(channel_position, i0, i1, i2, i3)
            xb = _offset4(xo, xst, i0, i1, i2, i3) + m * xst[4]
            gb = _offset4(go, gst, i0, i1, i2, i3) + m * gst[4]
            ob = _offset4(oo, ost, i0, i1, i2, i3) + m * ost[4]
            o2b = _offset4(o2o, o2st, i0, i1, i2, i3) + m * o2st[4]
            pending = _pass_segment(  # noqa: F821
                x, xb, xst[4], dy, gb, gst[4], out, ob, ost[4], out2, o2b, o2st[4], n,
                k[0, c], k[1, c], k[2, c], k[3, c], mode, zero, mask, position, pending, scratch,
            )
            position += n
            m = 0
            i0, i1, i2, i3 = _next4(i0, i1, i2, i3, N1, N2, N3)
    _pass_finish(mask, stop, pending)  # noqa: F821


def _elementwise_rows(x, xo, xst, dy, go, gst, out, oo, ost, out2, o2o, o2st, shape, k, mode, mask, blocks):
    """``out = _value(x, dy, k[:, c])`` (or its ``mode``'s variant) on ``(A, B, D, R, C)`` operands;
    ``k`` is ``(4, C)``."""
    C = shape[4]
    rows = shape[0] * shape[1] * shape[2] * shape[3]
    blocks = max(min(blocks, rows), 1)
    width = _tile_width(C)
    tiled = np.empty((4, width), k.dtype)
    for i in range(4):
        tiled[i] = _tile(k[i], width)
    packed = (
        xst[4] == 1 and xst[3] == C and gst[4] == 1 and gst[3] == C and ost[4] == 1 and ost[3] == C
        and (out2.size == 0 or (o2st[4] == 1 and o2st[3] == C))
    )
    for block in prange(blocks):
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, out, oo, ost, out2, o2o, o2st, shape, k, tiled, mode, mask, packed, blocks,
            np.int64(block),
        )


def _elementwise_row_block(
    x, xo, xst, dy, go, gst, out, oo, ost, out2, o2o, o2st, shape, k, tiled, mode, mask, packed, blocks, block
):
    """Block ``block`` of ``_elementwise_rows``: a ``_pass_tile`` per tile of packed rows, else a ``_pass_segment``
    per value (the pass's, see ``_PASSES``); ``tiled`` holds the coefficients repeated to a tile's width."""
    B, D, R, C = shape[1], shape[2], shape[3], shape[4]
    rows = shape[0] * B * D * R
    width = tiled.shape[1]
    align = _rows_per_byte(C)
    row = _aligned_part_start(block, rows, blocks, align)
    stop = _aligned_part_start(block + 1, rows, blocks, align)
    zero = k.dtype.type(0)
    pending = 0
    scratch = _scratch((max(width, _GATE_TILE) + 15) & ~7 if _MASKED else 0)  # noqa: F821 (see _spread_bits)
    a, b, d = _split3(row // R, B, D)
    r = row % R
    while row < stop:
        n = min(R - r, stop - row)
        xb = _offset4(xo, xst, a, b, d, r)
        gb = _offset4(go, gst, a, b, d, r)
        ob = _offset4(oo, ost, a, b, d, r)
        o2b = _offset4(o2o, o2st, a, b, d, r)
        if packed:
            for t in range(0, n * C, width):
                count = min(width, n * C - t)
                pending = _pass_tile(  # noqa: F821
                    x, xb + t, dy, gb + t, out, ob + t, out2, o2b + t, count, tiled, mode, zero, mask, row * C + t,
                    pending, scratch,
                )
        else:
            for i in range(n):
                for c in range(C):
                    pending = _pass_segment(  # noqa: F821
                        x, xb + i * xst[3] + c * xst[4], 0, dy, gb + i * gst[3] + c * gst[4], 0,
                        out, ob + i * ost[3] + c * ost[4], 0, out2, o2b + i * o2st[3] + c * o2st[4], 0, 1,
                        k[0, c], k[1, c], k[2, c], k[3, c], mode, zero, mask, (row + i) * C + c, pending, scratch,
                    )
        row += n
        r = 0
        a, b, d = _next3(a, b, d, B, D)
    _pass_finish(mask, stop * C, pending)  # noqa: F821


# ------------------------------------------------------- fused backward
# The training backward over runs, one channel at a time: its sums, its
# coefficients, then its input gradient, while the channel's ``x`` and ``dy``
# are still in cache. The two whole-array passes (``reduce_runs``, then
# ``elementwise_runs``) read both inputs from memory twice; this order was
# 1.1-1.2x faster on inputs larger than the cache ((32, 128, 1000),
# (32, 64, 56, 56), (4, 32, 16, 56, 56) float32, 2 threads). The channel's
# sums are the same units added in the same order, but in another compiled
# loop, whose vector lanes may round differently: results equal the two
# passes' to rounding, and the backend picks one or the other by shape
# alone, so they never depend on the thread count.


def _backward_runs(x, xo, xst, dy, go, gst, out, oo, ost, shape, mean, invstd, weight, count, chunk, sums, k):
    """``out`` receives the input gradient, ``sums`` rows ``sum(dy * xhat)`` and ``sum(dy)``, and ``k`` the
    coefficients (``formulas.backward_channel``), over ``(C, A, B, D, M)`` runs; a channel per iteration."""
    for c in prange(shape[0]):
        _part(  # noqa: F821
            x, xo, xst, dy, go, gst, out, oo, ost, shape, mean, invstd, weight, count, chunk, sums, k, np.int64(c)
        )


@njit(**_SERIAL)
def _channel_grad_sums(x, xo, xst, dy, go, gst, shape, mean, chunk, c):
    """Channel ``c``'s ``sum(dy)`` and ``sum(dy * (x - mean))``: ``reduce_runs``' units of the channel,
    summed in unit order as ``_sum_units`` adds them."""
    total = shape[1] * shape[2] * shape[3] * shape[4]
    units = _unit_count(total, chunk)
    no_scratch = _scratch(0)
    sum_dy = 0.0
    sum_dy_xmu = 0.0
    for unit in range(units):
        first, second, _ = _run_unit_pairs(
            x, xo, xst, dy, go, gst, shape, c, _part_start(unit, total, units), _part_start(unit + 1, total, units),
            mean, NO_MASK, NO_POSITIONS, no_scratch, False,
        )
        if unit == 0:
            sum_dy, sum_dy_xmu = first, second
        else:
            sum_dy += first
            sum_dy_xmu += second
    return sum_dy, sum_dy_xmu


@njit(**_SERIAL)
def _channel_grad_input(x, xo, xst, dy, go, gst, out, oo, ost, shape, k, c):
    """Channel ``c`` of ``elementwise_runs``' ``ADD`` pass: ``out`` = the input gradient."""
    B, D, M = shape[2], shape[3], shape[4]
    k0, k1, k2, k3 = k[0, c], k[1, c], k[2, c], k[3, c]
    zero = k.dtype.type(0)
    for row in range(shape[1] * B * D):
        a, b, d = _split3(row, B, D)
        _segment_values(
            x, xo + c * xst[0] + a * xst[1] + b * xst[2] + d * xst[3], xst[4],
            dy, go + c * gst[0] + a * gst[1] + b * gst[2] + d * gst[3], gst[4],
            out, oo + c * ost[0] + a * ost[1] + b * ost[2] + d * ost[3], ost[4],
            M, k0, k1, k2, k3, ADD, False, zero,
        )


def _backward_run_channel(x, xo, xst, dy, go, gst, out, oo, ost, shape, mean, invstd, weight, count, chunk, sums, k, c):
    """Channel ``c`` of ``_backward_runs``. Compiled without fast-math, as ``channel_math`` is, so that the
    coefficients come out of the sums exactly as ``channel_math.backward_coefficients`` computes them."""
    sum_dy, sum_dy_xmu = _channel_grad_sums(x, xo, xst, dy, go, gst, shape, mean, chunk, c)
    formulas.backward_channel(c, sum_dy, sum_dy_xmu, mean, invstd, weight, count, sums, k)
    _channel_grad_input(x, xo, xst, dy, go, gst, out, oo, ost, shape, k, c)


# ------------------------------------------------------------- the kernels

#: ``(x, xo, xst, dy, go, gst, shape, reference, mask, positions, chunk)`` over ``(C, A, B, D, M)`` runs:
#: ``(count, mean, m2)`` with ``NO_REFERENCE`` (``dy`` is ``x``), else
#: ``(count, sum(dy), sum(dy * (x - reference)))``; float64 per channel. ``mask`` and
#: ``positions`` (walk-position strides per axis) serve only the ``gated_reduce_*`` twins.
reduce_runs, reduce_runs_serial = _compiled_pair("reduce_runs", _reduce_runs, _reduce_run_unit)
#: ``(x, xo, xst, dy, go, gst, shape, reference, mask, positions, blocks)`` over ``(A, B, D, R, C)`` rows:
#: as ``reduce_runs`` (rows are walked in order: ``positions`` is unused).
reduce_rows, reduce_rows_serial = _compiled_pair("reduce_rows", _reduce_rows, _reduce_row_block)
#: The backward sums through a ReLU: ``dy`` counts where the ``mask``'s bit is set.
gated_reduce_runs, gated_reduce_runs_serial = _compiled_pair(
    "gated_reduce_runs", _reduce_runs, _reduce_run_unit, _GATED=True
)
gated_reduce_rows, gated_reduce_rows_serial = _compiled_pair(
    "gated_reduce_rows", _reduce_rows, _reduce_row_block, _GATED=True
)
#: ``(x, ..., dy, ..., out, ..., out2, ..., shape, channel_position, k, mode, mask, part)``:
#: ``out = (x - k0) * k1 + k2``, and ``ADD`` adds ``k3 * dy``.
elementwise_runs, elementwise_runs_serial = _compiled_pair(
    "elementwise_runs", _elementwise_runs, _elementwise_run_part, **_PASSES["plain"]
)
#: ``(x, ..., dy, ..., out, ..., out2, ..., shape, k, mode, mask, blocks)``: as ``elementwise_runs``.
elementwise_rows, elementwise_rows_serial = _compiled_pair(
    "elementwise_rows", _elementwise_rows, _elementwise_row_block, **_PASSES["plain"]
)
#: The same through a ReLU (``RELU``, ``RELU | ADD``), recording its ``mask`` unless ``NO_MASK``.
relu_elementwise_runs, relu_elementwise_runs_serial = _compiled_pair(
    "relu_elementwise_runs", _elementwise_runs, _elementwise_run_part, **_PASSES["relu"]
)
relu_elementwise_rows, relu_elementwise_rows_serial = _compiled_pair(
    "relu_elementwise_rows", _elementwise_rows, _elementwise_row_block, **_PASSES["relu"]
)
#: The input gradient through a ReLU (``ADD | GATE``, ``| NO_X``), what passed into ``out2`` unless empty.
gated_elementwise_runs, gated_elementwise_runs_serial = _compiled_pair(
    "gated_elementwise_runs", _elementwise_runs, _elementwise_run_part, **_PASSES["gated"]
)
gated_elementwise_rows, gated_elementwise_rows_serial = _compiled_pair(
    "gated_elementwise_rows", _elementwise_rows, _elementwise_row_block, **_PASSES["gated"]
)

#: ``(x, ..., dy, ..., out, ..., shape, mean, invstd, weight, count, chunk, sums, k)`` over ``(C, A, B, D, M)``
#: runs: the whole training backward (``out`` the input gradient, ``sums`` and ``k`` as
#: ``channel_math.backward_coefficients`` fills them), a channel at a time.
backward_runs, _ = _compiled_pair(
    "backward_runs", _backward_runs, _backward_run_channel, part_options=dict(cache=True, error_model="numpy")
)

#: The walks, as the backend picks them (the fused ones compile on first use of a fused pass).
WALKS = ("reduce", "gated_reduce", "elementwise", "relu_elementwise", "gated_elementwise")
_RUNS_KERNELS = tuple(globals()[f"{walk}_runs{serial}"] for walk in WALKS for serial in ("", "_serial"))
_ROWS_KERNELS = tuple(globals()[f"{walk}_rows{serial}"] for walk in WALKS for serial in ("", "_serial"))
compile_notice.install(
    {kernel: "channels-first" for kernel in (*_RUNS_KERNELS, backward_runs)}
    | {kernel: "channels-last" for kernel in _ROWS_KERNELS}
)
