"""``group_norm``, ``instance_norm`` and ``layer_norm`` on NumPy or CUDA device arrays.

They follow ``torch.nn.functional``'s contracts.
As with ``batch_norm``, the input picks the device and the other arrays must
live there too; nothing is kept between calls.
"""

from __future__ import annotations


import numpy as np

from . import row_norms
from ._backend import backend_of
from ._row_backend import row_backend
from ._typing import Array
from ._validation import check_bool, check_channel_axis, check_float_dtype, check_real


def _input(x):
    owner = backend_of(x)
    return owner, check_float_dtype("input", owner.as_array("input", x))


def _parameters(owner, x, shape, **vectors):
    checked = []
    for name, value in vectors.items():
        if value is not None:
            value = row_norms.check_param(owner, name, value, shape)
            row_norms.check_weight_dtype(name, value, x)
        checked.append(value)
    return checked


def group_norm(
    x: Array, num_groups: int, weight: Array | None = None, bias: Array | None = None, eps: float = 1e-5, *,
    channel_axis: int = 1,
) -> Array:
    """Group normalisation of ``x`` (``torch.nn.functional.group_norm``).

    Parameters
    ----------
    x : numpy.ndarray or DeviceArray
        ``(N, C, *)``, or ``(N, *, C)`` with ``channel_axis=-1``; float16, float32 or float64, any strides.
    num_groups : int
        Groups of channels; must divide ``C``.
    weight, bias : array or None
        ``(C,)`` per-channel scale and shift, on ``x``'s device.
    eps : float, default 1e-5
    channel_axis : {1, -1}, default 1
        Keyword-only.

    Returns
    -------
    numpy.ndarray or DeviceArray
        A new C-contiguous array of ``x``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> y = nbn.group_norm(np.arange(12.0).reshape(1, 4, 3), 2)
    >>> bool(np.allclose(y[0, :2].mean(), 0))
    True
    """
    owner, x = _input(x)
    channel_axis = check_channel_axis(channel_axis)
    channels, _ = row_norms.group_channels(x, channel_axis)
    num_groups, _ = row_norms.check_groups(num_groups, channels) if channels else (num_groups, 0)
    weight, bias = _parameters(owner, x, (channels,), weight=weight, bias=bias)
    eps = check_real("eps", eps, minimum=0.0)
    y, _, _ = row_norms.group_forward(row_backend(owner.device), x, num_groups, weight, bias, eps, channel_axis, False)
    return y


def instance_norm(
    x: Array, running_mean: Array | None = None, running_var: Array | None = None, weight: Array | None = None,
    bias: Array | None = None, use_input_stats: bool = True, momentum: float = 0.1, eps: float = 1e-5, *,
    channel_axis: int = 1,
) -> Array:
    """Instance normalisation of ``x`` (``torch.nn.functional.instance_norm``).

    With ``use_input_stats`` each (sample, channel) is normalised with its
    own statistics and, when ``running_mean``/``running_var`` are given, they
    are updated in place with the batch average of the instances' mean and
    unbiased variance (factor ``momentum``). Without it the running buffers
    normalise.

    Parameters
    ----------
    x : numpy.ndarray or DeviceArray
        ``(N, C, *)``, or ``(N, *, C)`` with ``channel_axis=-1``.
    running_mean, running_var : array or None
        ``(C,)`` buffers on ``x``'s device; required without ``use_input_stats``.
    weight, bias : array or None
        ``(C,)``.
    use_input_stats : bool, default True
    momentum : float, default 0.1
    eps : float, default 1e-5
    channel_axis : {1, -1}, default 1
        Keyword-only.

    Returns
    -------
    numpy.ndarray or DeviceArray
        A new C-contiguous array of ``x``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> running_mean, running_var = np.zeros(2), np.ones(2)
    >>> y = nbn.instance_norm(np.arange(12.0).reshape(2, 2, 3), running_mean, running_var)
    >>> running_mean
    array([0.4, 0.7])
    """
    owner, x = _input(x)
    channel_axis = check_channel_axis(channel_axis)
    channels, axis = row_norms.group_channels(x, channel_axis)
    use_input_stats = check_bool("use_input_stats", use_input_stats)
    momentum = check_real("momentum", momentum)
    eps = check_real("eps", eps, minimum=0.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError("expected running_mean and running_var to be both given or both None, got one of them")
    if running_mean is None and not use_input_stats:
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is false")
    weight, bias = _parameters(owner, x, (channels,), weight=weight, bias=bias)
    running_mean, running_var = _parameters(owner, x, (channels,), running_mean=running_mean, running_var=running_var)
    if running_mean is not None and use_input_stats:
        for name, value in (("running_mean", running_mean), ("running_var", running_var)):
            row_norms.check_param(owner, name, value, (channels,), writeable=True)
    rows = row_backend(owner.device)
    running = None
    if use_input_stats:
        row_norms.check_spatial_size(x, axis)
    else:
        running = tuple(owner.to_host(v).astype(np.float64) for v in (running_mean, running_var))
    y, statistics, _ = row_norms.instance_forward(
        rows, x, channels, weight, bias, eps, channel_axis, running, False
    )
    if use_input_stats and running_mean is not None and x.shape[0] > 0:
        current = tuple(owner.to_host(v).astype(np.float64) for v in (running_mean, running_var))
        mean, var = row_norms.instance_running_update(
            rows, statistics, x.shape[0], channels, row_norms.spatial_size(x, axis), *current, momentum
        )
        for target, values in ((running_mean, mean), (running_var, var)):
            owner.assign(target, values.astype(target.dtype))
    return y


def layer_norm(
    x: Array, normalized_shape: int | tuple[int, ...], weight: Array | None = None, bias: Array | None = None,
    eps: float = 1e-5,
) -> Array:
    """Layer normalisation of ``x``'s trailing ``normalized_shape`` values (``torch.nn.functional.layer_norm``).

    Parameters
    ----------
    x : numpy.ndarray or DeviceArray
        ``(*, *normalized_shape)``.
    normalized_shape : int or tuple of int
    weight, bias : array or None
        Of shape ``normalized_shape``.
    eps : float, default 1e-5

    Returns
    -------
    numpy.ndarray or DeviceArray
        A new C-contiguous array of ``x``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> y = nbn.layer_norm(np.array([[1.0, 2.0, 3.0]]), 3)
    >>> bool(np.allclose(y, [[-1.2247, 0.0, 1.2247]], atol=1e-4))
    True
    """
    owner, x = _input(x)
    shape = row_norms.check_normalized_shape(normalized_shape)
    row_norms.check_layer_input(x, shape)
    weight, bias = _parameters(owner, x, shape, weight=weight, bias=bias)
    eps = check_real("eps", eps, minimum=0.0)
    y, _, _ = row_norms.layer_forward(row_backend(owner.device), x, len(shape), weight, bias, eps, False)
    return y
