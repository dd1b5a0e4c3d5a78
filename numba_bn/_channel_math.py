"""O(C) per-channel arithmetic of the forward, running update and backward.

Compiled (serial, IEEE-exact: no fast-math) so that a call costs one dispatch
instead of a dozen small NumPy operations, which dominate small inputs. All
arithmetic is float64; a zero-length ``weight``/``bias`` stands for "absent".
Vectors arrive as native float32 or float64.
NumPy's error model gives NaN/Inf where a division by zero happens, as the
NumPy formulas did.
"""

import numpy as np
from numba import njit

_OPTIONS = dict(cache=True, error_model="numpy")


@njit(**_OPTIONS)
def normalization(mean, spread, divisor, weight, bias, eps, out):
    """Coefficients of ``y = (x - shift) * scale + offset``; float64 (mean, invstd, weight) copies.

    The variance is ``spread / divisor`` (M2 and count, or a variance and 1).
    ``out`` rows 0, 1, 2 receive shift, scale and offset in the compute dtype;
    ``shift`` is the mean rounded to that dtype, so ``x - shift`` is small and
    exact and ``offset`` carries the rounding error of the mean.
    """
    channels = mean.size
    mean64 = np.empty(channels)
    invstd = np.empty(channels)
    weight64 = np.empty(weight.size)
    for c in range(channels):
        mean64[c] = mean[c]
        invstd[c] = 1.0 / np.sqrt(np.float64(spread[c]) / divisor + eps)
        scale = invstd[c]
        if weight.size:
            weight64[c] = weight[c]
            scale *= weight64[c]
        out[0, c] = mean64[c]  # rounded to the compute dtype on store
        offset = -(mean64[c] - np.float64(out[0, c])) * scale
        if bias.size:
            offset += np.float64(bias[c])
        out[1, c] = scale
        out[2, c] = offset
    return mean64, invstd, weight64


@njit(**_OPTIONS)
def blend_running(running_mean, running_var, count, mean, m2, factor):
    """``running = (1 - factor) * running + factor * batch``, unbiased variance, in place."""
    for c in range(mean.size):
        unbiased = m2[c] / (count - 1)
        running_mean[c] = (1.0 - factor) * np.float64(running_mean[c]) + factor * mean[c]
        running_var[c] = (1.0 - factor) * np.float64(running_var[c]) + factor * unbiased


@njit(**_OPTIONS)
def input_gradient(mean, invstd, weight, count, sum_dy, sum_dy_xmu, out):
    """Coefficients of ``dx = k_dy * dy + k_x * (x - shift) + k_const``; returns sum(dy * xhat).

    ``out`` rows 0..3 receive shift, k_dy, k_x and k_const in the compute dtype.
    """
    channels = mean.size
    sum_dy_xhat = np.empty(channels)
    for c in range(channels):
        k_dy = invstd[c] * weight[c] if weight.size else invstd[c]
        sum_dy_xhat[c] = sum_dy_xmu[c] * invstd[c]
        k_x = -k_dy * invstd[c] * sum_dy_xhat[c] / count
        out[0, c] = mean[c]  # rounded to the compute dtype on store
        out[1, c] = k_dy
        out[2, c] = k_x
        out[3, c] = -k_dy * sum_dy[c] / count - k_x * (mean[c] - np.float64(out[0, c]))
    return sum_dy_xhat
