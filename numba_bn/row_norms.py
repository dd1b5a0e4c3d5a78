"""The steps that GroupNorm, InstanceNorm and LayerNorm share between their modules and functions.

Each operation checks its input, describes it as rows (``_row_layout``) and
hands it to the row backend of its device (``_row_backend``). The modules
(``norm_modules``) and the functions (``norm_functional``) differ only in who
owns the parameters and running buffers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._dtypes import PARAMETER_DTYPES, native_dtype
from ._row_layout import group_rows, layer_rows
from ._validation import check_float_dtype, describe_type


def check_param(backend, name, value, shape, dtype=None, writeable=False):
    """A parameter or buffer of ``backend``'s device with exactly ``shape`` (and ``dtype`` when given)."""
    value = backend.as_array(name, value)
    if dtype is not None:
        if value.dtype != dtype:
            raise TypeError(f"expected {name} of dtype {dtype}, got {value.dtype}")
    else:
        check_float_dtype(name, value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"expected {name} of shape {tuple(shape)}, got {tuple(value.shape)}")
    if writeable and isinstance(value, np.ndarray) and not value.flags.writeable:
        raise ValueError(f"expected {name} to be writeable (it is updated in place), got a read-only array")
    return value


def check_groups(num_groups, num_channels):
    """``num_groups`` divides ``num_channels`` (both positive ints), as PyTorch requires."""
    for name, value in (("num_groups", num_groups), ("num_channels", num_channels)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"expected {name} to be an int, got {describe_type(value)}")
        if value < 1:
            raise ValueError(f"expected {name} >= 1, got {value}")
    if num_channels % num_groups:
        raise ValueError(
            f"expected num_channels divisible by num_groups, got num_channels ({num_channels}) "
            f"not divisible by num_groups ({num_groups})"
        )
    return int(num_groups), int(num_channels)


def check_normalized_shape(normalized_shape):
    """LayerNorm's ``normalized_shape`` (an int or a sequence of positive ints) as a tuple."""
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, (bool, np.bool_)):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(normalized_shape)
    except TypeError:
        raise TypeError(
            f"expected normalized_shape to be an int or a tuple of ints, got {describe_type(normalized_shape)}"
        ) from None
    for size in shape:
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"expected normalized_shape to hold ints, got {describe_type(size)} in {shape!r}")
        if size < 1:
            raise ValueError(f"expected normalized_shape of positive sizes, got {shape}")
    if not shape:
        raise ValueError("expected normalized_shape with one or more axes, got ()")
    return tuple(int(size) for size in shape)


def group_channels(x, channel_axis):
    """``(channels, axis)`` of a ``(N, C, *)`` or ``(N, *, C)`` input of 2 or more dimensions."""
    if x.ndim < 2:
        raise ValueError(f"expected input with 2 or more dimensions (N, C, *), got {x.ndim}D input")
    axis = 1 if channel_axis == 1 else x.ndim - 1
    return x.shape[axis], axis


def spatial_size(x, axis):
    """Values per (sample, channel): the product of the axes other than the batch and channel axes."""
    return math.prod(n for i, n in enumerate(x.shape) if i not in (0, axis))


def check_spatial_size(x, axis):
    """Instance statistics need two or more values per (sample, channel) (PyTorch's check)."""
    if spatial_size(x, axis) <= 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")


def check_layer_input(x, normalized_shape):
    """``x`` ends with ``normalized_shape``."""
    k = len(normalized_shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != normalized_shape:
        raise ValueError(
            f"expected input with shape (*, {', '.join(map(str, normalized_shape))}) for "
            f"normalized_shape={normalized_shape}, got input of shape {tuple(x.shape)}"
        )


def check_weight_dtype(name, value, x):
    """A parameter given to a function: float32 or float64 (float16 data takes float32 parameters too)."""
    if value is not None and native_dtype(value) not in PARAMETER_DTYPES + (native_dtype(x),):
        raise TypeError(f"expected {name} of dtype float32 or float64, got {value.dtype}")


def group_forward(rows, x, num_groups, weight, bias, eps, channel_axis, save):
    """``(y, statistics, saved)`` of GroupNorm over a checked input."""
    return rows.forward_rows(x, group_rows(tuple(x.shape), num_groups, channel_axis), weight, bias, eps, save=save)


def layer_forward(rows, x, normalized_ndim, weight, bias, eps, save):
    """``(y, statistics, saved)`` of LayerNorm over a checked input."""
    return rows.forward_rows(x, layer_rows(tuple(x.shape), normalized_ndim), weight, bias, eps, save=save)


def instance_forward(rows, x, channels, weight, bias, eps, channel_axis, running, save):
    """``(y, statistics, saved)`` of InstanceNorm: the rows' own statistics, or ``running``
    ``(mean, var)`` host float64 vectors used as constants."""
    geometry = group_rows(tuple(x.shape), channels, channel_axis)
    given = None
    if running is not None:
        mean, var = running
        samples = x.shape[0]
        invstd = _inverse_std(var, eps)
        given = tuple(rows.from_host(np.tile(values, samples), np.float64) for values in (mean, invstd))
    return rows.forward_rows(x, geometry, weight, bias, eps, given=given, save=save)


def _inverse_std(var, eps):
    """``1 / sqrt(var + eps)`` as NumPy gives it (inf for 0, NaN for negative), without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(var + eps)


def instance_running_update(rows, statistics, samples, channels, values, running_mean, running_var, factor):
    """The running buffers after a training forward, as host float64 ``(mean, var)``: PyTorch blends each
    instance's mean and unbiased variance and averages the blends over the batch."""
    mean = rows.to_host(statistics.mean).reshape(samples, channels)
    var = rows.to_host(statistics.var).reshape(samples, channels)
    with np.errstate(divide="ignore", invalid="ignore"):
        unbiased = var * (values / (values - 1.0))
    blended_mean = (1.0 - factor) * running_mean + factor * mean.mean(axis=0)
    blended_var = (1.0 - factor) * running_var + factor * unbiased.mean(axis=0)
    return blended_mean, blended_var


def warn_channel_mismatch(axis):
    warnings.warn(
        f"input's size at dim={axis} does not match num_features. You can silence this warning by not passing in "
        "num_features, which is not used because affine=False",
        UserWarning,
        stacklevel=4,
    )
