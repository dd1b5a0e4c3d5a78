"""Wall-clock timing of prepared cases, on the host or with CUDA events.

Every implementation of a case is timed the same way in the same process,
with the same thread count, so ratios between them are meaningful. The best
(minimum) time is the figure compared: on a shared machine the other samples
are the same work plus interference.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numba


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the best and the median of ``repeats`` samples."""

    best: float
    median: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        """``{"best": ..., "median": ..., "repeats": ...}`` for JSON."""
        return {"best": self.best, "median": self.median, "repeats": self.repeats}


def max_threads() -> int:
    """The largest thread count Numba's pool allows (``NUMBA_NUM_THREADS``)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_threads(count: int) -> int:
    """Use ``count`` threads in Numba and, when installed, in PyTorch.

    Parameters
    ----------
    count : int
        Between 1 and :func:`max_threads`.

    Returns
    -------
    int
        ``count``.

    Raises
    ------
    ValueError
        Outside ``1..max_threads()``; nothing is changed then.
    """
    limit = max_threads()
    if not 1 <= count <= limit:
        raise ValueError(f"expected a thread count between 1 and {limit} (NUMBA_NUM_THREADS), got {count}")
    numba.set_num_threads(count)
    try:
        import torch
    except ImportError:
        return count
    torch.set_num_threads(count)
    return count


def _summarise(samples: list[float]) -> Timing:
    return Timing(best=min(samples), median=statistics.median(samples), repeats=len(samples))


def time_host(
    run: Callable[[], Any], *, min_repeats: int = 3, max_repeats: int = 50, budget: float = 0.25
) -> Timing:
    """Time ``run()`` on the host after one warm-up call.

    Calls shorter than ~50 µs are batched into one sample so the clock's
    resolution and the loop do not dominate.

    Parameters
    ----------
    run : callable
        Called with no arguments.
    min_repeats, max_repeats : int
        Bounds on the number of samples.
    budget : float
        Seconds of sampling after which no new sample starts (once
        ``min_repeats`` are taken).

    Returns
    -------
    Timing
        Seconds per call.
    """
    return time_host_interleaved({"run": run}, min_repeats=min_repeats, max_repeats=max_repeats,
                                 budget=budget)["run"]


def time_host_interleaved(
    runs: Mapping[str, Callable[[], Any]], *, min_repeats: int = 3, max_repeats: int = 50,
    budget: float = 0.25,
) -> dict[str, Timing]:
    """Time several callables on the host, taking their samples in turn.

    Round-robin sampling gives every implementation the same share of
    whatever else the machine is doing while they are measured, so their
    ratios stay meaningful on a shared machine. Each callable gets one
    warm-up call; calls shorter than ~50 µs are batched into one sample.

    Parameters
    ----------
    runs : mapping of str to callable
        The callables, by name; each is called with no arguments.
    min_repeats, max_repeats : int
        Bounds on the number of samples of each.
    budget : float
        Seconds of sampling per callable after which it takes no new sample
        (once it has ``min_repeats``).

    Returns
    -------
    dict of str to Timing
        Seconds per call, by name.
    """
    batches = {}
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        batches[name] = max(1, int(5e-5 / max(first, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    spent = dict.fromkeys(runs, 0.0)

    def wants_more(name: str) -> bool:
        taken = len(samples[name])
        return taken < min_repeats or (spent[name] < budget and taken < max_repeats)

    while any(wants_more(name) for name in runs):
        for name, run in runs.items():
            if not wants_more(name):
                continue
            batch = batches[name]
            start = time.perf_counter()
            for _ in range(batch):
                run()
            elapsed = time.perf_counter() - start
            samples[name].append(elapsed / batch)
            spent[name] += elapsed
    return {name: _summarise(values) for name, values in samples.items()}


def time_cuda(
    run: Callable[[], Any], *, min_repeats: int = 5, max_repeats: int = 100, budget: float = 0.25
) -> Timing:
    """Time ``run()`` on the GPU with CUDA events recorded around each call.

    The events measure the GPU work between them on the default stream, which
    is where both numba_bn's and PyTorch's kernels are launched here.

    Parameters
    ----------
    run : callable
        Launches the GPU work; called with no arguments.
    min_repeats, max_repeats : int
        Bounds on the number of samples.
    budget : float
        GPU seconds of sampling after which no new sample starts.

    Returns
    -------
    Timing
        Seconds per call, from ``numba.cuda.event_elapsed_time``.
    """
    from ..cuda.numba_cuda import cuda

    run()
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_repeats or (spent < budget and len(samples) < max_repeats):
        start.record()
        run()
        end.record()
        end.synchronize()
        elapsed = cuda.event_elapsed_time(start, end) / 1000.0
        samples.append(elapsed)
        spent += elapsed
    return _summarise(samples)


def time_all(
    runs: Mapping[str, Callable[[], Any]], device: str = "cpu", *, min_repeats: int = 3,
    budget: float = 0.25,
) -> dict[str, Timing]:
    """Time every callable of ``runs`` on ``device``: interleaved on the host, with CUDA events on a GPU.

    Parameters
    ----------
    runs : mapping of str to callable
    device : {"cpu", "cuda"}
    min_repeats : int
        Samples taken of each whatever the budget.
    budget : float
        Seconds of samples per callable.

    Returns
    -------
    dict of str to Timing
    """
    if device == "cuda":
        return {name: time_cuda(run, min_repeats=min_repeats, budget=budget) for name, run in runs.items()}
    return time_host_interleaved(runs, min_repeats=min_repeats, budget=budget)
