"""A slow, obviously-correct float64 NumPy reference for batch normalisation.

Everything here is the textbook formula written with whole-array NumPy
operations in float64 (two-pass variance via ``np.mean``), with an explicit
``channel_axis``. It is the oracle for ``test_against_reference.py``; it shares
no code with ``numba_bn``.
"""

import numpy as np


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def _reduce_axes(x, channel_axis):
    """All axes of ``x`` except the channel axis."""
    axis = channel_axis % x.ndim
    return tuple(i for i in range(x.ndim) if i != axis)


def _per_channel(vector, x, channel_axis):
    """Reshape a ``(C,)`` vector so that it broadcasts along ``x``'s channel axis."""
    shape = [1] * x.ndim
    shape[channel_axis % x.ndim] = x.shape[channel_axis % x.ndim]
    return np.asarray(vector, dtype=np.float64).reshape(shape)


def ref_batch_stats(x, channel_axis):
    """Per-channel ``(mean, biased variance, count)``; ``x`` must not be empty."""
    x = _f64(x)
    axes = _reduce_axes(x, channel_axis)
    count = x.size // x.shape[channel_axis % x.ndim]
    mean = np.mean(x, axis=axes)
    var = np.mean((x - _per_channel(mean, x, channel_axis)) ** 2, axis=axes)
    return mean, var, count


def ref_forward(x, mean, var, weight, bias, eps, channel_axis):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel (weight/bias may be None)."""
    x = _f64(x)
    y = (x - _per_channel(mean, x, channel_axis)) / np.sqrt(_per_channel(var, x, channel_axis) + eps)
    if weight is not None:
        y = y * _per_channel(weight, x, channel_axis)
    if bias is not None:
        y = y + _per_channel(bias, x, channel_axis)
    return y


def ref_running_update(running_mean, running_var, mean, var_biased, count, momentum_factor):
    """New ``(running_mean, running_var)``: blend in the mean and the UNBIASED variance."""
    running_mean, running_var = _f64(running_mean), _f64(running_var)
    if count == 0:
        return running_mean, running_var
    f = momentum_factor
    var_unbiased = _f64(var_biased) * count / (count - 1)
    return (1 - f) * running_mean + f * _f64(mean), (1 - f) * running_var + f * var_unbiased


def ref_backward_train(x, dy, weight, eps, channel_axis):
    """``(dx, dweight, dbias)`` when the forward normalised with the batch's own statistics.

    y = xhat * w + b with xhat = (x - mean) / sqrt(var + eps), where mean and
    var depend on x:  dx = invstd / n * (n * g - sum(g) - xhat * sum(g * xhat)),
    g = dy * w.
    """
    x, dy = _f64(x), _f64(dy)
    axes = _reduce_axes(x, channel_axis)
    mean, var, n = ref_batch_stats(x, channel_axis)
    invstd = 1.0 / np.sqrt(_per_channel(var, x, channel_axis) + eps)
    xhat = (x - _per_channel(mean, x, channel_axis)) * invstd
    g = dy if weight is None else dy * _per_channel(weight, x, channel_axis)
    sum_g = np.sum(g, axis=axes, keepdims=True)
    sum_g_xhat = np.sum(g * xhat, axis=axes, keepdims=True)
    dx = invstd / n * (n * g - sum_g - xhat * sum_g_xhat)
    return dx, np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)


def ref_backward_eval(x, dy, running_mean, running_var, weight, eps, channel_axis):
    """``(dx, dweight, dbias)`` when the forward normalised with constant running statistics."""
    x, dy = _f64(x), _f64(dy)
    axes = _reduce_axes(x, channel_axis)
    invstd = 1.0 / np.sqrt(_per_channel(running_var, x, channel_axis) + eps)
    xhat = (x - _per_channel(running_mean, x, channel_axis)) * invstd
    dx = dy * invstd if weight is None else dy * invstd * _per_channel(weight, x, channel_axis)
    return dx, np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)


class RefBatchNorm:
    """The module's state machine in float64: modes, flags, buffers, counter, gradients.

    Mirrors ``torch.nn.BatchNormNd``: training (or not tracking) normalises
    with batch statistics; training while tracking increments the counter
    first and then blends the statistics in with ``momentum`` or, for
    ``momentum=None``, ``1 / num_batches_tracked``. An empty batch leaves the
    buffers alone but still counts.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, bias=True, channel_axis=1):
        c = num_features
        self.eps, self.momentum, self.channel_axis = eps, momentum, channel_axis
        self.affine, self.track_running_stats = affine, track_running_stats
        self.training = True
        self.weight = np.ones(c) if affine else None
        self.bias = np.zeros(c) if affine and bias else None
        if track_running_stats:
            self.running_mean, self.running_var, self.num_batches_tracked = np.zeros(c), np.ones(c), 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.grad_weight = self.grad_bias = None
        self._last = None  # (x, used batch statistics?, running mean, running var, weight)

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x):
        x = _f64(x)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            if x.size == x.shape[self.channel_axis % x.ndim]:
                raise ValueError("Expected more than 1 value per channel when training")
            if x.size:
                mean, var, count = ref_batch_stats(x, self.channel_axis)
        else:
            mean, var = self.running_mean, self.running_var
        self._last = (x, use_batch, _f64(self.running_mean), _f64(self.running_var), _f64(self.weight))
        y = np.empty(x.shape) if x.size == 0 else ref_forward(
            x, mean, var, self.weight, self.bias, self.eps, self.channel_axis)
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            f = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
            if x.size:
                self.running_mean, self.running_var = ref_running_update(
                    self.running_mean, self.running_var, mean, var, count, f)
        return y

    __call__ = forward

    def backward(self, dy):
        x, use_batch, rm, rv, weight = self._last
        channels = x.shape[self.channel_axis % x.ndim]
        if x.size == 0:
            dx, dw, db = np.empty(x.shape), np.zeros(channels), np.zeros(channels)
        elif use_batch:
            dx, dw, db = ref_backward_train(x, dy, weight, self.eps, self.channel_axis)
        else:
            dx, dw, db = ref_backward_eval(x, dy, rm, rv, weight, self.eps, self.channel_axis)
        if self.affine:
            self.grad_weight = dw
            self.grad_bias = db if self.bias is not None else None
        return dx


# ------------------------------------------- fused activation and residual


def ref_relu_mask(pre):
    """Where the ReLU passes its gradient: ``not pre <= 0``, as PyTorch's ReLU backward decides
    (ties at exactly 0 give False, NaN gives True)."""
    with np.errstate(invalid="ignore"):
        return ~(np.asarray(pre) <= 0)


def ref_relu(pre):
    """``max(pre, 0)`` with NaN kept as NaN (``torch.relu(nan)`` is NaN)."""
    pre = np.asarray(pre, dtype=np.float64)
    return np.where(ref_relu_mask(pre), pre, 0.0)


def ref_fused_pre_activation(x, mean, var, weight, bias, eps, channel_axis, residual=None):
    """``bn(x) + residual``: what the ReLU receives (``residual`` may be None)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y = ref_forward(x, mean, var, weight, bias, eps, channel_axis)
        return y if residual is None else y + _f64(residual)


def ref_fused_forward(x, mean, var, weight, bias, eps, channel_axis, residual=None, relu=False):
    """``relu(bn(x) + residual)`` (or without the ReLU, or without the residual) with the
    normalising statistics ``mean``/``var`` (batch or running ones)."""
    pre = ref_fused_pre_activation(x, mean, var, weight, bias, eps, channel_axis, residual)
    return ref_relu(pre) if relu else pre


def _through_activation(pre, dy, residual, relu):
    """``(gradient reaching bn(x), grad_residual or None)``: ``dy`` masked by the ReLU, if any."""
    dy = _f64(dy)
    g = np.where(ref_relu_mask(pre), dy, 0.0) if relu else dy.copy()
    return g, (None if residual is None else g.copy())


def ref_fused_backward_train(x, dy, weight, eps, channel_axis, residual=None, relu=False, *, bias=None):
    """``(grad_input, grad_residual or None, grad_weight, grad_bias)`` of ``relu(bn(x) + residual)``
    after a forward with the batch's own statistics.

    The ReLU's mask is recomputed here in float64 from the batch statistics
    (``bias`` is needed for it; None means 0); then the plain batch-norm
    backward runs on the masked gradient.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean, var, _ = ref_batch_stats(x, channel_axis)
        pre = ref_fused_pre_activation(x, mean, var, weight, bias, eps, channel_axis, residual)
        g, grad_residual = _through_activation(pre, dy, residual, relu)
        dx, dw, db = ref_backward_train(x, g, weight, eps, channel_axis)
    return dx, grad_residual, dw, db


def ref_fused_backward_eval(x, dy, running_mean, running_var, weight, eps, channel_axis, residual=None,
                            relu=False, *, bias=None):
    """``(grad_input, grad_residual or None, grad_weight, grad_bias)`` of ``relu(bn(x) + residual)``
    after a forward with the (constant) running statistics."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pre = ref_fused_pre_activation(x, running_mean, running_var, weight, bias, eps, channel_axis, residual)
        g, grad_residual = _through_activation(pre, dy, residual, relu)
        dx, dw, db = ref_backward_eval(x, g, running_mean, running_var, weight, eps, channel_axis)
    return dx, grad_residual, dw, db
