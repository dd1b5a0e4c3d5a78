"""Mergeable per-channel statistics: :class:`ChannelStats` and :func:`channel_stats`.

A ``(count, mean, M2)`` state per channel is what the kernels reduce to, and
two states merge exactly (Chan et al.) whatever their counts. Keeping the
states, instead of means and variances, lets statistics be combined across
batches (exact population statistics for the running buffers), processes
(``SyncBatchNorm``) and machines (``numba_bn.dask``) without the
``E[x**2] - E[x]**2`` cancellation or equal-count assumptions.
"""

from __future__ import annotations

import numbers
from typing import Iterable

import numpy as np

from . import _formulas
from ._backend import BatchStatistics
from ._typing import Array
from ._validation import describe_type
from .functional import checked_input


def _read_only_vector(name, values):
    """A new read-only 1-D float64 copy of ``values``."""
    array = np.array(values, dtype=np.float64, copy=True)
    if array.ndim != 1:
        raise ValueError(f"expected {name} to be 1-D (one value per channel), got shape {array.shape}")
    array.setflags(write=False)
    return array


class ChannelStats:
    """Per-channel ``count``, ``mean`` and ``m2`` (sum of squared deviations), immutable.

    Made by :func:`numba_bn.channel_stats` (or from a buffer), and combined
    with :meth:`merge` / :meth:`merge_all`, which give the statistics of the
    union of the data exactly as if computed in one pass. A state with
    ``count == 0`` (an empty batch) is the identity of :meth:`merge`.

    Parameters
    ----------
    count : int
        Values per channel (0 or more).
    mean, m2 : array-like
        ``(C,)`` per-channel mean and sum of squared deviations from it;
        stored as read-only float64 copies.

    Attributes
    ----------
    count : int
        Values per channel.
    mean, m2 : numpy.ndarray
        ``(C,)`` float64, read-only.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(5, 3)), rng.normal(size=(9, 3))
    >>> total = nbn.channel_stats(a).merge(nbn.channel_stats(b))
    >>> total.count
    14
    >>> bool(np.allclose(total.var, np.concatenate([a, b]).var(axis=0)))
    True
    """

    __slots__ = ("_count", "_mean", "_m2")

    def __init__(self, count: int, mean: Array, m2: Array) -> None:
        if isinstance(count, (bool, np.bool_)) or not isinstance(count, numbers.Integral):
            raise TypeError(f"expected count to be an int, got {describe_type(count)}")
        if count < 0:
            raise ValueError(f"expected count >= 0, got {count}")
        mean = _read_only_vector("mean", mean)
        m2 = _read_only_vector("m2", m2)
        if mean.shape != m2.shape:
            raise ValueError(f"expected mean and m2 of the same shape, got {mean.shape} and {m2.shape}")
        self._count = int(count)
        self._mean = mean
        self._m2 = m2

    # -------------------------------------------------------------- values

    @property
    def count(self) -> int:
        """Values per channel."""
        return self._count

    @property
    def mean(self) -> np.ndarray:
        """``(C,)`` float64 per-channel mean (read-only; NaN for an empty state)."""
        return self._mean

    @property
    def m2(self) -> np.ndarray:
        """``(C,)`` float64 per-channel sum of squared deviations from the mean (read-only)."""
        return self._m2

    @property
    def num_features(self) -> int:
        """``C``, the number of channels."""
        return self._mean.shape[0]

    @property
    def var(self) -> np.ndarray:
        """The biased variance ``m2 / count`` (float64; NaN for an empty state)."""
        return self._divided(self._count)

    @property
    def unbiased_var(self) -> np.ndarray:
        """The sample variance ``m2 / (count - 1)`` (float64; NaN for fewer than 2 values)."""
        return self._divided(self._count - 1)

    def _divided(self, divisor):
        if divisor <= 0:
            return np.full(self.num_features, np.nan)
        return self._m2 / float(divisor)

    # ------------------------------------------------------------- merging

    def merge(self, other: ChannelStats) -> ChannelStats:
        """The statistics of both states' data together (Chan's formula; any counts).

        Parameters
        ----------
        other : ChannelStats
            Statistics of the same channels.

        Returns
        -------
        ChannelStats
            A new state; ``self`` and ``other`` are unchanged.

        Raises
        ------
        TypeError
            ``other`` is not a ``ChannelStats``.
        ValueError
            The channel counts differ.
        """
        if not isinstance(other, ChannelStats):
            raise TypeError(f"expected a ChannelStats to merge with, got {describe_type(other)}")
        if other.num_features != self.num_features:
            raise ValueError(
                f"expected statistics of {self.num_features} channels to merge with, got {other.num_features}"
            )
        if other._count == 0:  # the identity: immutable states can be shared
            return self
        if self._count == 0:
            return other
        _, mean, m2 = merge_in_order((float(self._count), float(other._count)), (self._mean, other._mean),
                                     (self._m2, other._m2))
        return ChannelStats(self._count + other._count, mean, m2)

    @staticmethod
    def merge_all(stats: Iterable[ChannelStats]) -> ChannelStats:
        """Merge states left to right: the same inputs in the same order give the same bits.

        Parameters
        ----------
        stats : iterable of ChannelStats
            One or more states of the same channels.

        Returns
        -------
        ChannelStats
            The statistics of all the data together.

        Raises
        ------
        TypeError
            An element is not a ``ChannelStats``.
        ValueError
            ``stats`` is empty, or the channel counts differ.
        """
        states = list(stats)
        for index, state in enumerate(states):
            if not isinstance(state, ChannelStats):
                raise TypeError(f"expected ChannelStats to merge, got {describe_type(state)} at position {index}")
            if state.num_features != states[0].num_features:
                raise ValueError(
                    f"expected statistics of {states[0].num_features} channels to merge with, "
                    f"got {state.num_features} at position {index}"
                )
        if not states:
            raise ValueError("expected one or more ChannelStats to merge, got none")
        count, mean, m2 = merge_in_order(
            [float(state.count) for state in states], [state.mean for state in states], [state.m2 for state in states]
        )
        return ChannelStats(int(count), mean, m2)

    @staticmethod
    def empty(num_features: int) -> ChannelStats:
        """The state of no data (count 0, NaN means, zero ``m2``): the identity of :meth:`merge`.

        Parameters
        ----------
        num_features : int
            ``C``, the number of channels.

        Returns
        -------
        ChannelStats
        """
        nan = np.full(num_features, np.nan)
        return ChannelStats(0, nan, np.zeros(num_features))

    # ------------------------------------------------------------ transport

    def to_buffer(self) -> np.ndarray:
        """A new float64 vector ``[count, mean..., m2...]`` of ``2C + 1`` values, for any transport.

        Returns
        -------
        numpy.ndarray
            ``(2C + 1,)`` float64; :meth:`from_buffer` reads it back. Counts
            above 2**53 lose their last bits.
        """
        buffer = np.empty(2 * self.num_features + 1)
        buffer[0] = self._count
        buffer[1 : self.num_features + 1] = self._mean
        buffer[self.num_features + 1 :] = self._m2
        return buffer

    @staticmethod
    def from_buffer(buffer: Array) -> ChannelStats:
        """The state written by :meth:`to_buffer`.

        Parameters
        ----------
        buffer : array-like
            ``[count, mean..., m2...]``: ``2C + 1`` values.

        Returns
        -------
        ChannelStats
            A new state holding copies of the values.

        Raises
        ------
        ValueError
            ``buffer`` is not a 1-D vector of odd length 3 or more, or its
            first value is not a non-negative whole number.
        """
        values = np.asarray(buffer, dtype=np.float64)
        if values.ndim != 1 or values.size < 3 or values.size % 2 == 0:
            raise ValueError(
                "expected a 1-D buffer of 2C + 1 values [count, mean..., m2...], "
                f"got shape {values.shape}"
            )
        count = values[0]
        if not (count >= 0 and count == np.floor(count)):
            raise ValueError(f"expected the buffer's first value to be a count (a whole number >= 0), got {count}")
        channels = (values.size - 1) // 2
        return ChannelStats(int(count), values[1 : channels + 1], values[channels + 1 :])

    # ---------------------------------------------------------------- misc

    def __eq__(self, other: object) -> bool:
        """Equal counts, and means and ``m2`` with the same bits (so NaNs in the same places are equal)."""
        if not isinstance(other, ChannelStats):
            return NotImplemented
        return (
            self._count == other._count
            and self._mean.tobytes() == other._mean.tobytes()
            and self._m2.tobytes() == other._m2.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]  # equality by value, arrays inside

    def __repr__(self) -> str:
        return f"ChannelStats(count={self._count}, num_features={self.num_features})"

    def __reduce__(self):
        return ChannelStats, (self._count, self._mean, self._m2)


def merge_in_order(counts, means, m2s):
    """``(count, mean, m2)`` of states given as rows, merged left to right (``ChannelStats.merge_all``'s
    arithmetic, without building the objects: for merging the rows of many processes on every step).

    ``counts`` is a sequence of float counts; ``means`` and ``m2s`` are sequences of ``(C,)`` float64
    rows. The count returned is a float.
    """
    count, mean, m2 = 0.0, means[0], m2s[0]
    for count_b, mean_b, m2_b in zip(counts, means, m2s):
        count, mean, m2 = _formulas.chan_merge(count, mean, m2, count_b, mean_b, m2_b)
    return count, mean, m2


def from_batch_statistics(statistics: BatchStatistics, to_host) -> ChannelStats:
    """A backend's :class:`BatchStatistics` as a host :class:`ChannelStats` (``to_host`` copies device arrays)."""
    if statistics.count == 0:
        return ChannelStats.empty(statistics.mean.shape[0])
    return ChannelStats(statistics.count, to_host(statistics.mean), to_host(statistics.m2))


def channel_stats(x: Array, *, channel_axis: int = 1) -> ChannelStats:
    """Per-channel ``(count, mean, m2)`` of ``x`` as a mergeable :class:`ChannelStats`.

    One pass with float64 Welford/Chan accumulation, by the same kernels as
    the modules' training forward.

    Parameters
    ----------
    x : numpy.ndarray or DeviceArray
        Input of 2 or more dimensions with the channels on ``channel_axis``,
        of float16, float32 or float64 (any strides and byte order). A
        device array is reduced on the GPU and ``2C + 1`` values are copied
        back.
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
        ``x`` is not a NumPy or CUDA array of a float dtype, or
        ``channel_axis`` is not an int.
    ValueError
        ``x`` has fewer than 2 dimensions, or ``channel_axis`` is not 1 or -1.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> stats = nbn.channel_stats(x)
    >>> stats.count, stats.num_features
    (8, 3)
    >>> bool(np.allclose(stats.unbiased_var, x.transpose(1, 0, 2).reshape(3, -1).var(axis=1, ddof=1)))
    True
    """
    owner, x, axis = checked_input(x, channel_axis)
    return from_batch_statistics(owner.batch_statistics(x, axis), owner.to_host)
