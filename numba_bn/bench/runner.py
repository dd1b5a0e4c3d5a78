"""Run a list of cases through every available implementation and collect the timings."""

from __future__ import annotations

from typing import Sequence

from .cases import OPERATIONS, Case, make_case_data
from .implementations import OURS, Implementation, implementations
from .progress import ProgressBar
from .report import CaseResult
from .timing import MIN_REPEATS, MIN_SAMPLE_SECONDS, time_all, warm_up_runs


def warm_up(cases: Sequence[Case], device: str = "cpu") -> None:
    """Compile (or load from the cache) numba_bn's kernels for every rank, layout and dtype in ``cases``, on tiny arrays.

    Tiny arrays take numba_bn's serial drivers only: the parallel ones that
    large arrays take compile at their first large call. :func:`run_cases`
    therefore warms up every case at its real size anyway; this is for
    callers that want the bulk of the compilation done up front.

    Parameters
    ----------
    cases : sequence of Case
    device : {"cpu", "cuda"}
    """
    ours = implementations(device)[0]
    assert ours.name == OURS
    kinds = {(len(case.shape), case.layout, case.dtype) for case in cases}
    for ndim, layout, dtype in sorted(kinds):
        for operation in OPERATIONS:
            tiny = Case(operation, (4, 3) + (2,) * (ndim - 2), layout, dtype)
            prepared = ours.prepare(tiny, make_case_data(tiny))
            prepared.collect(prepared.run())


def run_cases(
    cases: Sequence[Case],
    device: str = "cpu",
    chosen: Sequence[Implementation] | None = None,
    progress: ProgressBar | None = None,
    budget: float = 0.25,
    min_repeats: int = MIN_REPEATS,
    min_sample_seconds: float = MIN_SAMPLE_SECONDS,
) -> list[CaseResult]:
    """Time every implementation of every case.

    For each case, every implementation is first prepared and called once
    on the case's own arrays, untimed: that compiles (or loads) the kernels
    for its dtype, layout and size (small and large arrays take different
    drivers) and touches fresh memory. Then their samples are taken in turn
    (see :func:`~numba_bn.bench.timing.time_interleaved`), so they share
    whatever else the machine does.

    Parameters
    ----------
    cases : sequence of Case
    device : {"cpu", "cuda"}
    chosen : sequence of Implementation, optional
        Default: every available implementation for ``device``.
    progress : ProgressBar, optional
        Shows "compiling/warming up <case>", then "timing <case>", and
        advances by one step per case.
    budget : float
        Seconds of samples per implementation and case.
    min_repeats : int
        Samples of each implementation taken whatever the budget.
    min_sample_seconds : float
        Short calls are repeated within a sample until it lasts this long.

    Returns
    -------
    list of CaseResult
        One per case, in order.
    """
    chosen = implementations(device) if chosen is None else list(chosen)
    results = []
    for case in cases:
        if progress is not None:
            progress.update(f"compiling/warming up {case.name}")
        data = make_case_data(case)
        runs = {implementation.name: implementation.prepare(case, data).run for implementation in chosen}
        warm_up_runs(runs, device)
        if progress is not None:
            progress.update(f"timing {case.name}")
        timings = time_all(runs, device, min_repeats=min_repeats, budget=budget,
                           min_sample_seconds=min_sample_seconds, warm_up=False)
        results.append(CaseResult(case, device, timings))
        if progress is not None:
            progress.update(f"timing {case.name}", advance=1)
    return results
