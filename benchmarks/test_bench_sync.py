"""SyncBatchNorm's training step against the same step without communication, under a real mpiexec.

One benchmark per (processes, per-process shape): the figure of interest is
the ratio ``sync / local`` of the slowest process's step times, measured in
the same run with the two variants interleaved (``numba_bn.bench.sync``),
and the exchange's share of the synchronised step. With the default
``--benchmark-disable`` each case runs once on a tiny shape as a smoke test.
"""

import pytest

from numba_bn.bench import sync

pytest.importorskip("mpi4py", reason="needs the mpi extra: pip install 'numba_bn[mpi]'")

SHAPES = [(32, 64, 56, 56), (8, 64, 8, 8)]


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_sync_batchnorm_step(benchmark, ranks, shape):
    if sync.mpiexec() is None:
        pytest.skip("no mpiexec found")
    if benchmark.disabled:
        if shape != SHAPES[-1]:
            pytest.skip("one smoke run per process count")
        shape, rounds = (4, 8, 3, 3), 2
    else:
        rounds = sync.ROUNDS
    result = benchmark.pedantic(sync.run, args=(ranks, shape, rounds), rounds=1, iterations=1)
    assert result["ranks"] == ranks and result["median_seconds"]["sync"] > 0
    benchmark.group = f"SyncBatchNorm {ranks} processes"
    benchmark.extra_info.update(result)
