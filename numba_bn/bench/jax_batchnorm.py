"""BatchNorm written in JAX and compiled with ``jax.jit``: the benchmark's JAX peer.

The formulas are PyTorch's: the training forward normalises with the batch's
mean and biased variance and updates the running buffers with the unbiased
one; the backward is the closed form PyTorch's ``native_batch_norm_backward``
evaluates from the mean and ``1/sqrt(var + eps)`` the forward saved. The
fused forms compute ``relu(bn(x) + z)`` and its gradients, the ReLU's mask
taken from the forward's output as autograd does.

Arithmetic is float32 (float16 data is widened first, as PyTorch's CPU
kernels do); full-size results have the input's dtype, per-channel ones the
parameters'. Each function takes ``axes``, the reduced axes (all but the
channel axis), as a static argument: one compiled program per layout and rank.

Importing this module imports jax. Only the JAX implementation's ``prepare``
in :mod:`numba_bn.bench.implementations` does, so neither ``import numba_bn``
nor the benchmark harness loads jax unless JAX is compared.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

#: The dtype of all arithmetic.
COMPUTE = jnp.float32


def _per_channel(vector, x, axes: tuple[int, ...]):
    """A ``(C,)`` vector shaped to broadcast against ``x`` along its channel axis."""
    return vector.reshape([1 if axis in axes else size for axis, size in enumerate(x.shape)])


def _count(x, axes: tuple[int, ...]) -> int:
    """Values per channel (known when the program is traced)."""
    count = 1
    for axis in axes:
        count *= x.shape[axis]
    return count


def _mean_and_var(values, axes: tuple[int, ...]):
    """Mean and biased variance per channel, keeping the reduced axes; two passes for accuracy."""
    mean = jnp.mean(values, axis=axes, keepdims=True)
    centred = values - mean
    return mean, jnp.mean(centred * centred, axis=axes, keepdims=True)


def _finish(x, normalised, residual):
    """``normalised`` (float32), plus ``residual`` and through a ReLU when there is one, in ``x``'s dtype."""
    if residual is not None:
        normalised = jnp.maximum(normalised + residual.astype(COMPUTE), 0)
    return normalised.astype(x.dtype)


def _normalise(values, mean, invstd, weight, bias, axes: tuple[int, ...]):
    scale = invstd * _per_channel(weight, values, axes)
    return (values - mean) * scale + _per_channel(bias, values, axes)


@partial(jax.jit, static_argnames=("axes", "eps", "momentum"))
def train_forward(x, weight, bias, running_mean, running_var, residual=None, *,
                  axes: tuple[int, ...], eps: float, momentum: float):
    """A training forward: ``(y, new running_mean, new running_var)``.

    ``y`` is ``bn(x)``, or ``relu(bn(x) + residual)`` when ``residual`` is
    given. The running buffers are returned updated (JAX arrays are
    immutable), with the unbiased variance.
    """
    values = x.astype(COMPUTE)
    mean, var = _mean_and_var(values, axes)
    y = _finish(x, _normalise(values, mean, jax.lax.rsqrt(var + eps), weight, bias, axes), residual)
    count = _count(x, axes)
    new_mean = (1 - momentum) * running_mean + momentum * mean.reshape(running_mean.shape)
    unbiased = var.reshape(running_var.shape) * (count / (count - 1))
    new_var = (1 - momentum) * running_var + momentum * unbiased
    return y, new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


@partial(jax.jit, static_argnames=("axes", "eps"))
def eval_forward(x, weight, bias, running_mean, running_var, *, axes: tuple[int, ...], eps: float):
    """An evaluation forward: ``bn(x)`` with the running statistics."""
    mean = _per_channel(running_mean.astype(COMPUTE), x, axes)
    invstd = jax.lax.rsqrt(_per_channel(running_var.astype(COMPUTE), x, axes) + eps)
    return _finish(x, _normalise(x.astype(COMPUTE), mean, invstd, weight, bias, axes), None)


@partial(jax.jit, static_argnames=("axes", "eps"))
def saved_statistics(x, *, axes: tuple[int, ...], eps: float):
    """What a training forward keeps for its backward: ``(mean, 1/sqrt(var + eps))``, broadcastable to ``x``."""
    mean, var = _mean_and_var(x.astype(COMPUTE), axes)
    return mean, jax.lax.rsqrt(var + eps)


def _batch_norm_backward(grad, values, mean, invstd, weight, axes: tuple[int, ...]):
    """``(grad_input, grad_weight, grad_bias)`` in float32 from the float32 gradient of ``bn(x)``."""
    count = _count(values, axes)
    normalised = (values - mean) * invstd
    grad_bias = jnp.sum(grad, axis=axes, keepdims=True)
    grad_weight = jnp.sum(grad * normalised, axis=axes, keepdims=True)
    grad_input = (_per_channel(weight, values, axes) * invstd
                  * (grad - grad_bias / count - normalised * (grad_weight / count)))
    return grad_input, grad_weight.reshape(weight.shape), grad_bias.reshape(weight.shape)


@partial(jax.jit, static_argnames=("axes",))
def train_backward(grad_output, x, mean, invstd, weight, *, axes: tuple[int, ...]):
    """The backward of a training forward: ``(grad_input, grad_weight, grad_bias)``."""
    grad_input, grad_weight, grad_bias = _batch_norm_backward(
        grad_output.astype(COMPUTE), x.astype(COMPUTE), mean, invstd, weight, axes)
    return grad_input.astype(x.dtype), grad_weight.astype(weight.dtype), grad_bias.astype(weight.dtype)


@partial(jax.jit, static_argnames=("axes",))
def train_backward_add_relu(grad_output, y, x, mean, invstd, weight, *, axes: tuple[int, ...]):
    """The backward of ``y = relu(bn(x) + z)``: ``(grad_input, grad_residual, grad_weight, grad_bias)``.

    ``y`` is the forward's output: the gradient passes where it is positive.
    """
    grad_residual = jnp.where(y > 0, grad_output, jnp.zeros_like(grad_output))
    grad_input, grad_weight, grad_bias = _batch_norm_backward(
        grad_residual.astype(COMPUTE), x.astype(COMPUTE), mean, invstd, weight, axes)
    return (grad_input.astype(x.dtype), grad_residual,
            grad_weight.astype(weight.dtype), grad_bias.astype(weight.dtype))
