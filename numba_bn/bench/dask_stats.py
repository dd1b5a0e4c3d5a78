"""Timing ``numba_bn.dask.channel_stats`` against dask.array's own statistics and the in-memory kernel.

The same in-memory float32 array, wrapped as a Dask array chunked along the
batch axis, is reduced to per-channel statistics three ways:

``numba_bn.dask``
    ``numba_bn.dask.channel_stats``: numba_bn's kernel per chunk, Chan merges.
``dask.array``
    ``x.mean(axes)`` and ``x.var(axes)`` computed together by ``dask.compute``
    (dask's NumPy moment reductions, sharing the graph).
``numba_bn in memory``
    ``numba_bn.channel_stats`` on the NumPy array: what a Dask run costs on
    top of the kernel alone.

The samples are interleaved (:func:`numba_bn.bench.timing.time_interleaved`)
and the Dask runs use the active scheduler (dask's threads by default). Dask
is imported only when a case is built, so this module imports without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .report import format_spread
from .timing import MIN_REPEATS, MIN_SAMPLE_SECONDS, Timing, time_interleaved

#: The implementations, ours first.
IMPLEMENTATIONS = ("numba_bn.dask", "dask.array", "numba_bn in memory")
#: ``(N, C, H, W)`` float32, and the batch entries per chunk, of the default case.
DEFAULT_SHAPE = (64, 64, 56, 56)
DEFAULT_BATCH_CHUNK = 8
#: A stand-in for quick runs (smoke tests).
SMOKE_SHAPE = (4, 8, 5, 5)
SMOKE_BATCH_CHUNK = 1


@dataclass(frozen=True)
class DaskStatsCase:
    """A channels-first float32 array of ``shape``, chunked by ``batch_chunk`` entries along the batch axis."""

    shape: tuple[int, ...]
    batch_chunk: int

    @property
    def name(self) -> str:
        """E.g. ``"64x64x56x56 float32, chunks of 8"``."""
        return f"{'x'.join(map(str, self.shape))} float32, chunks of {self.batch_chunk}"

    @property
    def chunk_count(self) -> int:
        """The number of chunks."""
        return math.ceil(self.shape[0] / self.batch_chunk)


@dataclass(frozen=True)
class DaskStatsResult:
    """Seconds per call of each implementation of a case, and the ratios that compare them."""

    case: DaskStatsCase
    timings: dict[str, Timing]

    @property
    def speedup_over_dask(self) -> float:
        """``dask.array`` time over ``numba_bn.dask`` time (above 1: numba_bn is faster)."""
        return self.timings["dask.array"].median / self.timings["numba_bn.dask"].median

    @property
    def overhead_over_in_memory(self) -> float:
        """``numba_bn.dask`` time over ``numba_bn in memory`` time (the cost of chunks and scheduling)."""
        return self.timings["numba_bn.dask"].median / self.timings["numba_bn in memory"].median

    def as_dict(self) -> dict[str, Any]:
        """The case, every timing and both ratios, for JSON."""
        return {
            "shape": list(self.case.shape),
            "batch_chunk": self.case.batch_chunk,
            "chunks": self.case.chunk_count,
            "timings": {name: timing.as_dict() for name, timing in self.timings.items()},
            "speedup_over_dask": self.speedup_over_dask,
            "overhead_over_in_memory": self.overhead_over_in_memory,
        }


def make_data(case: DaskStatsCase, seed: int = 0) -> tuple[np.ndarray, Any]:
    """The case's NumPy array and the Dask array wrapping it (``dask.array.from_array``, chunked by batch).

    Parameters
    ----------
    case : DaskStatsCase
    seed : int

    Returns
    -------
    tuple
        ``(numpy.ndarray, dask.array.Array)``.
    """
    import dask.array as da

    x = np.random.default_rng(seed).standard_normal(case.shape, dtype=np.float32) * 2 + 3
    return x, da.from_array(x, chunks=(case.batch_chunk,) + case.shape[1:])


def make_runs(x: np.ndarray, dx: Any) -> dict[str, Callable[[], Any]]:
    """One callable per implementation of :data:`IMPLEMENTATIONS`, each returning ``(mean, var)`` of its run.

    Parameters
    ----------
    x : numpy.ndarray
        Channels-first data.
    dx : dask.array.Array
        The same data as a Dask array.

    Returns
    -------
    dict of str to callable
    """
    import dask

    import numba_bn
    import numba_bn.dask

    axes = (0,) + tuple(range(2, x.ndim))

    def ours():
        stats = numba_bn.dask.channel_stats(dx)
        return stats.mean, stats.var

    def dask_array():
        return dask.compute(dx.mean(axis=axes), dx.var(axis=axes))

    def in_memory():
        stats = numba_bn.channel_stats(x)
        return stats.mean, stats.var

    return {"numba_bn.dask": ours, "dask.array": dask_array, "numba_bn in memory": in_memory}


def largest_disagreement(runs: dict[str, Callable[[], Any]]) -> float:
    """The largest relative difference of any implementation's mean or variance from ``numba_bn in memory``'s.

    Parameters
    ----------
    runs : dict of str to callable
        As :func:`make_runs` returns them.

    Returns
    -------
    float
    """
    expected = runs["numba_bn in memory"]()
    worst = 0.0
    for run in runs.values():
        for value, reference in zip(run(), expected):
            value = np.asarray(value, dtype=np.float64)
            worst = max(worst, float(np.max(np.abs(value - reference) / np.maximum(np.abs(reference), 1e-30))))
    return worst


def compare(
    case: DaskStatsCase,
    *,
    budget: float = 1.0,
    min_repeats: int = MIN_REPEATS,
    min_sample_seconds: float = MIN_SAMPLE_SECONDS,
) -> DaskStatsResult:
    """Time every implementation on ``case``, samples interleaved, after a warm-up call of each.

    Parameters
    ----------
    case : DaskStatsCase
    budget : float
        Seconds of samples per implementation (at least ``min_repeats`` are taken).
    min_repeats : int
    min_sample_seconds : float
        See :func:`numba_bn.bench.timing.time_interleaved`.

    Returns
    -------
    DaskStatsResult
    """
    runs = make_runs(*make_data(case))
    timings = time_interleaved(runs, budget=budget, min_repeats=min_repeats, min_sample_seconds=min_sample_seconds)
    return DaskStatsResult(case, timings)


def format_result(result: DaskStatsResult) -> str:
    """A short text table of the medians, their spread and the two ratios.

    Parameters
    ----------
    result : DaskStatsResult

    Returns
    -------
    str
    """
    lines = [f"per-channel statistics of {result.case.name} ({result.case.chunk_count} chunks)"]
    for name, timing in result.timings.items():
        lines.append(
            f"  {name:<20} {1e3 * timing.median:9.2f} ms {format_spread(timing):>5}  ({timing.repeats} samples)"
        )
    lines.append(f"  speedup of numba_bn.dask over dask.array mean + var: {result.speedup_over_dask:.2f}x")
    lines.append(f"  numba_bn.dask time / in-memory numba_bn time: {result.overhead_over_in_memory:.2f}")
    return "\n".join(lines)
