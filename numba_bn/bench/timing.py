"""Wall-clock timing of prepared cases, on the host or with CUDA events.

Every implementation of a case is timed the same way in the same process,
with the same thread count and, above all, *interleaved*: one sample of each
implementation in turn, round after round, so that whatever else the machine
does while a case is measured (other processes, frequency changes, a busy
memory bus) falls on all of them alike. Each sample repeats the call enough
times to last about :data:`MIN_SAMPLE_SECONDS`, so the clock's resolution and
the loop do not count, and as many rounds are taken as fit in the budget (at
least ``min_repeats``). The figure compared is the median of the samples; the
interquartile range (IQR) says how far it can be trusted.

Each sample starts with one untimed call. Switching from one implementation
to another hands the cores from one thread pool to another (Numba's, then
PyTorch's OpenMP threads, ...); on a small machine the first parallel region
after such a switch can wait milliseconds for the other pool's threads to
yield, which is a cost of alternating in a benchmark, not of either
implementation. The untimed call absorbs it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numba

#: Samples taken of each implementation of a case, whatever the budget.
MIN_REPEATS = 15
#: At most this many samples of each, however short the calls.
MAX_REPEATS = 1000
#: Each sample repeats the call until it lasts at least this long.
MIN_SAMPLE_SECONDS = 1e-3
#: Calls in one sample, at most.
_MAX_CALLS_PER_SAMPLE = 1 << 20


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one implementation: statistics of ``repeats`` samples.

    ``q1`` and ``q3`` are the lower and upper quartiles of the samples (None
    when unknown); ``samples`` are the samples themselves, in the order they
    were taken (empty when unknown), each the mean of ``calls_per_sample``
    consecutive calls.
    """

    best: float
    median: float
    repeats: int
    q1: float | None = None
    q3: float | None = None
    calls_per_sample: int = 1
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_samples(cls, samples: Sequence[float], calls_per_sample: int = 1) -> Timing:
        """The statistics of ``samples`` (seconds per call, one or more).

        Parameters
        ----------
        samples : sequence of float
        calls_per_sample : int
            How many calls each sample averages.

        Returns
        -------
        Timing
        """
        values = tuple(float(value) for value in samples)
        if not values:
            raise ValueError("expected one or more samples, got none")
        q1, median, q3 = quartiles(values)
        return cls(best=min(values), median=median, repeats=len(values), q1=q1, q3=q3,
                   calls_per_sample=calls_per_sample, samples=values)

    @property
    def relative_iqr(self) -> float | None:
        """The interquartile range over the median (0.1: the middle half of the samples spans 10%)."""
        if self.q1 is None or self.q3 is None or self.median <= 0:
            return None
        return (self.q3 - self.q1) / self.median

    def as_dict(self) -> dict[str, Any]:
        """``best``, ``median``, ``repeats``, the quartiles, ``relative_iqr`` and ``calls_per_sample``, for JSON."""
        return {"best": self.best, "median": self.median, "repeats": self.repeats,
                "q1": self.q1, "q3": self.q3, "relative_iqr": self.relative_iqr,
                "calls_per_sample": self.calls_per_sample}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Lower quartile, median and upper quartile of one or more values (linear interpolation)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def max_threads() -> int:
    """The largest thread count Numba's pool allows (``NUMBA_NUM_THREADS``)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_threads(count: int) -> int:
    """Use ``count`` threads in Numba and, when installed, in PyTorch.

    Not in JAX: XLA sizes its CPU thread pool (every core) when its backend
    starts and cannot change it in a running process.

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


# ------------------------------------------------------------------ clocks

#: ``measure(run, calls)``: seconds taken by ``calls`` consecutive calls of ``run``.
Measure = Callable[[Callable[[], Any], int], float]


def _measure_host(run: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return time.perf_counter() - start


def _cuda_measure() -> Measure:
    """CUDA events recorded around the calls on the default stream, where both numba_bn and PyTorch launch here."""
    from ..cuda.numba_cuda import cuda

    start, end = cuda.event(), cuda.event()

    def measure(run: Callable[[], Any], calls: int) -> float:
        start.record()
        for _ in range(calls):
            run()
        end.record()
        end.synchronize()
        return cuda.event_elapsed_time(start, end) / 1000.0

    return measure


def _measure_for(device: str) -> Measure:
    return _cuda_measure() if device == "cuda" else _measure_host


# ---------------------------------------------------------------- sampling


def warm_up_runs(runs: Mapping[str, Callable[[], Any]], device: str = "cpu") -> None:
    """Call each callable once, untimed (on a GPU, until its work is done).

    The first call compiles (or loads from the cache) the kernels for the
    arrays' dtype, layout and size class, and touches fresh memory.

    Parameters
    ----------
    runs : mapping of str to callable
    device : {"cpu", "cuda"}
    """
    measure = _measure_for(device)
    for run in runs.values():
        measure(run, 1)


def take_sample(run: Callable[[], Any], calls: int, measure: Measure = _measure_host) -> float:
    """Seconds taken by ``calls`` consecutive calls of ``run``, after one untimed call.

    Parameters
    ----------
    run : callable
    calls : int
    measure : callable, optional
        The clock: ``measure(run, calls)`` returns seconds.

    Returns
    -------
    float
        Seconds for all ``calls`` (not per call).
    """
    measure(run, 1)  # settles the thread pools after another implementation ran (see the module's notes)
    return measure(run, calls)


def calls_per_sample(run: Callable[[], Any], measure: Measure = _measure_host,
                     min_sample_seconds: float = MIN_SAMPLE_SECONDS) -> int:
    """How many consecutive calls of ``run`` last at least ``min_sample_seconds``.

    Times one call, then (when that is shorter) the estimated number of calls
    once more, to correct the estimate; each after an untimed call (see
    :func:`take_sample`). ``run`` should be warmed up already.

    Parameters
    ----------
    run : callable
    measure : callable, optional
        The clock: ``measure(run, calls)`` returns seconds.
    min_sample_seconds : float

    Returns
    -------
    int
        1 or more.
    """
    calls = 1
    for _ in range(2):
        elapsed = take_sample(run, calls, measure)
        if elapsed >= min_sample_seconds:
            break
        per_call = max(elapsed / calls, 1e-9)
        calls = min(_MAX_CALLS_PER_SAMPLE, max(calls + 1, math.ceil(1.2 * min_sample_seconds / per_call)))
    return calls


def time_interleaved(
    runs: Mapping[str, Callable[[], Any]], *, device: str = "cpu", min_repeats: int = MIN_REPEATS,
    max_repeats: int = MAX_REPEATS, budget: float = 0.25, min_sample_seconds: float = MIN_SAMPLE_SECONDS,
    warm_up: bool = True,
) -> dict[str, Timing]:
    """Time several callables, taking one sample of each in turn, round after round.

    Round-robin sampling gives every callable the same share of whatever else
    the machine does while they are measured, so their ratios stay
    meaningful on a shared machine; sample ``i`` of each comes from the same
    round, so the per-round ratios can be compared too. Each sample follows
    one untimed call of the same callable (see :func:`take_sample`).

    Parameters
    ----------
    runs : mapping of str to callable
        The callables, by name; each is called with no arguments.
    device : {"cpu", "cuda"}
        ``"cpu"``: wall-clock time; ``"cuda"``: CUDA events around each sample.
    min_repeats, max_repeats : int
        Bounds on the number of rounds (samples of each callable).
    budget : float
        Seconds of samples per callable: rounds stop once their timed calls
        have taken ``budget * len(runs)`` seconds in all (and ``min_repeats``
        are taken).
    min_sample_seconds : float
        Each sample repeats the call until it lasts about this long (see
        :func:`calls_per_sample`).
    warm_up : bool
        Call each callable once, untimed, first (see :func:`warm_up_runs`).

    Returns
    -------
    dict of str to Timing
        Seconds per call, by name, in the order of ``runs``.
    """
    measure = _measure_for(device)
    calls = {}
    for name, run in runs.items():
        if warm_up:
            measure(run, 1)
        calls[name] = calls_per_sample(run, measure, min_sample_seconds)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    spent = 0.0
    rounds = 0
    while rounds < min_repeats or (spent < budget * len(runs) and rounds < max_repeats):
        for name, run in runs.items():
            elapsed = take_sample(run, calls[name], measure)
            samples[name].append(elapsed / calls[name])
            spent += elapsed
        rounds += 1
    return {name: Timing.from_samples(samples[name], calls[name]) for name in runs}


def time_host_interleaved(
    runs: Mapping[str, Callable[[], Any]], *, min_repeats: int = MIN_REPEATS, max_repeats: int = MAX_REPEATS,
    budget: float = 0.25, min_sample_seconds: float = MIN_SAMPLE_SECONDS, warm_up: bool = True,
) -> dict[str, Timing]:
    """:func:`time_interleaved` on the host (wall-clock time).

    Parameters
    ----------
    runs : mapping of str to callable
    min_repeats, max_repeats, budget, min_sample_seconds, warm_up
        As for :func:`time_interleaved`.

    Returns
    -------
    dict of str to Timing
    """
    return time_interleaved(runs, device="cpu", min_repeats=min_repeats, max_repeats=max_repeats,
                            budget=budget, min_sample_seconds=min_sample_seconds, warm_up=warm_up)


def time_host(
    run: Callable[[], Any], *, min_repeats: int = MIN_REPEATS, max_repeats: int = MAX_REPEATS,
    budget: float = 0.25, min_sample_seconds: float = MIN_SAMPLE_SECONDS,
) -> Timing:
    """Time ``run()`` on the host after one warm-up call.

    Parameters
    ----------
    run : callable
        Called with no arguments.
    min_repeats, max_repeats : int
        Bounds on the number of samples.
    budget : float
        Seconds of sampling after which no new sample starts (once
        ``min_repeats`` are taken).
    min_sample_seconds : float
        Short calls are repeated within a sample until it lasts this long.

    Returns
    -------
    Timing
        Seconds per call.
    """
    return time_host_interleaved({"run": run}, min_repeats=min_repeats, max_repeats=max_repeats,
                                 budget=budget, min_sample_seconds=min_sample_seconds)["run"]


def time_cuda(
    run: Callable[[], Any], *, min_repeats: int = MIN_REPEATS, max_repeats: int = MAX_REPEATS,
    budget: float = 0.25, min_sample_seconds: float = MIN_SAMPLE_SECONDS,
) -> Timing:
    """Time ``run()`` on the GPU with CUDA events recorded around each sample.

    Parameters
    ----------
    run : callable
        Launches the GPU work; called with no arguments.
    min_repeats, max_repeats : int
        Bounds on the number of samples.
    budget : float
        GPU seconds of sampling after which no new sample starts.
    min_sample_seconds : float
        Short calls are repeated within a sample until it lasts this long.

    Returns
    -------
    Timing
        Seconds per call, from ``numba.cuda.event_elapsed_time``.
    """
    return time_interleaved({"run": run}, device="cuda", min_repeats=min_repeats, max_repeats=max_repeats,
                            budget=budget, min_sample_seconds=min_sample_seconds)["run"]


def time_all(
    runs: Mapping[str, Callable[[], Any]], device: str = "cpu", *, min_repeats: int = MIN_REPEATS,
    budget: float = 0.25, min_sample_seconds: float = MIN_SAMPLE_SECONDS, warm_up: bool = True,
) -> dict[str, Timing]:
    """Time every callable of ``runs`` on ``device``, interleaved (see :func:`time_interleaved`).

    Parameters
    ----------
    runs : mapping of str to callable
    device : {"cpu", "cuda"}
        Wall-clock time on the host, CUDA events on a GPU.
    min_repeats : int
        Samples taken of each whatever the budget.
    budget : float
        Seconds of samples per callable.
    min_sample_seconds : float
        Length of one sample, at least.
    warm_up : bool
        Call each once, untimed, first.

    Returns
    -------
    dict of str to Timing
    """
    return time_interleaved(runs, device=device, min_repeats=min_repeats, budget=budget,
                            min_sample_seconds=min_sample_seconds, warm_up=warm_up)
