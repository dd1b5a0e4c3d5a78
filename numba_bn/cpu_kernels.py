"""Numba CPU kernels: per-channel statistics, normalisation and backward.

Every kernel comes in two shapes (see ``_layout``): ``*_runs`` for
``(C, A, B, D, M)`` views, whose work units are chunks of one channel's values,
and ``*_rows`` for ``(A, B, D, R, C)`` views, whose work units are blocks of
rows processed vectorised along C. Units are numbered by shape alone and
merged in a fixed order, so results never depend on the thread count.

Statistics use shifted sums per unit (shift = the unit's first value,
accumulated in float64), which are exact enough inside a cache-sized unit, and
Chan's pairwise formula to merge units into a channel's (count, mean, M2).
Elementwise passes compute ``(x - shift) * scale + offset`` with a per-channel
``shift`` close to the mean, so no large terms cancel in float32.
"""

import numpy as np
from numba import njit, prange

from . import config
from ._half import load, store

_PARALLEL = dict(parallel=True, cache=True, fastmath=config.FASTMATH)
_SERIAL = dict(cache=True, fastmath=config.FASTMATH)


@njit(**_SERIAL)
def _part_start(part, total, parts):
    """First index of ``part`` when ``total`` items are split into near-equal parts."""
    quotient, remainder = divmod(total, parts)
    return part * quotient + min(part, remainder)


@njit(**_SERIAL)
def _locate_run(position, B, D, M):
    """Indices (a, b, d, m) of the ``position``-th value of a channel in a runs view."""
    row, m = divmod(position, M)
    rest, d = divmod(row, D)
    a, b = divmod(rest, B)
    return a, b, d, m


@njit(**_SERIAL)
def _locate_row(row, B, D, R):
    """Indices (a, b, d, r) of the ``row``-th row of a rows view."""
    rest, r = divmod(row, R)
    rest, d = divmod(rest, D)
    a, b = divmod(rest, B)
    return a, b, d, r


@njit(**_SERIAL)
def _next_row(a, b, d, r, B, D, R):
    r += 1
    if r == R:
        r = 0
        d += 1
        if d == D:
            d = 0
            b += 1
            if b == B:
                b = 0
                a += 1
    return a, b, d, r


@njit(**_SERIAL)
def _chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) states."""
    if count_b == 0:
        return count_a, mean_a, m2_a
    if count_a == 0:
        return count_b, mean_b, m2_b
    count = count_a + count_b
    delta = mean_b - mean_a
    weight_b = count_b / count
    return (
        count,
        mean_a + delta * weight_b,
        m2_a + m2_b + delta * delta * (count_a * weight_b),
    )


@njit(**_SERIAL)
def _shifted_sums_state(count, shift, sum_dev, sum_sq_dev):
    """(mean, M2) from sums of deviations from ``shift``; M2 clamped at 0, NaN kept."""
    mean = shift + sum_dev / count
    m2 = sum_sq_dev - sum_dev * sum_dev / count
    if m2 < 0.0:
        m2 = 0.0
    return mean, m2


@njit(**_PARALLEL)
def _merge_channel_states(counts, means, m2s):
    """Merge ``(channels, units)`` partial states along units, in unit order."""
    channels, units = means.shape
    count = np.zeros(channels, np.int64)
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    for c in prange(channels):
        n, mu, q = 0, 0.0, 0.0
        for k in range(units):
            n, mu, q = _chan_merge(n, mu, q, counts[c, k], means[c, k], m2s[c, k])
        count[c] = n
        mean[c] = mu
        m2[c] = q
    return count, mean, m2


# ---------------------------------------------------------------- statistics


@njit(**_PARALLEL)
def channel_stats_runs(x, chunk):
    """Per-channel (count, mean, M2) of a ``(C, A, B, D, M)`` view, float64."""
    C, A, B, D, M = x.shape
    total = A * B * D * M
    units = max((total + chunk - 1) // chunk, 1)
    counts = np.zeros((C, units), np.int64)
    means = np.zeros((C, units))
    m2s = np.zeros((C, units))
    for u in prange(C * units):
        c, k = divmod(np.int64(u), units)  # prange indices may be unsigned
        start = _part_start(k, total, units)
        stop = _part_start(k + 1, total, units)
        if stop > start:
            a0, b0, d0, m0 = _locate_run(start, B, D, M)
            shift = np.float64(load(x[c, a0, b0, d0, m0]))
            sum_dev = 0.0
            sum_sq_dev = 0.0
            position = start
            while position < stop:
                a, b, d, m_first = _locate_run(position, B, D, M)
                m_stop = min(M, m_first + stop - position)
                for m in range(m_first, m_stop):
                    dev = np.float64(load(x[c, a, b, d, m])) - shift
                    sum_dev += dev
                    sum_sq_dev += dev * dev
                position += m_stop - m_first
            counts[c, k] = stop - start
            means[c, k], m2s[c, k] = _shifted_sums_state(stop - start, shift, sum_dev, sum_sq_dev)
    return _merge_channel_states(counts, means, m2s)


@njit(**_PARALLEL)
def channel_stats_rows(x, blocks):
    """Per-channel (count, mean, M2) of an ``(A, B, D, R, C)`` view, float64."""
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    blocks = max(min(blocks, rows), 1)
    counts = np.zeros((C, blocks), np.int64)
    means = np.zeros((C, blocks))
    m2s = np.zeros((C, blocks))
    shifts = np.empty((blocks, C))
    sum_dev = np.zeros((blocks, C))
    sum_sq_dev = np.zeros((blocks, C))
    for k in prange(blocks):
        first = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        if stop > first:
            a, b, d, r = _locate_row(first, B, D, R)
            for c in range(C):
                shifts[k, c] = np.float64(load(x[a, b, d, r, c]))
            for _ in range(stop - first):
                for c in range(C):
                    dev = np.float64(load(x[a, b, d, r, c])) - shifts[k, c]
                    sum_dev[k, c] += dev
                    sum_sq_dev[k, c] += dev * dev
                a, b, d, r = _next_row(a, b, d, r, B, D, R)
            for c in range(C):
                counts[c, k] = stop - first
                means[c, k], m2s[c, k] = _shifted_sums_state(
                    stop - first, shifts[k, c], sum_dev[k, c], sum_sq_dev[k, c]
                )
    return _merge_channel_states(counts, means, m2s)


# ------------------------------------------------------------ normalisation


@njit(**_PARALLEL)
def normalize_runs(x, y, shift, scale, offset, chunk):
    """``y = (x - shift[c]) * scale[c] + offset[c]`` on ``(C, A, B, D, M)`` views."""
    C, A, B, D, M = x.shape
    total = A * B * D * M
    units = max((total + chunk - 1) // chunk, 1)
    for u in prange(C * units):
        c, k = divmod(np.int64(u), units)  # prange indices may be unsigned
        position = _part_start(k, total, units)
        stop = _part_start(k + 1, total, units)
        s, g, o = shift[c], scale[c], offset[c]
        while position < stop:
            a, b, d, m_first = _locate_run(position, B, D, M)
            m_stop = min(M, m_first + stop - position)
            for m in range(m_first, m_stop):
                y[c, a, b, d, m] = store((load(x[c, a, b, d, m]) - s) * g + o, y)
            position += m_stop - m_first


@njit(**_PARALLEL)
def normalize_rows(x, y, shift, scale, offset, blocks):
    """``y = (x - shift[c]) * scale[c] + offset[c]`` on ``(A, B, D, R, C)`` views."""
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    blocks = max(min(blocks, rows), 1)
    for k in prange(blocks):
        first = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        a, b, d, r = _locate_row(first, B, D, R)
        for _ in range(stop - first):
            for c in range(C):
                y[a, b, d, r, c] = store((load(x[a, b, d, r, c]) - shift[c]) * scale[c] + offset[c], y)
            a, b, d, r = _next_row(a, b, d, r, B, D, R)


# ----------------------------------------------------------------- backward


@njit(**_PARALLEL)
def grad_sums_runs(x, dy, mean, chunk):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` in float64, runs views."""
    C, A, B, D, M = x.shape
    total = A * B * D * M
    units = max((total + chunk - 1) // chunk, 1)
    partial_dy = np.zeros((C, units))
    partial_dy_xmu = np.zeros((C, units))
    for u in prange(C * units):
        c, k = divmod(np.int64(u), units)  # prange indices may be unsigned
        position = _part_start(k, total, units)
        stop = _part_start(k + 1, total, units)
        mu = mean[c]
        sum_dy = 0.0
        sum_dy_xmu = 0.0
        while position < stop:
            a, b, d, m_first = _locate_run(position, B, D, M)
            m_stop = min(M, m_first + stop - position)
            for m in range(m_first, m_stop):
                g = np.float64(load(dy[c, a, b, d, m]))
                sum_dy += g
                sum_dy_xmu += g * (np.float64(load(x[c, a, b, d, m])) - mu)
            position += m_stop - m_first
        partial_dy[c, k] = sum_dy
        partial_dy_xmu[c, k] = sum_dy_xmu
    return _sum_units(partial_dy), _sum_units(partial_dy_xmu)


@njit(**_PARALLEL)
def grad_sums_rows(x, dy, mean, blocks):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` in float64, rows views."""
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    blocks = max(min(blocks, rows), 1)
    partial_dy = np.zeros((blocks, C))
    partial_dy_xmu = np.zeros((blocks, C))
    for k in prange(blocks):
        first = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        a, b, d, r = _locate_row(first, B, D, R)
        for _ in range(stop - first):
            for c in range(C):
                g = np.float64(load(dy[a, b, d, r, c]))
                partial_dy[k, c] += g
                partial_dy_xmu[k, c] += g * (np.float64(load(x[a, b, d, r, c])) - mean[c])
            a, b, d, r = _next_row(a, b, d, r, B, D, R)
    return _sum_units(partial_dy.T), _sum_units(partial_dy_xmu.T)


@njit(**_SERIAL)
def _sum_units(partials):
    """Sum ``(channels, units)`` partials along units, in unit order."""
    channels, units = partials.shape
    total = np.zeros(channels)
    for c in range(channels):
        for k in range(units):
            total[c] += partials[c, k]
    return total


@njit(**_PARALLEL)
def grad_input_runs(x, dy, dx, shift, k_dy, k_x, k_const, chunk):
    """``dx = k_dy[c] * dy + k_x[c] * (x - shift[c]) + k_const[c]``, runs views."""
    C, A, B, D, M = x.shape
    total = A * B * D * M
    units = max((total + chunk - 1) // chunk, 1)
    for u in prange(C * units):
        c, k = divmod(np.int64(u), units)  # prange indices may be unsigned
        position = _part_start(k, total, units)
        stop = _part_start(k + 1, total, units)
        s, p, q, r = shift[c], k_dy[c], k_x[c], k_const[c]
        while position < stop:
            a, b, d, m_first = _locate_run(position, B, D, M)
            m_stop = min(M, m_first + stop - position)
            for m in range(m_first, m_stop):
                value = p * load(dy[c, a, b, d, m]) + q * (load(x[c, a, b, d, m]) - s) + r
                dx[c, a, b, d, m] = store(value, dx)
            position += m_stop - m_first


@njit(**_PARALLEL)
def grad_input_rows(x, dy, dx, shift, k_dy, k_x, k_const, blocks):
    """``dx = k_dy[c] * dy + k_x[c] * (x - shift[c]) + k_const[c]``, rows views."""
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    blocks = max(min(blocks, rows), 1)
    for k in prange(blocks):
        first = _part_start(np.int64(k), rows, blocks)
        stop = _part_start(np.int64(k) + 1, rows, blocks)
        a, b, d, r = _locate_row(first, B, D, R)
        for _ in range(stop - first):
            for c in range(C):
                value = (
                    k_dy[c] * load(dy[a, b, d, r, c])
                    + k_x[c] * (load(x[a, b, d, r, c]) - shift[c])
                    + k_const[c]
                )
                dx[a, b, d, r, c] = store(value, dx)
            a, b, d, r = _next_row(a, b, d, r, B, D, R)
