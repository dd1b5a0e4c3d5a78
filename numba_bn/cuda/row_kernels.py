"""``numba.cuda`` kernels of the row normalisations: GroupNorm, InstanceNorm and LayerNorm.

The twin of ``numba_bn/cpu/row_kernels.py`` on the same description of the
input (``numba_bn/_row_layout.py``): a C-contiguous array read as
``(N, G, A, B)`` rows, flattened to 1-D. The CPU's ``forward`` and
``backward`` are each a few launches here:

* forward: ``row_stat_parts`` (one block per (row, piece): thread-local
  shifted float64 sums turned into (count, mean, M2) states, merged in a fixed
  shared-memory tree with Chan's formula), ``merge_row_parts`` (one thread per
  row: the pieces in order), ``row_normalize`` (elementwise);
* backward: ``row_grad_parts`` (block sums of ``w * dy`` and
  ``w * dy * (x - mean)``), ``row_grad_terms`` (one thread per row),
  ``row_grad_input`` (elementwise) and, for the affine, ``row_weight_grads``
  (one block per weight index).

Several blocks share a long row (the pieces), so a few large groups still fill
the GPU; results depend on the launch geometry alone, never on scheduling.
Per-row vectors and the affine's vectors are float64. Kernels are compiled
lazily (no signatures); every argument is an array or a number.
"""

from numba import float64

from .channel_math import formulas
from .numba_cuda import cuda, kernel


@cuda.jit(device=True)
def _tree_merge(shared, t, T, count, mean, m2):
    """The block's ``(count, mean, M2)``: every thread's state Chan-merged in a fixed tree (T a power of two)."""
    shared[t] = count
    shared[T + t] = mean
    shared[2 * T + t] = m2
    cuda.syncthreads()
    half = T // 2
    while half > 0:
        if t < half:
            c, m, q = formulas.chan_merge(
                shared[t], shared[T + t], shared[2 * T + t],
                shared[t + half], shared[T + t + half], shared[2 * T + t + half],
            )
            shared[t] = c
            shared[T + t] = m
            shared[2 * T + t] = q
        cuda.syncthreads()
        half //= 2
    result = shared[0], shared[T], shared[2 * T]
    cuda.syncthreads()  # the next use of shared memory waits for every thread's read
    return result


@cuda.jit(device=True)
def _tree_sum(shared, t, T, first, second):
    """The block's totals of two float64 values, added in a fixed tree."""
    shared[t] = first
    shared[T + t] = second
    cuda.syncthreads()
    half = T // 2
    while half > 0:
        if t < half:
            shared[t] += shared[t + half]
            shared[T + t] += shared[T + t + half]
        cuda.syncthreads()
        half //= 2
    result = shared[0], shared[T]
    cuda.syncthreads()
    return result


@cuda.jit(device=True)
def _offset(r, i, G, B, sN, sG, sA):
    """Element offset of flat value ``i`` of row ``r``."""
    n = r // G
    g = r - n * G
    a = i // B
    b = i - a * B
    return n * sN + g * sG + a * sA + b


@cuda.jit(device=True)
def _weight_index(r, i, G, B, wg, wa, wb):
    """The affine's index of flat value ``i`` of row ``r``."""
    g = r - (r // G) * G
    a = i // B
    b = i - a * B
    return g * wg + a * wa + b * wb


@cuda.jit(device=True)
def _piece(p, L, parts):
    """``[start, stop)`` of piece ``p`` when a row of ``L`` values is cut into ``parts`` near-equal pieces."""
    quotient = L // parts
    remainder = L - quotient * parts
    start = p * quotient + min(p, remainder)
    return start, start + quotient + (1 if p < remainder else 0)


@kernel
def row_stat_parts(x, rows, G, B, sN, sG, sA, L, states):
    """``states[r, p]``: count, mean and M2 of piece ``p`` of row ``r`` (grid x: pieces; grid y: rows)."""
    shared = cuda.shared.array(0, float64)
    t = cuda.threadIdx.x
    T = cuda.blockDim.x
    p = cuda.blockIdx.x
    parts = cuda.gridDim.x
    start, stop = _piece(p, L, parts)
    r = cuda.blockIdx.y
    while r < rows:
        count, shift, first, second = 0.0, 0.0, 0.0, 0.0
        i = start + t
        if i < stop:
            shift = float64(x[_offset(r, i, G, B, sN, sG, sA)])
        while i < stop:
            d = float64(x[_offset(r, i, G, B, sN, sG, sA)]) - shift
            first += d
            second += d * d
            count += 1.0
            i += T
        mean, m2 = formulas.shifted_sums_state(count, shift, first, second)
        merged = _tree_merge(shared, t, T, count, mean, m2)
        if t == 0:
            states[r, p, 0], states[r, p, 1], states[r, p, 2] = merged
        r += cuda.gridDim.y


@kernel
def merge_row_parts(states, eps, mean, var, invstd):
    """Each row's pieces merged in piece order into its float64 mean, biased variance and inverse std."""
    for r in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        count, mu, q = 0.0, 0.0, 0.0
        for p in range(states.shape[1]):
            count, mu, q = formulas.chan_merge(count, mu, q, states[r, p, 0], states[r, p, 1], states[r, p, 2])
        if count > 0.0:
            mean[r] = mu
            var[r] = q / count
            invstd[r] = formulas.inverse_std(q / count, eps)


@kernel
def row_normalize(x, out, G, B, sN, sG, sA, L, wg, wa, wb, weight, bias, mean, invstd):
    """``out = (x - mean) * invstd * weight + bias`` over every value of every row."""
    total = mean.shape[0] * L
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        r = e // L
        i = e - r * L
        at = _offset(r, i, G, B, sN, sG, sA)
        k = _weight_index(r, i, G, B, wg, wa, wb)
        out[at] = (float64(x[at]) - mean[r]) * invstd[r] * weight[k] + bias[k]


@kernel
def row_grad_parts(x, dy, rows, G, B, sN, sG, sA, L, wg, wa, wb, weight, mean, sums):
    """``sums[r, p]``: ``sum(w * dy)`` and ``sum(w * dy * (x - mean))`` over piece ``p`` of row ``r``."""
    shared = cuda.shared.array(0, float64)
    t = cuda.threadIdx.x
    T = cuda.blockDim.x
    p = cuda.blockIdx.x
    start, stop = _piece(p, L, cuda.gridDim.x)
    r = cuda.blockIdx.y
    while r < rows:
        first, second = 0.0, 0.0
        i = start + t
        while i < stop:
            at = _offset(r, i, G, B, sN, sG, sA)
            g = float64(dy[at]) * weight[_weight_index(r, i, G, B, wg, wa, wb)]
            first += g
            second += g * (float64(x[at]) - mean[r])
            i += T
        totals = _tree_sum(shared, t, T, first, second)
        if t == 0:
            sums[r, p, 0], sums[r, p, 1] = totals
        r += cuda.gridDim.y


@kernel
def row_grad_terms(sums, mean, invstd, batch, L, terms):
    """Each row's ``k_x`` and ``k_const`` of ``dx = invstd * w * dy + k_x * (x - mean) + k_const``:
    the gradient through the row's own mean and variance (zero when they were constants)."""
    for r in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        total_dy, total_dyx = 0.0, 0.0
        for p in range(sums.shape[1]):
            total_dy += sums[r, p, 0]
            total_dyx += sums[r, p, 1]
        if batch:
            inv = invstd[r]
            terms[r, 0] = -inv * inv * inv * total_dyx / L
            terms[r, 1] = -inv * total_dy / L
        else:
            terms[r, 0] = 0.0
            terms[r, 1] = 0.0


@kernel
def row_grad_input(x, dy, dx, G, B, sN, sG, sA, L, wg, wa, wb, weight, mean, invstd, terms):
    """``dx = invstd * w * dy + k_x * (x - mean) + k_const`` over every value of every row."""
    total = mean.shape[0] * L
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        r = e // L
        i = e - r * L
        at = _offset(r, i, G, B, sN, sG, sA)
        k = _weight_index(r, i, G, B, wg, wa, wb)
        value = invstd[r] * weight[k] * float64(dy[at]) + terms[r, 0] * (float64(x[at]) - mean[r]) + terms[r, 1]
        dx[at] = value


@kernel
def row_weight_grads(x, dy, samples, G, A, B, sN, sG, sA, wg, wb, mean, invstd, grad_weight, grad_bias):
    """Per weight index ``c`` (one block each): ``sum(dy * xhat)`` and ``sum(dy)`` over every value it scales.

    A per-channel index (``wb == 0``) scales ``B`` values of each sample; a
    per-value one (``wb == 1``) one value in each of the ``A`` segments.
    """
    shared = cuda.shared.array(0, float64)
    t = cuda.threadIdx.x
    T = cuda.blockDim.x
    span = B if wb == 0 else A
    c = cuda.blockIdx.x
    while c < grad_weight.shape[0]:
        if wb == 0:
            g = c // wg
            a = c - g * wg
            b = 0
        else:
            g = c // wg if wg > 0 else 0
            b = c - g * wg
            a = 0
        first, second = 0.0, 0.0
        for j in range(t, samples * span, T):
            n = j // span
            k = j - n * span
            if wb == 0:
                at = n * sN + g * sG + a * sA + k
            else:
                at = n * sN + g * sG + k * sA + b
            r = n * G + g
            d = float64(dy[at])
            first += d * (float64(x[at]) - mean[r]) * invstd[r]
            second += d
        totals = _tree_sum(shared, t, T, first, second)
        if t == 0:
            grad_weight[c], grad_bias[c] = totals
        c += cuda.gridDim.x
