"""``numba.cuda`` kernels: per-channel statistics, normalisation and backward.

The same operations as ``cpu_kernels`` on the same 5-D views (see
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
parts in order, so many blocks share a channel (PyTorch uses one block per
channel) and results do not depend on scheduling.

Per-channel (O(C)) finishing kernels run one thread per channel and do, in
float64, what ``_core`` does with NumPy on the CPU.

This module imports ``numba.cuda``; import it only when CUDA is in use.
Kernels are compiled lazily (no signatures) on first launch.
"""

import math

import numpy as np
from numba import cuda, float64

_FULL_MASK = 0xFFFFFFFF
_WARP = 32


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


# ------------------------------------------------------------- merging


@cuda.jit(device=True)
def _chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) states (counts as float64)."""
    if count_b == 0.0:
        return count_a, mean_a, m2_a
    if count_a == 0.0:
        return count_b, mean_b, m2_b
    count = count_a + count_b
    delta = mean_b - mean_a
    weight_b = count_b / count
    return count, mean_a + delta * weight_b, m2_a + m2_b + delta * delta * (count_a * weight_b)


@cuda.jit(device=True)
def _shifted_sums_state(count, shift, sum_dev, sum_sq_dev):
    """(mean, M2) from sums of deviations from ``shift``; M2 clamped at 0, NaN kept."""
    if count == 0.0:
        return 0.0, 0.0
    mean = shift + sum_dev / count
    m2 = sum_sq_dev - sum_dev * sum_dev / count
    if m2 < 0.0:
        m2 = 0.0
    return mean, m2


@cuda.jit(device=True)
def _merge_block_states(shared, lane, j, stride, n, count, mean, m2, shuffle):
    """Merge the states of items ``lane + j * stride`` (j < n) of a block.

    Every thread of the block calls this once (it synchronises); thread
    ``(lane, j)`` brings its own state. Returns the merged state of its lane,
    valid in the threads with ``j == 0``. ``shared`` holds ``3 * n * stride``
    float64 values. With ``shuffle``, items inside one warp are merged with
    warp shuffles first (``stride`` must divide 32 and ``n * stride`` be a
    multiple of 32), so the shared-memory tree has 32 / stride times fewer levels.
    """
    threads = n * stride
    if shuffle:
        width = _WARP // stride  # items of one lane inside a warp
        offset = width // 2
        while offset > 0:
            other_count = cuda.shfl_down_sync(_FULL_MASK, count, offset * stride)
            other_mean = cuda.shfl_down_sync(_FULL_MASK, mean, offset * stride)
            other_m2 = cuda.shfl_down_sync(_FULL_MASK, m2, offset * stride)
            if j % width + offset < width:
                count, mean, m2 = _chan_merge(count, mean, m2, other_count, other_mean, other_m2)
            offset //= 2
        active = j % width == 0
        j //= width
        n //= width
    else:
        active = True
    if active:
        slot = lane + j * stride
        shared[slot] = count
        shared[threads + slot] = mean
        shared[2 * threads + slot] = m2
    cuda.syncthreads()
    step = 1
    while step < n:
        if active and j % (2 * step) == 0 and j + step < n:
            mine = lane + j * stride
            other = mine + step * stride
            merged = _chan_merge(
                shared[mine], shared[threads + mine], shared[2 * threads + mine],
                shared[other], shared[threads + other], shared[2 * threads + other],
            )
            shared[mine] = merged[0]
            shared[threads + mine] = merged[1]
            shared[2 * threads + mine] = merged[2]
        step *= 2
        cuda.syncthreads()
    result = shared[lane], shared[threads + lane], shared[2 * threads + lane]
    cuda.syncthreads()  # the caller may reuse ``shared`` right away
    return result


@cuda.jit(device=True)
def _sum_block_pairs(shared, lane, j, stride, n, first, second, shuffle):
    """Sum two values over the items ``lane + j * stride`` of a block (see above)."""
    threads = n * stride
    if shuffle:
        width = _WARP // stride
        offset = width // 2
        while offset > 0:
            other_first = cuda.shfl_down_sync(_FULL_MASK, first, offset * stride)
            other_second = cuda.shfl_down_sync(_FULL_MASK, second, offset * stride)
            if j % width + offset < width:
                first += other_first
                second += other_second
            offset //= 2
        active = j % width == 0
        j //= width
        n //= width
    else:
        active = True
    if active:
        shared[lane + j * stride] = first
        shared[threads + lane + j * stride] = second
    cuda.syncthreads()
    step = 1
    while step < n:
        if active and j % (2 * step) == 0 and j + step < n:
            mine = lane + j * stride
            other = mine + step * stride
            shared[mine] += shared[other]
            shared[threads + mine] += shared[threads + other]
        step *= 2
        cuda.syncthreads()
    result = shared[lane], shared[threads + lane]
    cuda.syncthreads()
    return result


# ---------------------------------------------------------- statistics


@cuda.jit
def channel_stats_runs(x, part_count, part_mean, part_m2, shuffle, splits):
    """Partial (count, mean, M2) per (channel, block part) of a ``(C, A, B, D, M)`` view."""
    shared = cuda.shared.array(0, float64)
    tx, _, TX, _, part, tile, parts, tiles = _block_ids()
    C, A, B, D, M = x.shape
    units = A * B * D * splits
    span = (M + splits - 1) // splits
    lanes, per_pass, sub, m0 = _run_lanes(tx, TX, span)
    step = parts * per_pass
    c = tile
    while c < C:
        count = 0.0
        shift = 0.0
        sum_dev = 0.0
        sum_sq_dev = 0.0
        unit = part * per_pass + sub
        if sub < per_pass and unit < units:
            a, b, d, seg = _locate_row(unit, B, D, splits)
            while unit < units:
                m = seg * span + m0
                stop = min(M, seg * span + span)
                while m < stop:
                    if count == 0.0:
                        shift = np.float64(x[c, a, b, d, m])
                    dev = np.float64(x[c, a, b, d, m]) - shift
                    sum_dev += dev
                    sum_sq_dev += dev * dev
                    count += 1.0
                    m += lanes
                unit += step
                a, b, d, seg = _carry(a, b, d, seg + step, B, D, splits)
        mean, m2 = _shifted_sums_state(count, shift, sum_dev, sum_sq_dev)
        count, mean, m2 = _merge_block_states(shared, 0, tx, 1, TX, count, mean, m2, shuffle)
        if tx == 0:
            part_count[c, part] = count
            part_mean[c, part] = mean
            part_m2[c, part] = m2
        c += tiles


@cuda.jit
def channel_stats_rows(x, part_count, part_mean, part_m2, shuffle):
    """Partial (count, mean, M2) per (channel, block part) of an ``(A, B, D, R, C)`` view."""
    shared = cuda.shared.array(0, float64)
    tx, ty, TX, TY, part, tile, parts, tiles = _block_ids()
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    step = parts * TY
    while tile * TX < C:
        c = tile * TX + tx
        count = 0.0
        shift = 0.0
        sum_dev = 0.0
        sum_sq_dev = 0.0
        row = part * TY + ty
        if c < C and row < rows:
            a, b, d, r = _locate_row(row, B, D, R)
            shift = np.float64(x[a, b, d, r, c])
            while row < rows:
                dev = np.float64(x[a, b, d, r, c]) - shift
                sum_dev += dev
                sum_sq_dev += dev * dev
                count += 1.0
                row += step
                a, b, d, r = _carry(a, b, d, r + step, B, D, R)
        mean, m2 = _shifted_sums_state(count, shift, sum_dev, sum_sq_dev)
        count, mean, m2 = _merge_block_states(shared, tx, ty, TX, TY, count, mean, m2, shuffle)
        if ty == 0 and c < C:
            part_count[c, part] = count
            part_mean[c, part] = mean
            part_m2[c, part] = m2
        tile += tiles


# -------------------------------------------------------- normalisation


@cuda.jit
def normalize_runs(x, y, shift, scale, offset, splits):
    """``y = (x - shift[c]) * scale[c] + offset[c]`` on ``(C, A, B, D, M)`` views."""
    tx, _, TX, _, part, tile, parts, tiles = _block_ids()
    C, A, B, D, M = x.shape
    units = A * B * D * splits
    span = (M + splits - 1) // splits
    lanes, per_pass, sub, m0 = _run_lanes(tx, TX, span)
    step = parts * per_pass
    c = tile
    while c < C:
        s, g, o = shift[c], scale[c], offset[c]
        unit = part * per_pass + sub
        if sub < per_pass and unit < units:
            a, b, d, seg = _locate_row(unit, B, D, splits)
            while unit < units:
                m = seg * span + m0
                stop = min(M, seg * span + span)
                while m < stop:
                    y[c, a, b, d, m] = (x[c, a, b, d, m] - s) * g + o
                    m += lanes
                unit += step
                a, b, d, seg = _carry(a, b, d, seg + step, B, D, splits)
        c += tiles


@cuda.jit
def normalize_rows(x, y, shift, scale, offset):
    """``y = (x - shift[c]) * scale[c] + offset[c]`` on ``(A, B, D, R, C)`` views."""
    tx, ty, TX, TY, part, tile, parts, tiles = _block_ids()
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    step = parts * TY
    while tile * TX < C:
        c = tile * TX + tx
        row = part * TY + ty
        if c < C and row < rows:
            s, g, o = shift[c], scale[c], offset[c]
            a, b, d, r = _locate_row(row, B, D, R)
            while row < rows:
                y[a, b, d, r, c] = (x[a, b, d, r, c] - s) * g + o
                row += step
                a, b, d, r = _carry(a, b, d, r + step, B, D, R)
        tile += tiles


# ------------------------------------------------------------- backward


@cuda.jit
def grad_sums_runs(x, dy, mean, part_dy, part_dy_xmu, shuffle, splits):
    """Partial float64 ``sum(dy)`` and ``sum(dy * (x - mean))`` per (channel, part), runs views."""
    shared = cuda.shared.array(0, float64)
    tx, _, TX, _, part, tile, parts, tiles = _block_ids()
    C, A, B, D, M = x.shape
    units = A * B * D * splits
    span = (M + splits - 1) // splits
    lanes, per_pass, sub, m0 = _run_lanes(tx, TX, span)
    step = parts * per_pass
    c = tile
    while c < C:
        mu = mean[c]
        sum_dy = 0.0
        sum_dy_xmu = 0.0
        unit = part * per_pass + sub
        if sub < per_pass and unit < units:
            a, b, d, seg = _locate_row(unit, B, D, splits)
            while unit < units:
                m = seg * span + m0
                stop = min(M, seg * span + span)
                while m < stop:
                    g = np.float64(dy[c, a, b, d, m])
                    sum_dy += g
                    sum_dy_xmu += g * (np.float64(x[c, a, b, d, m]) - mu)
                    m += lanes
                unit += step
                a, b, d, seg = _carry(a, b, d, seg + step, B, D, splits)
        sum_dy, sum_dy_xmu = _sum_block_pairs(shared, 0, tx, 1, TX, sum_dy, sum_dy_xmu, shuffle)
        if tx == 0:
            part_dy[c, part] = sum_dy
            part_dy_xmu[c, part] = sum_dy_xmu
        c += tiles


@cuda.jit
def grad_sums_rows(x, dy, mean, part_dy, part_dy_xmu, shuffle):
    """Partial float64 ``sum(dy)`` and ``sum(dy * (x - mean))`` per (channel, part), rows views."""
    shared = cuda.shared.array(0, float64)
    tx, ty, TX, TY, part, tile, parts, tiles = _block_ids()
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    step = parts * TY
    while tile * TX < C:
        c = tile * TX + tx
        sum_dy = 0.0
        sum_dy_xmu = 0.0
        row = part * TY + ty
        if c < C and row < rows:
            mu = mean[c]
            a, b, d, r = _locate_row(row, B, D, R)
            while row < rows:
                g = np.float64(dy[a, b, d, r, c])
                sum_dy += g
                sum_dy_xmu += g * (np.float64(x[a, b, d, r, c]) - mu)
                row += step
                a, b, d, r = _carry(a, b, d, r + step, B, D, R)
        sum_dy, sum_dy_xmu = _sum_block_pairs(shared, tx, ty, TX, TY, sum_dy, sum_dy_xmu, shuffle)
        if ty == 0 and c < C:
            part_dy[c, part] = sum_dy
            part_dy_xmu[c, part] = sum_dy_xmu
        tile += tiles


@cuda.jit
def grad_input_runs(x, dy, dx, shift, k_dy, k_x, k_const, splits):
    """``dx = k_dy[c] * dy + k_x[c] * (x - shift[c]) + k_const[c]`` on runs views."""
    tx, _, TX, _, part, tile, parts, tiles = _block_ids()
    C, A, B, D, M = x.shape
    units = A * B * D * splits
    span = (M + splits - 1) // splits
    lanes, per_pass, sub, m0 = _run_lanes(tx, TX, span)
    step = parts * per_pass
    c = tile
    while c < C:
        s, kd, kx, k0 = shift[c], k_dy[c], k_x[c], k_const[c]
        unit = part * per_pass + sub
        if sub < per_pass and unit < units:
            a, b, d, seg = _locate_row(unit, B, D, splits)
            while unit < units:
                m = seg * span + m0
                stop = min(M, seg * span + span)
                while m < stop:
                    dx[c, a, b, d, m] = kd * dy[c, a, b, d, m] + kx * (x[c, a, b, d, m] - s) + k0
                    m += lanes
                unit += step
                a, b, d, seg = _carry(a, b, d, seg + step, B, D, splits)
        c += tiles


@cuda.jit
def grad_input_rows(x, dy, dx, shift, k_dy, k_x, k_const):
    """``dx = k_dy[c] * dy + k_x[c] * (x - shift[c]) + k_const[c]`` on rows views."""
    tx, ty, TX, TY, part, tile, parts, tiles = _block_ids()
    A, B, D, R, C = x.shape
    rows = A * B * D * R
    step = parts * TY
    while tile * TX < C:
        c = tile * TX + tx
        row = part * TY + ty
        if c < C and row < rows:
            s, kd, kx, k0 = shift[c], k_dy[c], k_x[c], k_const[c]
            a, b, d, r = _locate_row(row, B, D, R)
            while row < rows:
                dx[a, b, d, r, c] = kd * dy[a, b, d, r, c] + kx * (x[a, b, d, r, c] - s) + k0
                row += step
                a, b, d, r = _carry(a, b, d, r + step, B, D, R)
        tile += tiles


@cuda.jit
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
        target[p, q, s, t, u] = source[p, q, s, t, u]
        start += step


# ------------------------------------------- per-channel finishing (O(C))


@cuda.jit(device=True)
def _inverse_std(var, eps):
    """``1 / sqrt(var + eps)`` as NumPy gives it: inf for 0, NaN for negative or NaN."""
    total = var + eps
    if total > 0.0:
        return 1.0 / math.sqrt(total)
    if total == 0.0:
        return math.inf
    return math.nan


@cuda.jit
def merge_stat_parts(part_count, part_mean, part_m2, mean, m2):
    """Merge each channel's partial states, in part order, into float64 ``mean`` and ``m2``."""
    C, parts = part_mean.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        count, mu, q = 0.0, 0.0, 0.0
        for k in range(parts):
            count, mu, q = _chan_merge(count, mu, q, part_count[c, k], part_mean[c, k], part_m2[c, k])
        mean[c] = mu
        m2[c] = q


@cuda.jit
def forward_coefficients(
    mean, var, m2, count, eps, weight, bias, invstd, shift, scale, offset, mean_out, weight_out
):
    """Elementwise coefficients, and the float64 vectors backward needs.

    The variance is ``var[c]`` (running buffers, ``m2`` None) or
    ``m2[c] / count`` (batch statistics, ``var`` None); ``mean`` is float64 or a
    running buffer. As in ``_core.forward``: ``shift`` is the mean rounded to
    the compute dtype, ``scale = invstd * weight``,
    ``offset = bias - (mean - shift) * scale``. ``mean_out`` and
    ``weight_out`` (or None) receive float64 copies of the mean and weight.
    """
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        mu = np.float64(mean[c])
        if mean_out is not None:
            mean_out[c] = mu
        if weight_out is not None:
            weight_out[c] = weight[c]
        # Each None test names the argument it guards: only those are resolved at compile time.
        variance = 0.0
        if m2 is not None:
            variance = m2[c] / count
        if var is not None:
            variance = np.float64(var[c])
        inv = _inverse_std(variance, eps)
        invstd[c] = inv
        shift[c] = mu
        g = inv
        if weight is not None:
            g = inv * np.float64(weight[c])
        o = -(mu - np.float64(shift[c])) * g
        if bias is not None:
            o += np.float64(bias[c])
        scale[c] = g
        offset[c] = o


@cuda.jit
def update_running(running_mean, running_var, mean, m2, count, factor):
    """Blend the batch mean and unbiased variance into the running buffers in place."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        unbiased = m2[c] / (count - 1.0)
        running_mean[c] = (1.0 - factor) * np.float64(running_mean[c]) + factor * mean[c]
        running_var[c] = (1.0 - factor) * np.float64(running_var[c]) + factor * unbiased


@cuda.jit
def biased_variance(mean, m2, count, mean_out, var_out):
    """``batch_stats``'s results: the mean and ``m2 / count`` in the output dtype."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        mean_out[c] = mean[c]
        var_out[c] = m2[c] / count


@cuda.jit
def backward_coefficients(
    part_dy, part_dy_xmu, mean, invstd, weight, count, grad_weight, grad_bias, shift, k_dy, k_x, k_const
):
    """Sum the partial gradient sums and derive ``grad_input``'s coefficients.

    ``part_dy`` is None when no sums are needed (eval mode without affine).
    ``grad_weight``/``grad_bias`` (or None) receive ``sum(dy * xhat)`` and
    ``sum(dy)``. With batch statistics ``dx = k_dy * dy + k_x * (x - shift)
    + k_const``; with constant statistics ``dx = k_dy * dy`` (``shift``,
    ``k_x`` and ``k_const`` are then None). None arguments are resolved at
    compile time, so each combination compiles to straight-line code.
    """
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        inv = invstd[c]
        kd = inv
        if weight is not None:
            kd = inv * weight[c]
        k_dy[c] = kd
        if part_dy is not None:
            sum_dy = 0.0
            sum_dy_xmu = 0.0
            for k in range(part_dy.shape[1]):
                sum_dy += part_dy[c, k]
                sum_dy_xmu += part_dy_xmu[c, k]
            sum_dy_xhat = sum_dy_xmu * inv
            if grad_weight is not None:
                grad_weight[c] = sum_dy_xhat
            if grad_bias is not None:
                grad_bias[c] = sum_dy
            if k_x is not None:
                mu = mean[c]
                shift[c] = mu
                kx = -kd * inv * sum_dy_xhat / count
                k_x[c] = kx
                k_const[c] = -kd * sum_dy / count - kx * (mu - np.float64(shift[c]))
