"""Run a list of cases through every available implementation and collect the timings."""

from __future__ import annotations

from typing import Sequence

from .cases import OPERATIONS, Case, make_case_data
from .implementations import OURS, Implementation, implementations
from .progress import ProgressBar
from .report import CaseResult
from .timing import time_all


def warm_up(cases: Sequence[Case], device: str = "cpu") -> None:
    """Compile (or load from the cache) numba_bn's kernels for every rank, layout and dtype in ``cases``.

    Runs each operation once on a tiny array of each kind, so no compilation
    lands inside a timed call.

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
    min_repeats: int = 3,
) -> list[CaseResult]:
    """Time every implementation of every case.

    All implementations of a case run on the same arrays; on the host their
    samples are taken in turn, so they share whatever else the machine does.

    Parameters
    ----------
    cases : sequence of Case
    device : {"cpu", "cuda"}
    chosen : sequence of Implementation, optional
        Default: every available implementation for ``device``.
    progress : ProgressBar, optional
        Advanced by one step per case.
    budget : float
        Seconds of samples per implementation and case.
    min_repeats : int
        Samples taken whatever the budget.

    Returns
    -------
    list of CaseResult
        One per case, in order.
    """
    chosen = implementations(device) if chosen is None else list(chosen)
    results = []
    for case in cases:
        if progress is not None:
            progress.update(case.name)
        data = make_case_data(case)
        runs = {implementation.name: implementation.prepare(case, data).run for implementation in chosen}
        timings = time_all(runs, device, min_repeats=min_repeats, budget=budget)
        results.append(CaseResult(case, device, timings))
        if progress is not None:
            progress.update(case.name, advance=1)
    return results
