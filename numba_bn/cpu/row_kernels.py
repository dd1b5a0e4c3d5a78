"""Numba CPU kernels of the row normalisations: GroupNorm, InstanceNorm and LayerNorm.

All three normalise *rows* with their own statistics and then apply a
per-channel or per-element affine. A row is one (sample, group) of GroupNorm,
one (sample, channel) of InstanceNorm, or one sample's trailing
``normalized_shape`` values of LayerNorm. The kernels read a C-contiguous
array as ``(N, G, A, B)``: row ``r = n * G + g`` starts at ``n * sN + g * sG``
and holds ``A`` segments of ``B`` contiguous values, ``sA`` apart (see
``numba_bn/_row_layout.py``). Channels-first GroupNorm has ``A`` channels of
``B`` spatial values; channels-last has ``A`` spatial positions of ``B``
channels; LayerNorm one segment of the whole row. The affine's index of a
value is ``g * wg + a * wa + b * wb``: constant along a segment (``wb == 0``)
or one per value (``wb == 1``).

Two work splits, chosen from the shape alone so that results never depend on
the thread count:

* whole rows (many rows, or small ones): a row is one unit of work, its
  statistics and its normalisation in one sweep while the row is in cache
  (two passes over memory forward, three backward);
* split rows (few large rows): each row is cut into ``parts`` fixed pieces,
  whose shifted float64 sums are Chan-merged in piece order, so a single
  row still keeps every core busy.

Statistics are sums of deviations from a unit's first value in float64 (a
shift that keeps the sums exact enough, |mean|/std = 1e5 in float32
included, and makes constant rows exactly zero), turned into ``(mean, M2)``
and merged with Chan's formula (``numba_bn._formulas``). The elementwise
passes compute in the data's compute dtype with ``x - shift``, ``shift`` the
row mean rounded to that dtype, so no large terms cancel.

Each kernel is a small driver over ``prange`` around serial per-unit
functions, compiled twice (parallel and serial: inputs smaller than
``config.SERIAL_BELOW`` values never wake the thread pool). The drivers'
flags are runtime values, not literals, so each dtype compiles once.
"""

import types

import numpy as np
from numba import njit, prange

from .. import config
from .channel_math import formulas
from .half import load, store

_PARALLEL = dict(parallel=True, cache=True, fastmath=config.FASTMATH)
_SERIAL = dict(cache=True, fastmath=config.FASTMATH)


def _compiled_pair(name, driver):
    """``driver`` compiled with ``prange`` and as a serial twin ``name + "_serial"``.

    Numba keys its disk cache by qualified name, so each copy gets its own.
    """
    kernels = []
    for suffix, options in (("", _PARALLEL), ("_serial", _SERIAL)):
        copy = types.FunctionType(driver.__code__, driver.__globals__, driver.__name__, driver.__defaults__)
        copy.__qualname__ = name + suffix
        copy.__doc__ = driver.__doc__
        copy.__module__ = driver.__module__
        kernels.append(njit(**options)(copy))
    return tuple(kernels)


# ------------------------------------------------------------------ helpers


@njit(inline="always", **_SERIAL)
def _part_start(part, total, parts):
    """First index of ``part`` when ``total`` items are split into near-equal parts."""
    quotient, remainder = divmod(total, parts)
    return part * quotient + min(part, remainder)


@njit(inline="always", **_SERIAL)
def _range_sums(x, base, sA, B, start, stop):
    """``(shift, sum(x - shift), sum((x - shift) ** 2))`` in float64 over flat values ``start:stop`` of a row,
    ``shift`` the first of them."""
    a = start // B
    b = start - a * B
    shift = np.float64(load(x[base + a * sA + b]))
    first = 0.0
    second = 0.0
    i = start
    while i < stop:
        n = min(B - b, stop - i)
        segment = x[base + a * sA + b : base + a * sA + b + n]
        for j in range(n):
            d = np.float64(load(segment[j])) - shift
            first += d
            second += d * d
        i += n
        a += 1
        b = 0
    return shift, first, second


@njit(inline="always", **_SERIAL)
def _row_terms(r, mean, invstd, terms):
    """Row ``r``'s compute-dtype terms: ``shift`` (the mean rounded), ``invstd`` and
    ``(mean - shift) * invstd`` (what the rounding left over, in units of the std)."""
    terms[r, 0] = mean[r]
    terms[r, 1] = invstd[r]
    terms[r, 2] = (mean[r] - np.float64(terms[r, 0])) * invstd[r]


@njit(inline="always", **_SERIAL)
def _normalize_range(x, out, base, sA, B, start, stop, terms, r, weight, bias, wbase, wa, wb, mean, invstd):
    """``y = (x - mean) * invstd * w + b`` over flat values ``start:stop`` of row ``r``."""
    shift, scale, rest = terms[r, 0], terms[r, 1], terms[r, 2]
    channel = np.empty(2, terms.dtype)  # a segment's scale and offset, rounded once to the compute dtype
    a = start // B
    b = start - a * B
    i = start
    while i < stop:
        n = min(B - b, stop - i)
        offset = base + a * sA + b
        xs = x[offset : offset + n]
        ys = out[offset : offset + n]
        k = wbase + a * wa + b
        if wb == 0:
            # One channel per segment: y = (x - shift) * s + o, s and o in float64 then rounded once.
            w = np.float64(weight[wbase + a * wa])
            channel[0] = invstd[r] * w
            channel[1] = np.float64(bias[wbase + a * wa]) - (mean[r] - np.float64(shift)) * invstd[r] * w
            s, o = channel[0], channel[1]
            for j in range(n):
                ys[j] = store((load(xs[j]) - shift) * s + o, out)
        else:
            ws = weight[k : k + n]
            bs = bias[k : k + n]
            for j in range(n):
                ys[j] = store(((load(xs[j]) - shift) * scale - rest) * ws[j] + bs[j], out)
        i += n
        a += 1
        b = 0


# ------------------------------------------------------------------ forward


@njit(**_SERIAL)
def _forward_whole_row(x, out, r, G, sN, sG, sA, B, L, weight, bias, wg, wa, wb, eps, given, mean, var, invstd,
                       terms):
    """Row ``r`` in one unit: its statistics (unless ``given``), then its normalisation."""
    n, g = divmod(r, G)
    base = n * sN + g * sG
    if L == 0:
        return
    if not given:
        shift, first, second = _range_sums(x, base, sA, B, 0, L)
        row_mean, m2 = formulas.shifted_sums_state(np.float64(L), shift, first, second)
        mean[r] = row_mean
        var[r] = m2 / L
        invstd[r] = formulas.inverse_std(var[r], eps)
    _row_terms(r, mean, invstd, terms)
    _normalize_range(x, out, base, sA, B, 0, L, terms, r, weight, bias, g * wg, wa, wb, mean, invstd)


@njit(**_SERIAL)
def _part_stats(x, u, parts, G, sN, sG, sA, B, L, states):
    """Piece ``u % parts`` of row ``u // parts``: its count, shift and shifted sums into ``states[u]``."""
    r, p = divmod(u, parts)
    n, g = divmod(r, G)
    start = _part_start(p, L, parts)
    stop = _part_start(p + 1, L, parts)
    states[u, 0] = stop - start
    if stop > start:
        states[u, 1], states[u, 2], states[u, 3] = _range_sums(x, n * sN + g * sG, sA, B, start, stop)


@njit(**_SERIAL)
def _merge_parts(rows, parts, states, eps, mean, var, invstd, terms):
    """Each row's pieces Chan-merged in piece order into its mean and inverse std."""
    for r in range(rows):
        count, row_mean, m2 = 0.0, 0.0, 0.0
        for p in range(parts):
            u = r * parts + p
            piece_mean, piece_m2 = formulas.shifted_sums_state(states[u, 0], states[u, 1], states[u, 2], states[u, 3])
            count, row_mean, m2 = formulas.chan_merge(count, row_mean, m2, states[u, 0], piece_mean, piece_m2)
        mean[r] = row_mean if count > 0 else np.nan
        var[r] = m2 / count if count > 0 else np.nan
        invstd[r] = formulas.inverse_std(var[r], eps)
        _row_terms(r, mean, invstd, terms)


@njit(**_SERIAL)
def _normalize_part(x, out, u, parts, G, sN, sG, sA, B, L, weight, bias, wg, wa, wb, mean, invstd, terms):
    r, p = divmod(u, parts)
    n, g = divmod(r, G)
    start = _part_start(p, L, parts)
    stop = _part_start(p + 1, L, parts)
    _normalize_range(x, out, n * sN + g * sG, sA, B, start, stop, terms, r, weight, bias, g * wg, wa, wb, mean, invstd)


def _forward(x, out, shape, strides, weight, bias, weight_strides, eps, parts, given, mean, var, invstd, terms):
    """Normalise every row of ``x`` into ``out``; ``mean``, the biased ``var`` and ``invstd`` (float64,
    one per row) are computed unless ``given`` (then ``mean`` and ``invstd`` are read, ``var`` is not).
    ``parts`` > 1 splits each row into that many pieces."""
    N, G, A, B = shape
    sN, sG, sA = strides
    wg, wa, wb = weight_strides
    rows = N * G
    L = A * B
    if parts == 1:
        for r in prange(rows):
            _forward_whole_row(
                x, out, np.int64(r), G, sN, sG, sA, B, L, weight, bias, wg, wa, wb, eps, given, mean, var, invstd, terms
            )
        return
    units = rows * parts
    if not given:
        states = np.zeros((units, 4))
        for u in prange(units):
            _part_stats(x, np.int64(u), parts, G, sN, sG, sA, B, L, states)
        _merge_parts(rows, parts, states, eps, mean, var, invstd, terms)
    else:
        for r in range(rows):
            _row_terms(r, mean, invstd, terms)
    for u in prange(units):
        _normalize_part(x, out, np.int64(u), parts, G, sN, sG, sA, B, L, weight, bias, wg, wa, wb, mean, invstd, terms)


forward, forward_serial = _compiled_pair("forward", _forward)


# ------------------------------------------------------------------ backward


@njit(inline="always", **_SERIAL)
def _range_grad_sums(x, dy, base, sA, B, start, stop, m, inv, weight, wbase, wa, wb, weights, wdy, wdyx):
    """``(sum(w * dy), sum(w * dy * (x - m)))`` in float64 over flat values ``start:stop`` of a row;
    with ``weights`` also adds ``dy`` and ``dy * xhat`` to ``wdy`` and ``wdyx`` at each value's weight index."""
    a = start // B
    b = start - a * B
    total_dy = 0.0
    total_dyx = 0.0
    i = start
    while i < stop:
        n = min(B - b, stop - i)
        offset = base + a * sA + b
        xs = x[offset : offset + n]
        ds = dy[offset : offset + n]
        k = wbase + a * wa + b
        if wb == 0:
            seg_dy = 0.0
            seg_dyx = 0.0
            for j in range(n):
                d = np.float64(load(ds[j]))
                seg_dy += d
                seg_dyx += d * (np.float64(load(xs[j])) - m)
            w = np.float64(weight[wbase + a * wa])
            total_dy += w * seg_dy
            total_dyx += w * seg_dyx
            if weights:
                wdy[wbase + a * wa] += seg_dy
                wdyx[wbase + a * wa] += seg_dyx * inv
        elif weights:
            ws = weight[k : k + n]
            pdy = wdy[k : k + n]
            pdyx = wdyx[k : k + n]
            for j in range(n):
                d = np.float64(load(ds[j]))
                dx = d * (np.float64(load(xs[j])) - m)
                w = np.float64(ws[j])
                total_dy += w * d
                total_dyx += w * dx
                pdy[j] += d
                pdyx[j] += dx * inv
        else:
            ws = weight[k : k + n]
            for j in range(n):
                d = np.float64(load(ds[j])) * np.float64(ws[j])
                total_dy += d
                total_dyx += d * (np.float64(load(xs[j])) - m)
        i += n
        a += 1
        b = 0
    return total_dy, total_dyx


@njit(inline="always", **_SERIAL)
def _grad_range(x, dy, dx, base, sA, B, start, stop, r, terms, grad_terms, weight, wbase, wa, wb):
    """``dx = w * invstd * dy + k_x * (x - shift) + k_const`` over flat values ``start:stop`` of row ``r``."""
    shift, inv = terms[r, 0], terms[r, 1]
    k_x, k_const = grad_terms[r, 0], grad_terms[r, 1]
    a = start // B
    b = start - a * B
    i = start
    while i < stop:
        n = min(B - b, stop - i)
        offset = base + a * sA + b
        xs = x[offset : offset + n]
        ds = dy[offset : offset + n]
        gs = dx[offset : offset + n]
        k = wbase + a * wa + b
        if wb == 0:
            k_dy = inv * weight[wbase + a * wa]
            for j in range(n):
                gs[j] = store(k_dy * load(ds[j]) + k_x * (load(xs[j]) - shift) + k_const, dx)
        else:
            ws = weight[k : k + n]
            for j in range(n):
                gs[j] = store(inv * ws[j] * load(ds[j]) + k_x * (load(xs[j]) - shift) + k_const, dx)
        i += n
        a += 1
        b = 0


@njit(inline="always", **_SERIAL)
def _grad_terms(r, L, total_dy, total_dyx, batch, mean, invstd, terms, grad_terms):
    """Row ``r``'s ``k_x`` and ``k_const``: the gradient through the row's mean and variance
    (zero when the statistics were constants)."""
    _row_terms(r, mean, invstd, terms)
    if not batch or L == 0:
        grad_terms[r, 0] = 0.0
        grad_terms[r, 1] = 0.0
        return
    inv = invstd[r]
    c1 = inv * total_dy / L
    c2 = inv * inv * inv * total_dyx / L
    grad_terms[r, 0] = -c2
    grad_terms[r, 1] = c2 * (mean[r] - np.float64(terms[r, 0])) - c1


@njit(**_SERIAL)
def _backward_block(x, dy, dx, k, blocks, rows, G, sN, sG, sA, B, L, weight, wg, wa, wb, mean, invstd, batch,
                    weights, wdy, wdyx, terms, grad_terms):
    """Rows of block ``k``, each whole: its sums (and weight sums into row ``k`` of ``wdy``/``wdyx``), then ``dx``."""
    for r in range(_part_start(k, rows, blocks), _part_start(k + 1, rows, blocks)):
        n, g = divmod(r, G)
        base = n * sN + g * sG
        total_dy, total_dyx = 0.0, 0.0
        if batch or weights:
            total_dy, total_dyx = _range_grad_sums(
                x, dy, base, sA, B, 0, L, mean[r], invstd[r], weight, g * wg, wa, wb, weights, wdy[k], wdyx[k]
            )
        _grad_terms(r, L, total_dy, total_dyx, batch, mean, invstd, terms, grad_terms)
        _grad_range(x, dy, dx, base, sA, B, 0, L, r, terms, grad_terms, weight, g * wg, wa, wb)


@njit(**_SERIAL)
def _backward_piece(x, dy, p, parts, rows, G, sN, sG, sA, B, L, weight, wg, wa, wb, mean, invstd, weights, wdy, wdyx,
                    sums):
    """Piece ``p`` of every row: its sums into ``sums[r, p]``, its weight sums into row ``p`` of ``wdy``/``wdyx``
    (row 0 when the pieces' weight indices are disjoint)."""
    start = _part_start(p, L, parts)
    stop = _part_start(p + 1, L, parts)
    for r in range(rows):
        n, g = divmod(r, G)
        sums[r, p, 0], sums[r, p, 1] = _range_grad_sums(
            x, dy, n * sN + g * sG, sA, B, start, stop, mean[r], invstd[r], weight, g * wg, wa, wb, weights,
            wdy[p % wdy.shape[0]], wdyx[p % wdy.shape[0]],
        )


@njit(**_SERIAL)
def _grad_part(x, dy, dx, u, parts, G, sN, sG, sA, B, L, weight, wg, wa, wb, terms, grad_terms):
    r, p = divmod(u, parts)
    n, g = divmod(r, G)
    start = _part_start(p, L, parts)
    stop = _part_start(p + 1, L, parts)
    _grad_range(x, dy, dx, n * sN + g * sG, sA, B, start, stop, r, terms, grad_terms, weight, g * wg, wa, wb)


@njit(**_SERIAL)
def _sum_rows(partials):
    """``partials`` summed along its first axis, in order."""
    total = partials[0].copy()
    for k in range(1, partials.shape[0]):
        total += partials[k]
    return total


def _backward(x, dy, dx, shape, strides, weight, weight_strides, weight_count, mean, invstd, batch, weights, parts,
              blocks, terms, grad_terms):
    """The input's gradient into ``dx``; returns the weight's and bias's float64 gradients
    (``sum(dy * xhat)``, ``sum(dy)`` per weight index; zero-length unless ``weights``).

    ``batch``: the rows were normalised with their own statistics (the gradient flows through them).
    Whole rows go in ``blocks`` fixed blocks of rows; ``parts`` > 1 splits each row into pieces.
    """
    N, G, A, B = shape
    sN, sG, sA = strides
    wg, wa, wb = weight_strides
    rows = N * G
    L = A * B
    width = weight_count if weights else 0
    if parts == 1:
        wdy = np.zeros((blocks, width))
        wdyx = np.zeros((blocks, width))
        for k in prange(blocks):
            _backward_block(
                x, dy, dx, np.int64(k), blocks, rows, G, sN, sG, sA, B, L, weight, wg, wa, wb, mean, invstd, batch,
                weights, wdy, wdyx, terms, grad_terms,
            )
        if not weights:
            return wdyx[0], wdy[0]
        return _sum_rows(wdyx), _sum_rows(wdy)
    # One weight row per piece, unless each piece has its own weights (one segment per row: LayerNorm).
    disjoint = A == 1 and wb == 1 and G == 1
    weight_rows = 1 if disjoint else parts
    wdy = np.zeros((weight_rows, width))
    wdyx = np.zeros((weight_rows, width))
    sums = np.zeros((rows, parts, 2))
    for p in prange(parts):
        _backward_piece(
            x, dy, np.int64(p), parts, rows, G, sN, sG, sA, B, L, weight, wg, wa, wb, mean, invstd, weights, wdy,
            wdyx, sums,
        )
    for r in range(rows):
        total_dy, total_dyx = 0.0, 0.0
        for p in range(parts):
            total_dy += sums[r, p, 0]
            total_dyx += sums[r, p, 1]
        _grad_terms(r, L, total_dy, total_dyx, batch, mean, invstd, terms, grad_terms)
    for u in prange(rows * parts):
        _grad_part(x, dy, dx, np.int64(u), parts, G, sN, sG, sA, B, L, weight, wg, wa, wb, terms, grad_terms)
    return _sum_rows(wdyx), _sum_rows(wdy)


backward, backward_serial = _compiled_pair("backward", _backward)
