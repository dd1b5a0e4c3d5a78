"""Start-up cost: ``import numba_bn`` + the first training step, in a fresh process.

``cold``: an empty ``NUMBA_CACHE_DIR`` each round, so every kernel compiles.
``warm``: the cache filled by an earlier process, so kernels load from disk.
The benchmark's time is the child process's wall time (interpreter start
included); ``extra_info`` holds the best import and first-call times measured
inside the child over the rounds.
"""

import pytest

from numba_bn.bench.startup import measure_startup


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_startup(benchmark, cache, tmp_path_factory):
    warm_dir = str(tmp_path_factory.mktemp("warm_cache"))
    if cache == "warm":
        measure_startup(warm_dir)

    def setup():
        directory = warm_dir if cache == "warm" else str(tmp_path_factory.mktemp("cold_cache"))
        return (directory,), {}

    rounds = []

    def measure(directory):
        rounds.append(measure_startup(directory))

    benchmark.group = "startup"
    benchmark.extra_info["cache"] = cache
    benchmark.pedantic(measure, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info.update(
        import_seconds=min(r.import_seconds for r in rounds),
        first_call_seconds=min(r.first_call_seconds for r in rounds),
    )
    assert all(r.import_seconds > 0 and r.first_call_seconds > 0 for r in rounds)
