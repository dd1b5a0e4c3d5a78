"""Per-channel (O(C)) arithmetic on the GPU: the shared formulas compiled as device functions.

``numba_bn._formulas`` holds each formula, and each step's work on one
channel, once; this module compiles them with ``cuda.jit(device=True)`` and
runs them in small kernels with one thread per channel, under the names
``numba_bn/cpu/channel_math.py`` uses on the CPU, so a training step never
waits for the host. All arithmetic is float64. An absent weight or bias is a
zero-length array: every argument is an array or a number, as the launcher
requires on a real GPU. Partial sums from several blocks per channel arrive
as ``(C, parts)`` arrays and are summed in part order here.
"""

from .. import _formulas
from .numba_cuda import cuda

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


@cuda.jit
def merge_stat_parts(part_count, part_mean, part_m2, mean, m2):
    """Merge each channel's ``(channel, part)`` partial states, in part order, into float64 ``mean``, ``m2``."""
    C, parts = part_mean.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        count, mu, q = 0.0, 0.0, 0.0
        for k in range(parts):
            count, mu, q = formulas.chan_merge(count, mu, q, part_count[c, k], part_mean[c, k], part_m2[c, k])
        mean[c] = mu
        m2[c] = q


@cuda.jit
def forward_coefficients(mean, spread, divisor, eps, weight, bias, saved, coefficients):
    """Coefficients of ``y = (x - shift) * scale + offset`` and the vectors backward needs
    (``_formulas.forward_channel``)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        formulas.forward_channel(c, mean, spread, divisor, eps, weight, bias, saved, coefficients)


@cuda.jit
def update_running(running_mean, running_var, mean, m2, count, factor):
    """Blend the batch mean and unbiased variance into the running buffers, in place."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        formulas.update_running_channel(c, running_mean, running_var, mean, m2, count, factor)


@cuda.jit
def backward_coefficients(part_dy, part_dy_xmu, mean, invstd, weight, count, sums, coefficients):
    """Coefficients of ``dx = (x - shift) * k_x + k_const + k_dy * dy`` and the weight and bias
    gradients, from the partial sums (``_formulas.backward_channel``)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        sum_dy, sum_dy_xmu = _sum_parts(part_dy, part_dy_xmu, c)
        formulas.backward_channel(c, sum_dy, sum_dy_xmu, mean, invstd, weight, count, sums, coefficients)


@cuda.jit
def sum_parts(part_dy, part_dy_xmu, totals):
    """``totals`` rows receive each channel's ``sum(dy)`` and ``sum(dy * (x - mean))``, in part order."""
    for c in range(cuda.grid(1), part_dy.shape[0], cuda.gridsize(1)):
        totals[0, c], totals[1, c] = _sum_parts(part_dy, part_dy_xmu, c)


@cuda.jit
def weight_grads(part_dy, part_dy_xmu, invstd, sums):
    """``sums`` rows receive ``sum(dy * xhat)`` and ``sum(dy)`` (constant statistics)."""
    for c in range(cuda.grid(1), invstd.shape[0], cuda.gridsize(1)):
        sum_dy, sum_dy_xmu = _sum_parts(part_dy, part_dy_xmu, c)
        formulas.weight_grads_channel(c, sum_dy, sum_dy_xmu, invstd, sums)


@cuda.jit
def grad_scale(invstd, weight, k_dy):
    """``k_dy = invstd * weight``: the whole backward when the statistics were constants."""
    for c in range(cuda.grid(1), invstd.shape[0], cuda.gridsize(1)):
        k_dy[c] = invstd[c] * weight[c]


@cuda.jit
def mean_and_variance(mean, m2, count, out):
    """``out`` rows receive the mean and the biased variance ``m2 / count`` (its dtype)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        formulas.mean_and_variance_channel(c, mean, m2, count, out)
