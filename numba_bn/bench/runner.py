"""Run a list of cases through every available implementation and collect the timings."""

from __future__ import annotations

from typing import Sequence

from .cases import Case, make_case_data
from .implementations import Implementation, implementations
from .progress import ProgressBar
from .report import CaseResult
from .timing import MIN_REPEATS, MIN_SAMPLE_SECONDS, time_all, warm_up_runs


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
        Default: every available implementation for ``device``. Each case
        runs those of them that support its operation and dtype.
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
        runs = {implementation.name: implementation.prepare(case, data).run for implementation in chosen
                if implementation.runs(case)}
        warm_up_runs(runs, device)
        if progress is not None:
            progress.update(f"timing {case.name}")
        timings = time_all(runs, device, min_repeats=min_repeats, budget=budget,
                           min_sample_seconds=min_sample_seconds, warm_up=False)
        results.append(CaseResult(case, device, timings))
        if progress is not None:
            progress.update(f"timing {case.name}", advance=1)
    return results
