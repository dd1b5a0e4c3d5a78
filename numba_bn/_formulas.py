"""Per-channel formulas of batch normalisation, written once for every device.

Plain Python functions: the formulas on float64 scalars, and the work of one
channel of each per-channel step on arrays (``*_channel``). ``compiled_for``
compiles all of them for one target - ``cpu/channel_math.py`` with
``numba.njit``, ``cuda/channel_math.py`` with ``numba.cuda.jit(device=True)`` -
so the CPU and the GPU evaluate the same expressions in the same order and
cannot drift apart; the devices only differ in how they loop over channels.
The functions branch where the targets' error models differ (``1 / sqrt(0)``
raises in Python and in the CUDA simulator, gives inf in NumPy and on a GPU),
and convert with ``np.float64`` (which keeps float64 in the simulator too).
"""

import math
import types

import numpy as np


def inverse_std(variance, eps):
    """``1 / sqrt(variance + eps)`` as NumPy gives it: inf for 0, NaN for negative or NaN."""
    total = variance + eps
    if total > 0.0:
        return 1.0 / math.sqrt(total)
    if total == 0.0:
        return math.inf
    return math.nan


def scale_and_offset(mean, shift, invstd, weight, bias):
    """``(scale, offset)`` of ``y = (x - shift) * scale + offset``.

    That is ``(x - mean) * invstd * weight + bias`` with ``shift`` the mean
    rounded to the data's compute dtype: ``x - shift`` is then small and
    exact in float32, and ``offset`` carries the rounding error of the mean.
    An absent weight is 1.0 and an absent bias 0.0.
    """
    scale = invstd * weight
    return scale, bias - (mean - shift) * scale


def blend(running, batch, factor):
    """A running statistic after one batch: ``(1 - factor) * running + factor * batch``."""
    return (1.0 - factor) * running + factor * batch


def unbiased_variance(m2, count):
    """The sample variance from a sum of squared deviations and a count (a float)."""
    return m2 / (count - 1.0)


def shifted_sums_state(count, shift, sum_dev, sum_sq_dev):
    """``(mean, M2)`` from sums of deviations from ``shift`` over ``count`` values.

    M2 is clamped at 0 (rounding can take it below), NaN is kept; a count of
    0 gives the empty state (0, 0).
    """
    if count == 0.0:
        return 0.0, 0.0
    mean = shift + sum_dev / count
    m2 = sum_sq_dev - sum_dev * sum_dev / count
    if m2 < 0.0:
        m2 = 0.0
    return mean, m2


def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s merge of two ``(count, mean, M2)`` states; a count of 0 is the identity."""
    if count_b == 0.0:
        return count_a, mean_a, m2_a
    if count_a == 0.0:
        return count_b, mean_b, m2_b
    count = count_a + count_b
    delta = mean_b - mean_a
    weight_b = count_b / count
    return count, mean_a + delta * weight_b, m2_a + m2_b + delta * delta * (count_a * weight_b)


def grad_coefficients(mean, shift, invstd, weight, count, sum_dy, sum_dy_xmu):
    """``(k_dy, k_x, k_const, sum_dy_xhat)`` of a backward through batch statistics.

    ``dx = k_dy * dy + k_x * (x - shift) + k_const`` equals PyTorch's
    ``w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``; ``shift`` is
    the mean rounded to the compute dtype (as in :func:`scale_and_offset`).
    ``sum_dy_xhat`` is the weight's gradient.
    """
    k_dy = invstd * weight
    sum_dy_xhat = sum_dy_xmu * invstd
    k_x = -k_dy * invstd * sum_dy_xhat / count
    k_const = -k_dy * sum_dy / count - k_x * (mean - shift)
    return k_dy, k_x, k_const, sum_dy_xhat


# --------------------------------------------------- one channel of a step
# ``c`` is the channel; vectors are float64 unless said otherwise.


def forward_channel(c, mean, spread, divisor, eps, weight, bias, saved, coefficients):
    """Channel ``c`` of the forward's coefficients, and float64 copies for backward.

    The variance is ``spread[c] / divisor`` (M2 and the count, or a running
    variance and 1); ``mean`` and ``spread`` may have any float dtype. See
    :func:`normalizing_channel`.
    """
    normalizing_channel(c, np.float64(mean[c]), np.float64(spread[c]) / divisor, eps, weight, bias, saved, coefficients)


def normalizing_channel(c, mean, variance, eps, weight, bias, saved, coefficients):
    """Channel ``c`` of the forward's coefficients from its float64 ``mean`` and ``variance``.

    ``weight`` and ``bias`` may have any float dtype, and a zero-length one
    is absent. ``saved`` rows receive the mean, the inverse standard
    deviation and the weight (1 when absent); ``coefficients`` rows receive
    shift (the mean rounded to the compute dtype of ``coefficients``), scale
    and offset.
    """
    invstd = inverse_std(variance, eps)
    w = np.float64(weight[c]) if weight.shape[0] else 1.0
    b = np.float64(bias[c]) if bias.shape[0] else 0.0
    coefficients[0, c] = mean  # rounded to the compute dtype on store
    scale, offset = scale_and_offset(mean, np.float64(coefficients[0, c]), invstd, w, b)
    coefficients[1, c] = scale
    coefficients[2, c] = offset
    saved[0, c] = mean
    saved[1, c] = invstd
    saved[2, c] = w


def update_running_channel(c, running_mean, running_var, mean, m2, count, factor):
    """Blend channel ``c``'s batch mean and unbiased variance into the running buffers (any float dtype)."""
    blend_running_channel(c, running_mean, running_var, mean[c], unbiased_variance(m2[c], count), factor)


def blend_running_channel(c, running_mean, running_var, mean, unbiased_var, factor):
    """Blend a batch's float64 ``mean`` and ``unbiased_var`` into channel ``c`` of the running buffers."""
    running_mean[c] = blend(np.float64(running_mean[c]), mean, factor)
    running_var[c] = blend(np.float64(running_var[c]), unbiased_var, factor)


def backward_channel(c, sum_dy, sum_dy_xmu, mean, invstd, weight, count, sums, coefficients):
    """Channel ``c`` of a backward through batch statistics, from its totals ``sum(dy)``, ``sum(dy * (x - mean))``.

    ``sums`` rows receive ``sum(dy * xhat)`` and ``sum(dy)`` (the weight's and
    bias's gradients); ``coefficients`` rows receive shift, k_x, k_const and
    k_dy of ``dx = (x - shift) * k_x + k_const + k_dy * dy`` (the first three
    in the places of the forward's shift, scale and offset, so that one
    elementwise kernel computes both).
    """
    coefficients[0, c] = mean[c]  # rounded to the compute dtype on store
    k_dy, k_x, k_const, sum_dy_xhat = grad_coefficients(
        mean[c], np.float64(coefficients[0, c]), invstd[c], weight[c], count, sum_dy, sum_dy_xmu
    )
    coefficients[1, c] = k_x
    coefficients[2, c] = k_const
    coefficients[3, c] = k_dy
    sums[0, c] = sum_dy_xhat
    sums[1, c] = sum_dy


def weight_grads_channel(c, sum_dy, sum_dy_xmu, invstd, sums):
    """Channel ``c``'s ``sum(dy * xhat)`` and ``sum(dy)`` into ``sums`` rows, when the statistics were constants."""
    sums[0, c] = sum_dy_xmu * invstd[c]
    sums[1, c] = sum_dy


def mean_and_variance_channel(c, mean, m2, count, out):
    """Channel ``c``'s mean and biased variance ``m2 / count`` into ``out`` rows (its dtype)."""
    out[0, c] = mean[c]
    out[1, c] = m2[c] / count


_FORMULAS = (
    inverse_std, scale_and_offset, blend, unbiased_variance, shifted_sums_state, chan_merge, grad_coefficients,
    normalizing_channel, forward_channel, blend_running_channel, update_running_channel, backward_channel,
    weight_grads_channel, mean_and_variance_channel,
)


def compiled_for(compile_function):
    """Every formula compiled by ``compile_function``, calling one another's compiled versions.

    ``compile_function`` is a decorator such as ``numba.njit(...)`` or
    ``numba.cuda.jit(device=True)``. A compiled function resolves the names
    it calls in its globals, where these plain functions are not callable
    from compiled code; so each is compiled from a copy whose globals map
    every formula to its compiled twin. Returns a module of them, which
    compiled code can call into (``formulas.chan_merge(...)``).
    """
    namespace = {"math": math, "np": np}
    compiled = types.ModuleType(__name__ + ".compiled", compiled_for.__doc__)
    for function in _FORMULAS:
        copy = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__)
        copy.__qualname__ = function.__qualname__
        copy.__module__ = function.__module__
        copy.__doc__ = function.__doc__
        namespace[function.__name__] = compile_function(copy)
        setattr(compiled, function.__name__, namespace[function.__name__])
    return compiled
