"""Dask benchmarks: ``numba_bn.dask.channel_stats`` against dask.array's mean + var, and the in-memory kernel.

One case, a (64, 64, 56, 56) float32 array chunked by 8 along the batch, on
dask's threaded scheduler. ``test_dask_channel_stats`` times each
implementation in its own benchmark (one group, side by side with
``--benchmark-enable``); ``test_dask_channel_stats_ratios`` takes their
samples in turn and records the two ratios (speedup over dask.array, overhead
over the in-memory call) in the JSON's ``extra_info``. Plain ``pytest`` runs
both once on a small stand-in and checks that the implementations agree.
"""

import pytest

pytest.importorskip("dask.array")

from numba_bn.bench.dask_stats import (
    DEFAULT_BATCH_CHUNK,
    DEFAULT_SHAPE,
    IMPLEMENTATIONS,
    SMOKE_BATCH_CHUNK,
    SMOKE_SHAPE,
    DaskStatsCase,
    compare,
    format_result,
    largest_disagreement,
    make_data,
    make_runs,
)

CASE = DaskStatsCase(DEFAULT_SHAPE, DEFAULT_BATCH_CHUNK)
SMOKE_CASE = DaskStatsCase(SMOKE_SHAPE, SMOKE_BATCH_CHUNK)


def case_for(benchmark):
    return SMOKE_CASE if benchmark.disabled else CASE


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_dask_channel_stats(benchmark, implementation):
    case = case_for(benchmark)
    run = make_runs(*make_data(case))[implementation]
    run()  # compilation and first-touch page faults stay out of the timings
    benchmark.group = f"dask channel_stats {case.name}"
    benchmark.extra_info.update(shape=list(case.shape), batch_chunk=case.batch_chunk, implementation=implementation)
    benchmark(run)


def test_dask_channel_stats_ratios(benchmark, capsys):
    case = case_for(benchmark)
    if benchmark.disabled:
        assert largest_disagreement(make_runs(*make_data(case))) < 1e-5  # dask.array accumulates float32 in float32
        result = compare(case, budget=0.0, min_repeats=1, min_sample_seconds=0.0)
    else:
        result = compare(case, budget=2.0)
    benchmark.group = f"dask channel_stats ratios {case.name}"
    benchmark.extra_info.update(result.as_dict())
    with capsys.disabled():
        print("\n" + format_result(result))
    run = make_runs(*make_data(case))["numba_bn.dask"]
    benchmark.pedantic(run, rounds=1, iterations=1)
