"""Functional API: ``batch_norm`` and ``batch_stats`` on NumPy or CUDA device arrays.

The input picks the path: a NumPy array runs on the CPU, a ``numba.cuda``
device array (or any ``__cuda_array_interface__`` object) on the GPU, and the
other array arguments must then live on the same device. Neither function
keeps any state: the caller owns the parameters and running buffers.
"""

from __future__ import annotations

from ._backend import RunningStatistics, RunningUpdate, backend_of
from ._dtypes import compute_dtype
from ._typing import Array
from ._validation import (
    channel_count,
    check_activation,
    check_bool,
    check_channel_axis,
    check_float_dtype,
    check_like,
    check_output,
    check_real,
    check_values_per_channel,
)


def checked_input(x, channel_axis):
    """``(backend, x, axis)``: the backend owning ``x``, ``x`` as it reads it, the non-negative channel axis."""
    owner = backend_of(x)
    x = check_float_dtype("input", owner.as_array("input", x))
    channel_axis = check_channel_axis(channel_axis)
    if x.ndim < 2:
        raise ValueError(f"expected input with 2 or more dimensions (N, C, ...), got {x.ndim}D input")
    return owner, x, channel_axis % x.ndim


def checked_arguments(owner, channels, running_mean, running_var, weight, bias, training, momentum, eps):
    """``batch_norm``'s arguments other than the input, checked for ``channels`` channels on
    ``owner``'s device: ``(running_mean, running_var, weight, bias, training, momentum, eps)``."""
    training = check_bool("training", training)
    momentum = check_real("momentum", momentum)
    eps = check_real("eps", eps, minimum=0.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "expected running_mean and running_var to be both given or both None, "
            f"got running_mean={'None' if running_mean is None else 'an array'} and "
            f"running_var={'None' if running_var is None else 'an array'}"
        )
    if running_mean is None and not training:
        raise ValueError("expected running_mean and running_var when training=False, got None")
    vectors = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    for name, vector in vectors.items():
        if vector is not None:
            in_place = training and name.startswith("running_")
            vectors[name] = owner.check_vector(name, vector, channels, writeable=in_place)
    return (*vectors.values(), training, momentum, eps)


def batch_stats(x: Array, *, channel_axis: int = 1) -> tuple[Array, Array, int]:
    """Per-channel mean, biased variance and count of ``x``.

    Computed in one pass with float64 partial (count, mean, M2) states merged
    by Chan's formula, so large offsets do not cancel as in
    ``E[x**2] - E[x]**2``.

    Parameters
    ----------
    x : numpy.ndarray or DeviceArray
        Input of 2 or more dimensions with the channels on ``channel_axis``,
        of float16, float32 or float64 (any strides and byte order). A
        NumPy array runs on the CPU, a device array on the GPU.
    channel_axis : {1, -1}, default 1
        Keyword-only. 1 for channels-first ``(N, C, ...)``, -1 for
        channels-last ``(N, ..., C)``.

    Returns
    -------
    mean : numpy.ndarray or DeviceArray
        ``(C,)``: float64 for float64 input, float32 otherwise; on ``x``'s
        device. NaN for an empty input.
    var : numpy.ndarray or DeviceArray
        ``(C,)``: the biased variance (divided by ``count``), same dtype and
        device as ``mean``; NaN for an empty input.
    count : int
        The number of values per channel: the product of the other axes' sizes.

    Raises
    ------
    TypeError
        ``x`` is not a NumPy or CUDA array of a float dtype, or
        ``channel_axis`` is not an int.
    ValueError
        ``x`` has fewer than 2 dimensions, or ``channel_axis`` is not 1 or -1.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    >>> mean, var, count = nbn.batch_stats(x)
    >>> count, mean.dtype
    (4, dtype('float32'))
    >>> bool(np.allclose(mean, x.mean(axis=(0, 2)))), bool(np.allclose(var, x.var(axis=(0, 2))))
    (True, True)
    """
    owner, x, axis = checked_input(x, channel_axis)
    statistics = owner.batch_statistics(x, axis)
    # A float32 variance overflows to inf beyond ~1.8e38 (data beyond ~1e19).
    mean, var = owner.mean_and_variance(statistics, compute_dtype(x))
    return mean, var, statistics.count


def batch_norm(
    x: Array,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Array | None = None,
    bias: Array | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    channel_axis: int = 1,
    activation: str | None = None,
    residual: Array | None = None,
    out: Array | None = None,
) -> Array:
    """Batch normalisation with ``torch.nn.functional.batch_norm``'s contract.

    With ``training=True`` the batch's mean and biased variance normalise
    ``x`` and, when ``running_mean``/``running_var`` are given, are blended
    into them in place: ``running = (1 - momentum) * running + momentum *
    batch``, with the unbiased variance for ``running_var`` (an empty batch
    leaves them unchanged). With ``training=False`` the running buffers
    normalise ``x``. Then ``weight`` scales and ``bias`` shifts each channel,
    when given, ``residual`` is added and ``activation`` applied, all in one
    pass over memory: ``activation(batch_norm(x) + residual)``.

    Parameters
    ----------
    x : numpy.ndarray or DeviceArray
        Input of 2 or more dimensions with ``C`` channels on
        ``channel_axis``, of float16, float32 or float64 (any strides and
        byte order). A NumPy array runs on the CPU, a device array on the
        GPU; the other arrays must then be on the same device.
    running_mean, running_var : numpy.ndarray or DeviceArray or None
        ``(C,)`` float arrays (any float dtype, independent of ``x``'s), both
        given or both None. Required when ``training=False``; updated in
        place when ``training=True`` (so they must be writeable).
    weight, bias : numpy.ndarray or DeviceArray or None, optional
        ``(C,)`` float arrays: the per-channel scale and shift, or None for
        1 and 0.
    training : bool, default False
        Normalise with the batch's statistics (and update the running
        buffers) instead of the running buffers.
    momentum : float, default 0.1
        The weight of the batch in the running-buffer update (any finite
        real; None is not accepted, unlike the modules' ``momentum``).
    eps : float, default 1e-5
        Added to the variance before its square root (0 or more).
    channel_axis : {1, -1}, default 1
        Keyword-only. 1 for channels-first ``(N, C, ...)``, -1 for
        channels-last ``(N, ..., C)`` (read without a transposed copy).
    activation : {None, "relu"}, default None
        Keyword-only. Applied last, fused into the same pass.
    residual : numpy.ndarray or DeviceArray or None, default None
        Keyword-only. Added before the activation: ``x``'s shape and dtype
        on ``x``'s device, any strides and byte order.
    out : numpy.ndarray or DeviceArray or None, default None
        Keyword-only. A writeable array of ``x``'s shape and dtype on ``x``'s
        device, any strides (``x`` or ``residual`` itself too, for an
        in-place update), that receives the result instead of a new array.

    Returns
    -------
    numpy.ndarray or DeviceArray
        ``out`` when given, else a new C-contiguous array of ``x``'s shape
        and dtype (in native byte order), on ``x``'s device.

    Raises
    ------
    TypeError
        An array argument is not a NumPy array (CPU) or device array (GPU),
        or has a non-float dtype; ``residual`` or ``out`` has another dtype
        than ``x``; ``training`` is not a bool; ``momentum``, ``eps`` or
        ``channel_axis`` is not a number of the right kind; ``activation``
        is not None or a str.
    ValueError
        ``x`` has fewer than 2 dimensions; ``residual`` or ``out`` has
        another shape; ``activation`` is not None or "relu"; a vector's shape is not ``(C,)``;
        only one of ``running_mean``/``running_var`` is given, or neither
        with ``training=False``; a running buffer to update is read-only;
        ``eps`` is negative or a number is not finite; ``channel_axis`` is
        not 1 or -1; or ``training=True`` with one value per channel. A call
        that raises modifies nothing.

    Notes
    -----
    There is no backward here; use the modules for gradients. Unlike
    PyTorch, ``x`` may be float16 with float32 (or any float) vectors, and
    the statistics are accumulated in float64.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> x = np.random.default_rng(0).normal(3.0, 1.0, size=(32, 4, 5)).astype(np.float32)
    >>> running_mean, running_var = np.zeros(4, np.float32), np.ones(4, np.float32)
    >>> y = nbn.batch_norm(x, running_mean, running_var, training=True, momentum=1.0)
    >>> bool(np.allclose(running_mean, x.mean(axis=(0, 2))))
    True
    >>> y_eval = nbn.batch_norm(x, running_mean, running_var)  # training=False
    """
    owner, x, axis = checked_input(x, channel_axis)
    channels, _ = channel_count(x, axis)
    running_mean, running_var, weight, bias, training, momentum, eps = checked_arguments(
        owner, channels, running_mean, running_var, weight, bias, training, momentum, eps
    )
    relu = check_activation(activation) == "relu"
    if residual is not None:
        residual = check_like("residual", owner.as_array("residual", residual), x, "the input's")
    if out is not None:
        out = check_output(owner.as_array("out", out), x)
    fused = dict(save=False, out=out, residual=residual, relu=relu)
    if not training:
        statistics = RunningStatistics(running_mean, running_var)
        return owner.forward(x, axis, statistics, weight, bias, eps, **fused)[0]
    check_values_per_channel(x, axis)
    statistics = owner.batch_statistics(x, axis, merge=False)
    running = None if running_mean is None else RunningUpdate(running_mean, running_var, momentum)
    y, _ = owner.forward(x, axis, statistics, weight, bias, eps, running=running, **fused)
    return y
