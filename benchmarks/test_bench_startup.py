"""Start-up cost: ``import numba_bn`` + the first training step, in a fresh process.

``cold``: an empty ``NUMBA_CACHE_DIR`` each round, so every kernel compiles.
``warm``: the cache filled by an earlier process, so kernels load from disk.
The benchmark's time is the child process's wall time (interpreter start
included); ``extra_info`` holds the import and first-call times measured
inside the child.
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

    benchmark.group = "startup"
    benchmark.extra_info["cache"] = cache
    timing = benchmark.pedantic(measure_startup, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info.update(import_seconds=timing.import_seconds, first_call_seconds=timing.first_call_seconds)
    assert timing.import_seconds > 0 and timing.first_call_seconds > 0
