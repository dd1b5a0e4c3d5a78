"""Folding an evaluation-mode BatchNorm into the convolution or linear layer before it.

For inference, ``bn(conv(x))`` with running statistics is one affine map per
output channel after the layer: ``scale = bn.weight / sqrt(running_var + eps)``
multiplies the layer's weight along its output-channel axis, and the bias
becomes ``(bias - running_mean) * scale + bn.bias``. The folded layer then
does the work of both, with no BatchNorm pass at all (what PyTorch's
``torch.nn.utils.fusion`` and ONNX Runtime's Conv-BN fusion do).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._dtypes import PARAMETER_DTYPES
from ._state import host_array
from ._typing import Array
from ._validation import check_ndarray, check_real, describe_type


def _batchnorm_vectors(bn, eps):
    """``(running_mean, running_var, weight or None, bias or None, eps)`` as float64 host arrays."""
    from .modules import _BatchNorm

    if isinstance(bn, _BatchNorm):
        if not bn.track_running_stats:
            raise ValueError(
                "expected a module with running statistics (track_running_stats=True) to fold, got one without"
            )
        if bn.training:
            raise ValueError(
                "expected a module in evaluation mode to fold (its running statistics are what it normalises "
                "with then), got one in training mode: call bn.eval() first"
            )
        state = bn.state_dict()
        eps = bn.eps if eps is None else eps
    elif isinstance(bn, Mapping):
        state = bn
        if eps is None:
            raise ValueError("expected eps with a state dict (it is not part of one), got None; e.g. eps=1e-5")
    else:
        raise TypeError(f"expected bn to be a numba_bn BatchNorm module or a state dict, got {describe_type(bn)}")
    eps = check_real("eps", eps, minimum=0.0)
    missing = [key for key in ("running_mean", "running_var") if key not in state]
    if missing:
        raise ValueError(f"expected the state dict to hold {missing} to fold, got keys {sorted(state)}")
    vectors = {}
    for key in ("running_mean", "running_var", "weight", "bias"):
        value = state.get(key)
        if value is None:
            vectors[key] = None
            continue
        array = host_array(key, value)
        if array.ndim != 1:
            raise ValueError(f"expected {key} of shape (C,), got {array.shape}")
        vectors[key] = array.astype(np.float64)
    channels = vectors["running_mean"].shape[0]
    for key, array in vectors.items():
        if array is not None and array.shape != (channels,):
            raise ValueError(f"expected {key} of shape ({channels},) like running_mean, got {array.shape}")
    return vectors["running_mean"], vectors["running_var"], vectors["weight"], vectors["bias"], float(eps)


def _checked_layer(weight, bias, out_axis, channels):
    weight = check_ndarray("weight", weight)
    if weight.dtype not in PARAMETER_DTYPES and weight.dtype != np.float16:
        raise TypeError(f"expected weight of dtype float16, float32 or float64, got {weight.dtype}")
    if isinstance(out_axis, (bool, np.bool_)) or not isinstance(out_axis, numbers.Integral):
        raise TypeError(f"expected out_axis to be an int, got {describe_type(out_axis)}")
    if weight.ndim < 1 or not -weight.ndim <= out_axis < weight.ndim:
        raise ValueError(f"expected out_axis within the weight's {weight.ndim} axes, got {out_axis}")
    if weight.shape[out_axis] != channels:
        raise ValueError(
            f"expected the weight's output-channel axis {out_axis} to have the BatchNorm's {channels} channels, "
            f"got weight shape {weight.shape}"
        )
    if bias is not None:
        bias = check_ndarray("bias", bias)
        if bias.shape != (channels,):
            raise ValueError(f"expected bias of shape ({channels},), got {bias.shape}")
        if not np.issubdtype(bias.dtype, np.floating):
            raise TypeError(f"expected bias of a float dtype, got {bias.dtype}")
    return weight, bias


def fold_batchnorm(
    weight: Array, bias: Array | None, bn: Any, *, eps: float | None = None, out_axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias of a layer followed by an evaluation-mode BatchNorm, as one layer.

    ``scale = bn_weight / sqrt(running_var + eps)``; the folded weight is
    ``weight * scale`` along ``out_axis`` and the folded bias
    ``(bias - running_mean) * scale + bn_bias`` (an absent ``bias`` is 0, an
    absent BatchNorm weight 1 and bias 0). Computed in float64 and rounded
    once, to ``weight``'s dtype: the values of PyTorch's
    ``fuse_conv_bn_weights`` / ``fuse_linear_bn_weights`` to the last bit or
    closer.

    Parameters
    ----------
    weight : numpy.ndarray
        The layer's weight, float16/32/64, with the BatchNorm's ``C``
        channels on ``out_axis``: ``(C, in, *k)`` for PyTorch's Conv and
        ``(C, in)`` for Linear (``out_axis=0``), ``(in, C, *k)`` for
        ConvTranspose (``out_axis=1``), ``(*k, in, C)`` for Keras/TF kernels
        (``out_axis=-1``).
    bias : numpy.ndarray or None
        The layer's ``(C,)`` bias, or None for a layer without one.
    bn : BatchNorm1d, BatchNorm2d, BatchNorm3d or mapping
        An evaluation-mode module with running statistics, or a state dict
        (numba_bn's or PyTorch's, NumPy arrays or tensors) with
        ``running_mean`` and ``running_var`` and, when affine, ``weight`` and
        ``bias``.
    eps : float or None, default None
        Keyword-only. The BatchNorm's eps: required with a state dict; with
        a module, None uses ``bn.eps``.
    out_axis : int, default 0
        Keyword-only. The weight's output-channel axis.

    Returns
    -------
    folded_weight : numpy.ndarray
        New, ``weight``'s shape and dtype.
    folded_bias : numpy.ndarray
        New, ``(C,)``, ``weight``'s dtype.

    Raises
    ------
    TypeError
        ``weight``/``bias`` are not NumPy float arrays, ``bn`` is neither a
        module nor a mapping, or ``out_axis``/``eps`` have the wrong type.
    ValueError
        The module is in training mode or has no running statistics; a
        state dict lacks the running statistics or ``eps`` is missing; the
        channel counts or shapes disagree; ``out_axis`` is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> rng = np.random.default_rng(0)
    >>> linear_w, linear_b = rng.standard_normal((4, 3)), rng.standard_normal(4)
    >>> bn = nbn.BatchNorm1d(4, dtype=np.float64)
    >>> _ = bn(rng.normal(2.0, 3.0, (16, 3)) @ linear_w.T)  # a training step sets the running statistics
    >>> w, b = nbn.fold_batchnorm(linear_w, linear_b, bn.eval())
    >>> x = rng.standard_normal((5, 3))
    >>> bool(np.allclose(x @ w.T + b, bn(x @ linear_w.T + linear_b)))
    True
    """
    running_mean, running_var, bn_weight, bn_bias, eps = _batchnorm_vectors(bn, eps)
    channels = running_mean.shape[0]
    weight, bias = _checked_layer(weight, bias, out_axis, channels)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 1.0 / np.sqrt(running_var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    shape = [1] * weight.ndim
    shape[out_axis] = channels
    folded_weight = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
    layer_bias = np.zeros(channels) if bias is None else bias.astype(np.float64)
    folded_bias = (layer_bias - running_mean) * scale
    if bn_bias is not None:
        folded_bias = folded_bias + bn_bias
    return folded_weight, folded_bias.astype(weight.dtype)
