"""Per-channel (O(C)) arithmetic on the GPU: the shared formulas compiled as device functions.

``numba_bn._formulas`` holds each formula, and each step's work on one
channel, once; this module compiles them with ``cuda.jit(device=True)`` and
runs them in small kernels with one thread per channel, under the names
``numba_bn/cpu/channel_math.py`` uses on the CPU, so a training step never
waits for the host. All arithmetic is float64. An absent weight or bias is a
zero-length array: every argument is an array or a number, as the launcher
requires on a real GPU. Partial sums from several blocks per channel arrive
as ``(C, parts)`` arrays, partial statistics as ``(3, C, parts)`` states,
and are combined in part order here. A training forward's per-channel work
is one kernel, ``batch_coefficients`` (merge, coefficients, running
buffers), where the CPU, which merges inside its reduction and has no
launches to save, calls ``forward_coefficients`` and ``update_running``.
"""

import numpy as np

from .. import _formulas
from .numba_cuda import cuda, kernel

formulas = _formulas.compiled_for(cuda.jit(device=True))


@cuda.jit(device=True)
def _sum_parts(part_dy, part_dy_xmu, c):
    """Channel ``c``'s totals of the partial ``sum(dy)`` and ``sum(dy * (x - mean))``, in part order."""
    sum_dy = 0.0
    sum_dy_xmu = 0.0
    for k in range(part_dy.shape[1]):
        sum_dy += part_dy[c, k]
        sum_dy_xmu += part_dy_xmu[c, k]
    return sum_dy, sum_dy_xmu


@cuda.jit(device=True)
def _merged_parts(parts, c):
    """Channel ``c``'s ``(mean, M2)``: its ``parts[:, c, k]`` states ``(count, mean, M2)`` merged in part order."""
    count, mu, q = 0.0, 0.0, 0.0
    for k in range(parts.shape[2]):
        count, mu, q = formulas.chan_merge(count, mu, q, parts[0, c, k], parts[1, c, k], parts[2, c, k])
    return mu, q


@kernel
def merge_stat_parts(parts, mean, m2):
    """Merge each channel's ``(3, C, parts)`` partial states, in part order, into float64 ``mean``, ``m2``."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        mean[c], m2[c] = _merged_parts(parts, c)


@kernel
def forward_coefficients(mean, spread, divisor, eps, weight, bias, residual_factor, saved, coefficients):
    """Coefficients of ``y = (x - shift) * scale + offset + residual_factor * residual`` and the vectors
    backward needs (``_formulas.forward_channel``)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        formulas.forward_channel(c, mean, spread, divisor, eps, weight, bias, saved, coefficients)
        coefficients[3, c] = residual_factor


@kernel
def batch_coefficients(
    parts, mean, m2, count, eps, weight, bias, residual_factor, running_mean, running_var, factor, previous, saved,
    coefficients,
):
    """A training forward's whole per-channel step, in one launch.

    The batch's mean and M2 come from ``parts``, the statistics kernel's
    ``(3, C, parts)`` per-block ``(count, mean, M2)`` states merged here in
    part order (Chan's formula), or from ``mean`` and ``m2`` when ``parts``
    has no part (statistics merged elsewhere, e.g. across processes).
    ``count`` is the batch's values per channel (NaN for an empty batch).
    Writes ``forward_coefficients``' coefficients and saved vectors, and,
    unless ``running_mean`` is empty, blends the batch's mean and unbiased
    variance into the running buffers (``factor``: the momentum or the
    cumulative average's 1 / batches), keeping their previous values in
    ``previous`` rows for :func:`restore_running`.
    """
    for c in range(cuda.grid(1), coefficients.shape[1], cuda.gridsize(1)):
        if parts.shape[2] > 0:
            mu, q = _merged_parts(parts, c)
        else:
            mu, q = np.float64(mean[c]), np.float64(m2[c])
        formulas.normalizing_channel(c, mu, q / count, eps, weight, bias, saved, coefficients)
        coefficients[3, c] = residual_factor
        if running_mean.shape[0]:
            previous[0, c] = running_mean[c]
            previous[1, c] = running_var[c]
            formulas.blend_running_channel(
                c, running_mean, running_var, mu, formulas.unbiased_variance(q, count), factor
            )


@kernel
def restore_running(previous, running_mean, running_var):
    """Put back the running buffers' values from before ``batch_coefficients`` blended them: a later
    step of the same forward failed, and a call that raises changes nothing."""
    for c in range(cuda.grid(1), running_mean.shape[0], cuda.gridsize(1)):
        running_mean[c] = previous[0, c]
        running_var[c] = previous[1, c]


@kernel
def backward_coefficients(part_dy, part_dy_xmu, mean, invstd, weight, count, sums, coefficients):
    """Coefficients of ``dx = (x - shift) * k_x + k_const + k_dy * dy`` and the weight and bias
    gradients, from the partial sums (``_formulas.backward_channel``)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        sum_dy, sum_dy_xmu = _sum_parts(part_dy, part_dy_xmu, c)
        formulas.backward_channel(c, sum_dy, sum_dy_xmu, mean, invstd, weight, count, sums, coefficients)


@kernel
def sum_parts(part_dy, part_dy_xmu, totals):
    """``totals`` rows receive each channel's ``sum(dy)`` and ``sum(dy * (x - mean))``, in part order."""
    for c in range(cuda.grid(1), part_dy.shape[0], cuda.gridsize(1)):
        totals[0, c], totals[1, c] = _sum_parts(part_dy, part_dy_xmu, c)


@kernel
def weight_grads(part_dy, part_dy_xmu, invstd, sums):
    """``sums`` rows receive ``sum(dy * xhat)`` and ``sum(dy)`` (constant statistics)."""
    for c in range(cuda.grid(1), invstd.shape[0], cuda.gridsize(1)):
        sum_dy, sum_dy_xmu = _sum_parts(part_dy, part_dy_xmu, c)
        formulas.weight_grads_channel(c, sum_dy, sum_dy_xmu, invstd, sums)


@kernel
def grad_scale(invstd, weight, k_dy):
    """``k_dy = invstd * weight``: the whole backward when the statistics were constants."""
    for c in range(cuda.grid(1), invstd.shape[0], cuda.gridsize(1)):
        k_dy[c] = invstd[c] * weight[c]


@kernel
def mean_and_variance(mean, m2, count, out):
    """``out`` rows receive the mean and the biased variance ``m2 / count`` (its dtype)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        formulas.mean_and_variance_channel(c, mean, m2, count, out)
