"""A slow, obviously-correct float64 NumPy reference for GroupNorm, InstanceNorm and LayerNorm.

Each operation is the textbook formula on whole arrays in float64: move the
channels first, reshape to (rows, values), two-pass mean and variance, and
the gradient ``dx = invstd * (g - mean(g) - xhat * mean(g * xhat))`` with
``g = dy * weight``. Shares no code with ``numba_bn``.
"""

import numpy as np


def _channels_first(a, channel_axis):
    a = np.asarray(a, dtype=np.float64)
    return a if channel_axis == 1 else np.moveaxis(a, -1, 1)


def _back(a, channel_axis):
    return a if channel_axis == 1 else np.moveaxis(a, 1, -1)


def _affine(shape, values, fill):
    return np.full(shape, fill) if values is None else np.asarray(values, dtype=np.float64)


def _rows_forward(rows, weight, bias, eps):
    """Normalise each row of ``rows`` (R, L); weight/bias broadcast against (R, L)."""
    mean = rows.mean(axis=1, keepdims=True)
    var = ((rows - mean) ** 2).mean(axis=1, keepdims=True)
    xhat = (rows - mean) / np.sqrt(var + eps)
    return xhat * weight + bias, mean[:, 0], var[:, 0]


def _rows_backward(rows, dy, weight, eps, batch_stats=True, mean=None, var=None):
    """``(dx, dy * xhat)`` of the row normalisation; rows, dy (R, L), weight broadcasting."""
    if mean is None:
        mean = rows.mean(axis=1)
        var = ((rows - mean[:, None]) ** 2).mean(axis=1)
    invstd = 1.0 / np.sqrt(var + eps)[:, None]
    xhat = (rows - mean[:, None]) * invstd
    g = dy * weight
    if batch_stats:
        dx = invstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    else:
        dx = invstd * g
    return dx, dy * xhat


def _group_rows(x, groups):
    n, c = x.shape[:2]
    return x.reshape(n * groups, c // groups * int(np.prod(x.shape[2:], dtype=np.int64)))


def _channel_weights(x, groups, vector):
    """A (C,) vector as the (rows, values) layout of ``_group_rows``."""
    n, c = x.shape[:2]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    per_value = np.repeat(vector.reshape(groups, c // groups), spatial, axis=1)
    return np.tile(per_value, (n, 1))


def group_norm(x, groups, weight=None, bias=None, eps=1e-5, channel_axis=1):
    """``(y, mean, var)`` with mean and var per (sample, group)."""
    x = _channels_first(x, channel_axis)
    c = x.shape[1]
    w = _channel_weights(x, groups, _affine(c, weight, 1.0))
    b = _channel_weights(x, groups, _affine(c, bias, 0.0))
    y, mean, var = _rows_forward(_group_rows(x, groups), w, b, eps)
    return _back(y.reshape(x.shape), channel_axis), mean, var


def group_norm_backward(x, dy, groups, weight=None, eps=1e-5, channel_axis=1):
    """``(grad_input, grad_weight, grad_bias)``."""
    x = _channels_first(x, channel_axis)
    dy = _channels_first(dy, channel_axis)
    n, c = x.shape[:2]
    w = _channel_weights(x, groups, _affine(c, weight, 1.0))
    dx, dy_xhat = _rows_backward(_group_rows(x, groups), _group_rows(dy, groups), w, eps)
    reduce_axes = (0,) + tuple(range(2, x.ndim))
    grad_weight = dy_xhat.reshape(x.shape).sum(axis=reduce_axes)
    grad_bias = dy.sum(axis=reduce_axes)
    return _back(dx.reshape(x.shape), channel_axis), grad_weight, grad_bias


def instance_norm(x, weight=None, bias=None, eps=1e-5, channel_axis=1, running=None):
    """``(y, mean, var)`` per (sample, channel); ``running=(mean, var)`` normalises with those instead."""
    x = _channels_first(x, channel_axis)
    c = x.shape[1]
    if running is None:
        return group_norm(_back(x, channel_axis), c, weight, bias, eps, channel_axis)
    shape = (1, c) + (1,) * (x.ndim - 2)
    mean, var = (np.asarray(v, dtype=np.float64).reshape(shape) for v in running)
    y = (x - mean) / np.sqrt(var + eps) * _affine(c, weight, 1.0).reshape(shape) + _affine(c, bias, 0.0).reshape(shape)
    return _back(y, channel_axis), None, None


def instance_norm_backward(x, dy, weight=None, eps=1e-5, channel_axis=1, running=None):
    x = _channels_first(x, channel_axis)
    dy = _channels_first(dy, channel_axis)
    c = x.shape[1]
    if running is None:
        return group_norm_backward(_back(x, channel_axis), _back(dy, channel_axis), c, weight, eps, channel_axis)
    n = x.shape[0]
    rows, grads = x.reshape(n * c, -1), dy.reshape(n * c, -1)
    mean, var = (np.tile(np.asarray(v, dtype=np.float64), n) for v in running)
    w = _channel_weights(x, c, _affine(c, weight, 1.0))
    dx, dy_xhat = _rows_backward(rows, grads, w, eps, batch_stats=False, mean=mean, var=var)
    reduce_axes = (0,) + tuple(range(2, x.ndim))
    return (_back(dx.reshape(x.shape), channel_axis), dy_xhat.reshape(x.shape).sum(axis=reduce_axes),
            dy.sum(axis=reduce_axes))


def instance_running(x, running_mean, running_var, momentum, channel_axis=1):
    """Running buffers after a training forward: the batch average of each instance's mean and unbiased variance."""
    x = _channels_first(x, channel_axis)
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes).mean(axis=0)
    var = x.var(axis=axes, ddof=1).mean(axis=0)
    return (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean, (
        (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var
    )


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    features = int(np.prod(normalized_shape))
    rows = x.reshape(x.size // features, features)
    w = _affine(features, weight, 1.0).reshape(-1)
    y, mean, var = _rows_forward(rows, w, _affine(features, bias, 0.0).reshape(-1), eps)
    return y.reshape(x.shape), mean, var


def layer_norm_backward(x, dy, normalized_shape, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    features = int(np.prod(normalized_shape))
    rows = x.reshape(x.size // features, features)
    grads = np.asarray(dy, dtype=np.float64).reshape(rows.shape)
    dx, dy_xhat = _rows_backward(rows, grads, _affine(features, weight, 1.0).reshape(-1), eps)
    shape = tuple(normalized_shape)
    return dx.reshape(x.shape), dy_xhat.sum(axis=0).reshape(shape), grads.sum(axis=0).reshape(shape)
