"""Per-channel (O(C)) arithmetic on the CPU: the shared formulas compiled by ``njit``.

``numba_bn._formulas`` holds each formula, and each step's work on one
channel, once; this module compiles them for the CPU and loops them over the
channels, as ``numba_bn/cuda/channel_math.py`` does on the GPU with one
thread per channel, under the same names. One compiled call per step costs
one dispatch instead of a dozen small NumPy operations, which dominate small
inputs. Serial and IEEE-exact (no fast-math): all arithmetic is float64, and
NumPy's error model gives NaN/Inf where a division by zero happens. Vectors
arrive as native float32 or float64; a zero-length ``weight``/``bias``
stands for "absent".
"""

from numba import njit

from .. import _formulas

_OPTIONS = dict(cache=True, error_model="numpy")

formulas = _formulas.compiled_for(njit(**_OPTIONS))


@njit(**_OPTIONS)
def forward_coefficients(mean, spread, divisor, eps, weight, bias, saved, coefficients):
    """Coefficients of ``y = (x - shift) * scale + offset`` and the vectors backward needs
    (``_formulas.forward_channel``)."""
    for c in range(mean.shape[0]):
        formulas.forward_channel(c, mean, spread, divisor, eps, weight, bias, saved, coefficients)


@njit(**_OPTIONS)
def update_running(running_mean, running_var, mean, m2, count, factor):
    """Blend the batch mean and unbiased variance into the running buffers, in place."""
    for c in range(mean.shape[0]):
        formulas.update_running_channel(c, running_mean, running_var, mean, m2, count, factor)


@njit(**_OPTIONS)
def backward_coefficients(sum_dy, sum_dy_xmu, mean, invstd, weight, count, sums, coefficients):
    """Coefficients of ``dx = (x - shift) * k_x + k_const + k_dy * dy`` and the weight and bias
    gradients, from the per-channel totals (``_formulas.backward_channel``)."""
    for c in range(mean.shape[0]):
        formulas.backward_channel(c, sum_dy[c], sum_dy_xmu[c], mean, invstd, weight, count, sums, coefficients)


@njit(**_OPTIONS)
def weight_grads(sum_dy, sum_dy_xmu, invstd, sums):
    """``sums`` rows receive ``sum(dy * xhat)`` and ``sum(dy)`` (constant statistics)."""
    for c in range(invstd.shape[0]):
        formulas.weight_grads_channel(c, sum_dy[c], sum_dy_xmu[c], invstd, sums)


@njit(**_OPTIONS)
def grad_scale(invstd, weight, k_dy):
    """``k_dy = invstd * weight``: the whole backward when the statistics were constants."""
    for c in range(invstd.shape[0]):
        k_dy[c] = invstd[c] * weight[c]


@njit(**_OPTIONS)
def mean_and_variance(mean, m2, count, out):
    """``out`` rows receive the mean and the biased variance ``m2 / count`` (its dtype)."""
    for c in range(mean.shape[0]):
        formulas.mean_and_variance_channel(c, mean, m2, count, out)
