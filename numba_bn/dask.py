"""Batch normalisation statistics and outputs of Dask arrays, with numba_bn's kernels per block.

:func:`channel_stats` gives the exact per-channel ``(count, mean, M2)`` of a
``dask.array.Array`` of any size and chunking: each block is reduced by
numba_bn's one-pass float64 statistics kernel, and the per-block states are
merged up a ``dask.array.reduction`` tree with Chan's formula
(:meth:`numba_bn.ChannelStats.merge`). No ``E[x**2] - E[x]**2`` cancellation,
no equal-count assumption, and every scheduler merges in the same order, so
the result has the same bits on threads, processes or a ``dask.distributed``
cluster.

:func:`batch_norm` is ``numba_bn.batch_norm`` on a Dask array: a lazy array
of ``x``'s chunks, each block normalised by numba_bn's forward kernel with the
same per-channel coefficients as the in-memory call (training statistics are
those of the whole array, computed at call time).

Needs the ``dask`` extra: ``pip install 'numba_bn[dask]'``. ``import
numba_bn`` does not import this module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

try:
    import dask.array as da
except ImportError as error:
    raise ImportError(
        f"numba_bn.dask needs dask.array, which cannot be imported ({error}); "
        "install it with: pip install 'numba_bn[dask]'"
    ) from error

from ._backend import BatchStatistics, RunningStatistics, backend
from ._dtypes import native_dtype
from ._stats import ChannelStats
from ._stats import channel_stats as _in_memory_channel_stats
from ._validation import check_channel_axis, check_float_dtype, check_values_per_channel, describe_type
from .functional import checked_arguments

__all__ = ["batch_norm", "channel_stats"]

#: One channel's partial statistics inside the reduction. Records rather than
#: ``to_buffer()`` rows: a block of ``c`` channels reduces to ``c`` records,
#: so the intermediate arrays have honest shapes and chunks along the channel
#: axis (however it is chunked) and dask concatenates the channel blocks of
#: the result itself. The count is stored per channel (the same in a block)
#: to keep it with its channel through that concatenation.
_STATE_DTYPE = np.dtype([("count", np.int64), ("mean", np.float64), ("m2", np.float64)])


# ------------------------------------------------------------- validation


def _checked_input(x: Any, channel_axis: Any, numpy_function: str) -> tuple[da.Array, int]:
    """``(x, axis)``: ``x`` checked as a Dask array of NumPy float blocks, and its non-negative channel axis."""
    if not isinstance(x, da.Array):
        if isinstance(x, np.ndarray):
            fix = (
                f"use numba_bn.{numpy_function} for a NumPy array, or wrap it: dask.array.from_array(input, chunks=...)"
            )
        else:
            fix = "wrap an array with dask.array.from_array(input, chunks=...)"
        raise TypeError(f"expected input to be a dask.array.Array, got {describe_type(x)}; {fix}")
    meta = getattr(x, "_meta", None)
    if not isinstance(meta, np.ndarray) or isinstance(meta, np.ma.MaskedArray):
        raise TypeError(
            "expected input to be a dask.array.Array of numpy.ndarray blocks (numba_bn.dask runs on the CPU), "
            f"got blocks of {describe_type(meta)}"
        )
    check_float_dtype("input", x)
    channel_axis = check_channel_axis(channel_axis)
    if x.ndim < 2:
        raise ValueError(f"expected input with 2 or more dimensions (N, C, ...), got {x.ndim}D input")
    axis = channel_axis % x.ndim
    # Unknown chunk sizes elsewhere are fine: the blocks count their values themselves.
    if math.isnan(x.shape[axis]):
        raise ValueError(
            f"expected input with known chunk sizes along the channel axis {axis}, got chunks {x.chunks[axis]}; "
            "call input.compute_chunk_sizes() first"
        )
    return x, axis


def _sizes_known(x: da.Array) -> bool:
    """Whether every chunk size of ``x`` is known (no NaN in its shape)."""
    return not any(math.isnan(size) for size in x.shape)


def _kernel_channel_axis(axis: int) -> int:
    """The ``channel_axis`` argument numba_bn's kernels take for a non-negative channel ``axis``."""
    return 1 if axis == 1 else -1


# ------------------------------------------------------- the statistics tree


def _records(stats: ChannelStats, ndim: int, axis: int, keepdims: bool) -> np.ndarray:
    """``stats`` as :data:`_STATE_DTYPE` records along ``axis`` (of ``ndim`` axes when ``keepdims``)."""
    records = np.empty(stats.num_features, _STATE_DTYPE)
    records["count"] = stats.count
    records["mean"] = stats.mean
    records["m2"] = stats.m2
    if not keepdims:
        return records
    shape = [1] * ndim
    shape[axis] = stats.num_features
    return records.reshape(shape)


def _stats(records: np.ndarray) -> ChannelStats:
    """The :class:`ChannelStats` held by a block of records."""
    flat = records.reshape(-1)
    count = int(flat["count"][0]) if flat.size else 0
    return ChannelStats(count, flat["mean"], flat["m2"])


def _leaves(parts: Any) -> Iterator[np.ndarray]:
    """The record arrays of a nested list from the reduction tree, in block order."""
    if isinstance(parts, np.ndarray):
        yield parts
        return
    for part in parts:
        yield from _leaves(part)


def _block_states(block, axis, keepdims, *, channel_axis, computing_meta=False):
    """The reduction's chunk step: one block's statistics by numba_bn's kernel, as records.

    With ``computing_meta`` (dask probing the output type on an empty stand-in
    block) nothing is computed.
    """
    if computing_meta:
        return np.empty((0,) * block.ndim, _STATE_DTYPE)
    stats = _in_memory_channel_stats(block, channel_axis=_kernel_channel_axis(channel_axis))
    return _records(stats, block.ndim, channel_axis, keepdims)


def _merged_states(parts, axis, keepdims, *, ndim, channel_axis, computing_meta=False):
    """The reduction's combine and aggregate steps: Chan merges of the parts, left to right in block order."""
    if computing_meta:
        return np.empty((0,) * (ndim if keepdims else 1), _STATE_DTYPE)
    merged = ChannelStats.merge_all(_stats(records) for records in _leaves(parts))
    return _records(merged, ndim, channel_axis, keepdims)


def _state_array(x: da.Array, axis: int) -> da.Array:
    """The lazy ``(C,)`` array of :data:`_STATE_DTYPE` records of ``x``'s channels, chunked like its channel axis."""
    merge = functools.partial(_merged_states, ndim=x.ndim, channel_axis=axis)
    return da.reduction(
        x,
        functools.partial(_block_states, channel_axis=axis),
        merge,
        combine=merge,
        axis=tuple(i for i in range(x.ndim) if i != axis),
        keepdims=False,
        dtype=_STATE_DTYPE,
        concatenate=False,
        meta=np.empty((0,), _STATE_DTYPE),
        name="numba_bn-channel_stats",
    )


def _computed_stats(x: da.Array, axis: int) -> ChannelStats:
    """``x``'s statistics, computed on the active scheduler."""
    if x.shape[axis] == 0:  # no records to carry the count; and no data to read
        return ChannelStats.empty(0)
    if _sizes_known(x) and x.size == 0:
        return ChannelStats.empty(x.shape[axis])
    return _stats(_state_array(x, axis).compute())


def channel_stats(x: da.Array, *, channel_axis: int = 1) -> ChannelStats:
    """Per-channel ``(count, mean, m2)`` of a Dask array, computed exactly, as a :class:`numba_bn.ChannelStats`.

    Each block is reduced by numba_bn's statistics kernel (the one of
    :func:`numba_bn.channel_stats`: one pass, float64 Welford/Chan), and the
    per-block states are merged up a ``dask.array.reduction`` tree with
    Chan's formula. The result is the same for any chunking, along any axes
    (up to float64 rounding), and bit for bit the same on every scheduler.

    Parameters
    ----------
    x : dask.array.Array
        Input of 2 or more dimensions with the channels on ``channel_axis``,
        of float16, float32 or float64, with NumPy blocks. Any axis may be
        chunked, the channel axis too; chunk sizes may be unknown (NaN, as
        after boolean indexing) except along the channel axis.
    channel_axis : {1, -1}, default 1
        Keyword-only. 1 for channels-first ``(N, C, ...)``, -1 for
        channels-last ``(N, ..., C)``.

    Returns
    -------
    ChannelStats
        Host float64 statistics; ``count`` 0 (the merge identity) for an
        empty input.

    Raises
    ------
    TypeError
        ``x`` is not a ``dask.array.Array`` of NumPy blocks of a float dtype,
        or ``channel_axis`` is not an int.
    ValueError
        ``x`` has fewer than 2 dimensions or unknown chunk sizes along the
        channel axis, or ``channel_axis`` is not 1 or -1.

    Notes
    -----
    The computation runs when called (``x``'s graph and the reduction, on the
    active scheduler: dask's default, the one set with
    ``dask.config.set(scheduler=...)``, or a ``dask.distributed.Client``).
    Only ``2C + 1`` numbers per block travel between tasks.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> import numba_bn.dask
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(60, 3, 8)).astype(np.float32)
    >>> stats = numba_bn.dask.channel_stats(da.from_array(x, chunks=(7, 2, 5)))
    >>> stats.count, stats.num_features
    (480, 3)
    >>> bool(np.allclose(stats.var, nbn.channel_stats(x).var, rtol=1e-12))
    True
    """
    x, axis = _checked_input(x, channel_axis, "channel_stats")
    return _computed_stats(x, axis)


# ------------------------------------------------------------ normalisation


def _writeable_float64(vector: np.ndarray | None) -> np.ndarray | None:
    """``vector`` as a writeable float64 array (blocks may arrive read-only from another process)."""
    if vector is None or (vector.dtype == np.float64 and vector.flags.writeable and vector.flags.c_contiguous):
        return vector
    return np.array(vector, dtype=np.float64, order="C")


def _normalized_block(block, mean, spread, weight, bias, *, channel_axis, count, eps):
    """One block of :func:`batch_norm`'s output, from its channels' slices of the vectors.

    ``count`` is the whole array's count with batch statistics (``spread`` is
    then M2), None with running statistics (``spread`` is the variance).
    """
    mean, spread, weight, bias = map(_writeable_float64, (mean, spread, weight, bias))
    if count is None:
        statistics = RunningStatistics(mean, spread)
    else:
        statistics = BatchStatistics(count, mean, spread)
    return backend("cpu").forward(block, channel_axis, statistics, weight, bias, eps, save=False)[0]


def _channel_vector(values: np.ndarray | None, x: da.Array, axis: int) -> tuple[Any, Any]:
    """``values`` as a (blockwise argument, index) pair: a Dask vector chunked like ``x``'s channel axis, or None."""
    if values is None:
        return None, None
    # A float64 snapshot: the output is lazy, and the caller may change its arrays before computing it.
    snapshot = np.array(values, dtype=np.float64, order="C")
    return da.from_array(snapshot, chunks=(x.chunks[axis],)), (axis,)


def batch_norm(
    x: da.Array,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    channel_axis: int = 1,
) -> da.Array:
    """:func:`numba_bn.batch_norm` of a Dask array: a lazy array of ``x``'s chunks.

    Each block is normalised by numba_bn's forward kernel with its channels'
    share of the per-channel statistics, so the values are those of
    ``numba_bn.batch_norm`` on the whole array in memory. With
    ``training=True`` the statistics of the whole array are computed when
    this is called (by :func:`channel_stats`: exact, any chunking) and the
    running buffers, when given, are updated in place as ``numba_bn.batch_norm``
    does: ``running = (1 - momentum) * running + momentum * batch``, with the
    unbiased variance for ``running_var``; an empty array leaves them
    unchanged.

    Parameters
    ----------
    x : dask.array.Array
        Input of 2 or more dimensions with the channels on ``channel_axis``,
        of float16, float32 or float64, with NumPy blocks. Any axis may be
        chunked, the channel axis too; chunk sizes may be unknown (NaN, as
        after boolean indexing) except along the channel axis.
    running_mean, running_var : numpy.ndarray or None
        ``(C,)`` float running statistics: read with ``training=False``
        (required then), updated in place with ``training=True`` (then they
        may both be None).
    weight, bias : numpy.ndarray or None, optional
        ``(C,)`` float scale and shift of each channel, when given.
    training : bool, default False
        Normalise with the statistics of ``x`` (and update the running
        buffers) instead of the running buffers.
    momentum : float, default 0.1
        Weight of the new statistics in the running buffers' update.
    eps : float, default 1e-5
        Added to the variance before its square root (0 or more).
    channel_axis : {1, -1}, default 1
        Keyword-only. 1 for channels-first ``(N, C, ...)``, -1 for
        channels-last ``(N, ..., C)``.

    Returns
    -------
    dask.array.Array
        Lazy, of ``x``'s shape and chunks and dtype (in native byte order).
        The per-channel vectors are copied when this is called: later changes
        to them do not affect it.

    Raises
    ------
    TypeError
        ``x`` is not a ``dask.array.Array`` of NumPy blocks of a float dtype;
        a vector is not a NumPy array of a float dtype; ``training`` is not a
        bool; ``momentum``, ``eps`` or ``channel_axis`` is not a number of
        the right kind.
    ValueError
        ``x`` has fewer than 2 dimensions or unknown chunk sizes along the
        channel axis; a vector's
        shape is not ``(C,)``; only one of ``running_mean``/``running_var``
        is given, or neither with ``training=False``; a running buffer to
        update is read-only; ``eps`` is negative or a number is not finite;
        ``channel_axis`` is not 1 or -1; or ``training=True`` with one value
        per channel. A call that raises modifies nothing.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> import numba_bn.dask
    >>> x = np.random.default_rng(0).normal(3.0, 1.0, size=(64, 4, 10)).astype(np.float32)
    >>> running_mean, running_var = np.zeros(4, np.float32), np.ones(4, np.float32)
    >>> y = numba_bn.dask.batch_norm(da.from_array(x, chunks=(16, 4, 5)), running_mean, running_var, training=True)
    >>> y.chunks
    ((16, 16, 16, 16), (4,), (5, 5))
    >>> bool(np.allclose(y.compute(), nbn.batch_norm(x, None, None, training=True), atol=1e-6))
    True
    >>> bool(np.allclose(running_mean, 0.1 * x.mean(axis=(0, 2))))
    True
    """
    x, axis = _checked_input(x, channel_axis, "batch_norm")
    cpu = backend("cpu")
    running_mean, running_var, weight, bias, training, momentum, eps = checked_arguments(
        cpu, x.shape[axis], running_mean, running_var, weight, bias, training, momentum, eps
    )

    if training:
        if _sizes_known(x):
            check_values_per_channel(x, axis)  # before any computation
        stats = _computed_stats(x, axis)
        if stats.count == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        # Writeable float64 copies: the kernels' compiled signatures take writeable arrays.
        mean, spread = cpu.from_host(stats.mean, np.float64), cpu.from_host(stats.m2, np.float64)
        count = stats.count
        if running_mean is not None:
            cpu.update_running(running_mean, running_var, BatchStatistics(count, mean, spread), momentum)
    else:
        mean, spread, count = running_mean, running_var, None

    # Blockwise by index: block (i, j, ...) of x meets block j of each vector (j on the channel axis).
    indices = tuple(range(x.ndim))
    vector_arguments = []
    for values in (mean, spread, weight, bias):
        vector_arguments.extend(_channel_vector(values, x, axis))
    dtype = native_dtype(x)
    return da.blockwise(
        _normalized_block,
        indices,
        x,
        indices,
        *vector_arguments,
        channel_axis=axis,
        count=count,
        eps=float(eps),
        dtype=dtype,
        meta=np.empty((0,) * x.ndim, dtype),
        token="numba_bn-batch_norm",
    )
