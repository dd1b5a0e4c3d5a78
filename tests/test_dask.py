"""``numba_bn.dask``: exact statistics and batch norm of Dask arrays, on every kind of scheduler.

The statistics are checked against the float64 NumPy reference and against
the in-memory ``nbn.channel_stats``; the outputs against the in-memory
``nbn.batch_norm`` (bit for bit where the statistics are the same). The
schedulers are real: dask's threads, synchronous and process-pool schedulers
and a ``dask.distributed`` cluster of two worker processes.
"""

import concurrent.futures
import doctest
import logging
import math
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from reference import ref_batch_stats, ref_running_update

import numba_bn as nbn
import numba_bn.dask as nbd

ROOT = Path(__file__).resolve().parent.parent
#: Variables the worker processes need as this process has them: the kernel cache above all.
WORKER_ENVIRONMENT = (
    "NUMBA_CACHE_DIR",
    "NUMBA_ENABLE_CUDASIM",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "NUMBA_BN_COMPILE_NOTICE",
)
# A notice distributed gives when the workers' scratch directories are slow to
# create (busy shared disks): about the machine, not a failure of the code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Creating scratch directories is taking a surprisingly long time:UserWarning"
)

#: Relative agreement of float64 statistics with the reference.
RTOL = 1e-12

# (shape, chunks, channel_axis): odd chunks along every axis, the channel axis included.
ODD_CHUNKS = [
    ((10, 7, 13), ((3, 5, 2), (1, 2, 4), (7, 6)), 1),
    ((10, 13, 7), ((3, 5, 2), (7, 6), (1, 2, 4)), -1),
    ((9, 5, 4, 3), ((1, 8), (2, 3), (3, 1), (2, 1)), 1),
    ((9, 4, 3, 5), ((4, 5), (1, 3), (1, 2), (5,)), -1),
    ((11, 6), ((4, 4, 3), (1, 5)), 1),
]


def _ids(case):
    shape, _, axis = case
    return f"{'x'.join(map(str, shape))}-axis{axis}"


def random_data(rng, shape, dtype, offset=2.0, scale=3.0):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def reference_stats(x, channel_axis):
    """``(count, mean, m2)`` by the float64 two-pass NumPy reference."""
    mean, var, count = ref_batch_stats(x, channel_axis)
    return count, mean, var * count


def assert_matches_reference(stats, x, channel_axis, rtol=RTOL):
    count, mean, m2 = reference_stats(x, channel_axis)
    assert stats.count == count
    np.testing.assert_allclose(stats.mean, mean, rtol=rtol, atol=0)
    np.testing.assert_allclose(stats.m2, m2, rtol=rtol, atol=0)


def assert_same_bits(a, b):
    assert a == b, (a.count, b.count, a.mean - b.mean, a.m2 - b.m2)


# --------------------------------------------------------------- schedulers


@pytest.fixture(scope="module")
def process_pool():
    """Two spawned processes for dask's ``processes`` scheduler, started once."""
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def cluster_client():
    """A ``dask.distributed`` cluster of two single-threaded worker processes, started once."""
    env = {name: os.environ[name] for name in WORKER_ENVIRONMENT if name in os.environ}
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env=env,
        timeout="60s",
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster, timeout="60s", set_as_default=False)
    yield client
    client.close(timeout=30)
    cluster.close(timeout=30)


LOCAL_SCHEDULERS = ["threads", "sync"]


@pytest.fixture(params=LOCAL_SCHEDULERS + ["processes", "distributed"])
def scheduler(request):
    """Each kind of scheduler in turn, as the active one."""
    if request.param == "processes":
        settings = {"scheduler": "processes", "pool": request.getfixturevalue("process_pool")}
    elif request.param == "distributed":
        settings = {"scheduler": request.getfixturevalue("cluster_client")}
    else:
        settings = {"scheduler": request.param}
    with dask.config.set(**settings):
        yield request.param


# ------------------------------------------------------------ channel_stats


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", ODD_CHUNKS, ids=_ids)
def test_channel_stats_with_odd_chunks_match_the_reference(rng, case, dtype):
    shape, chunks, channel_axis = case
    x = random_data(rng, shape, dtype)
    stats = nbd.channel_stats(da.from_array(x, chunks=chunks), channel_axis=channel_axis)
    assert_matches_reference(stats, x, channel_axis)
    in_memory = nbn.channel_stats(x, channel_axis=channel_axis)
    assert stats.count == in_memory.count
    np.testing.assert_allclose(stats.mean, in_memory.mean, rtol=RTOL, atol=0)
    np.testing.assert_allclose(stats.m2, in_memory.m2, rtol=RTOL, atol=0)


@pytest.mark.parametrize("chunks", [(7, 3, 9), (64, 1, 50), (1, 3, 50), (5, 2, 3)])
def test_channel_stats_is_stable_at_a_large_offset(rng, chunks):
    # float32 data at |mean| / std = 1e4: E[x**2] - E[x]**2 in float64 would keep ~8 digits.
    x = random_data(rng, (64, 3, 50), np.float32, offset=1e4, scale=1.0)
    stats = nbd.channel_stats(da.from_array(x, chunks=chunks))
    assert_matches_reference(stats, x, 1)


def test_every_chunking_gives_the_same_statistics(rng):
    x = random_data(rng, (12, 4, 10), np.float64)
    results = [nbd.channel_stats(da.from_array(x, chunks=chunks)) for chunks in [(12, 4, 10), (1, 1, 1), (5, 3, 4)]]
    for stats in results:
        assert_matches_reference(stats, x, 1)


def test_many_blocks_take_several_merge_levels(rng):
    x = random_data(rng, (40, 3, 6), np.float32)
    with dask.config.set(split_every=2):
        stats = nbd.channel_stats(da.from_array(x, chunks=(1, 1, 1)))
    assert_matches_reference(stats, x, 1)


def test_empty_chunks_add_nothing(rng):
    x = random_data(rng, (9, 3, 4), np.float32)
    with_empty = da.from_array(x, chunks=((4, 0, 5), (2, 0, 1), (0, 4)))
    assert_matches_reference(nbd.channel_stats(with_empty), x, 1)


@pytest.mark.parametrize("shape", [(0, 3, 4), (5, 3, 0), (0, 3)])
def test_an_empty_array_has_count_zero(shape):
    stats = nbd.channel_stats(da.zeros(shape, dtype=np.float32, chunks=2))
    assert stats.count == 0
    assert_same_bits(stats, nbn.ChannelStats.empty(3))
    assert_same_bits(stats, nbn.channel_stats(np.zeros(shape, np.float32)))


def test_unknown_chunk_sizes_off_the_channel_axis(rng):
    x = random_data(rng, (20, 3, 4), np.float32)
    dx = da.from_array(x, chunks=(6, 2, 3))
    kept = x[:, 0, 0] > 2.0
    filtered = dx[dx[:, 0, 0] > 2.0]
    assert math.isnan(filtered.shape[0])
    assert_matches_reference(nbd.channel_stats(filtered), x[kept], 1)
    running_mean, running_var = _buffers()
    y = nbd.batch_norm(filtered, running_mean, running_var, training=True)
    expected_buffers = _buffers()
    expected = nbn.batch_norm(x[kept], *expected_buffers, training=True)
    np.testing.assert_allclose(y.compute(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(running_var, expected_buffers[1], rtol=1e-6)
    # One value per channel is found only by computing; the buffers are still untouched.
    single = dx[:1, :, :1][dx[:1, 0, 0] < np.inf]
    before = running_mean.copy(), running_var.copy()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nbd.batch_norm(single, running_mean, running_var, training=True)
    np.testing.assert_array_equal(running_mean, before[0])
    np.testing.assert_array_equal(running_var, before[1])


def test_zero_channels():
    stats = nbd.channel_stats(da.zeros((4, 0, 2), dtype=np.float32, chunks=2))
    assert stats.count == 0 and stats.num_features == 0


def test_nan_propagates_to_its_channel_only(rng):
    x = random_data(rng, (8, 3, 5), np.float64)
    x[6, 1, 2] = np.nan
    stats = nbd.channel_stats(da.from_array(x, chunks=(3, 2, 2)))
    assert np.isnan(stats.mean[1]) and np.isnan(stats.m2[1])
    kept = [0, 2]
    _, mean, m2 = reference_stats(x[:, kept], 1)
    np.testing.assert_allclose(stats.mean[kept], mean, rtol=RTOL)
    np.testing.assert_allclose(stats.m2[kept], m2, rtol=RTOL)


def test_byte_swapped_and_strided_input(rng):
    x = random_data(rng, (10, 4, 6), np.float32)
    swapped = x.astype(">f4")[:, :, ::2]
    stats = nbd.channel_stats(da.from_array(swapped, chunks=(3, 3, 2)))
    assert_matches_reference(stats, x[:, :, ::2], 1)


def test_channel_stats_has_the_same_bits_on_every_scheduler(rng, scheduler):
    x = random_data(rng, (12, 5, 9), np.float32)
    dx = da.from_array(x, chunks=((5, 7), (2, 3), (4, 5)))
    with dask.config.set(scheduler="sync"):
        expected = nbd.channel_stats(dx)
    stats = nbd.channel_stats(dx)
    assert_same_bits(stats, expected)
    assert_matches_reference(stats, x, 1)


def test_the_cluster_runs_the_tasks_in_its_worker_processes(rng, cluster_client):
    x = random_data(rng, (12, 5, 9), np.float32)
    with dask.config.set(scheduler=cluster_client), distributed.get_task_stream(cluster_client) as tasks:
        stats = nbd.channel_stats(da.from_array(x, chunks=(3, 5, 9)))
    assert_matches_reference(stats, x, 1)
    workers = set(cluster_client.scheduler_info()["workers"])
    assert tasks.data and {task["worker"] for task in tasks.data} <= workers
    assert os.getpid() not in cluster_client.run(os.getpid).values()


# --------------------------------------------------------------- batch_norm


def vectors(rng, channels, affine):
    running_mean = rng.normal(size=channels).astype(np.float32)
    running_var = rng.uniform(0.5, 2.0, size=channels).astype(np.float32)
    weight = rng.normal(size=channels).astype(np.float32) if affine else None
    bias = rng.normal(size=channels) if affine else None  # float64: vectors may have any float dtype
    return running_mean, running_var, weight, bias


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("case", ODD_CHUNKS[:3], ids=_ids)
def test_eval_output_has_the_bits_of_the_in_memory_call(rng, case, dtype, affine):
    shape, chunks, channel_axis = case
    x = random_data(rng, shape, dtype)
    running_mean, running_var, weight, bias = vectors(rng, shape[channel_axis], affine)
    dx = da.from_array(x, chunks=chunks)
    y = nbd.batch_norm(dx, running_mean, running_var, weight, bias, eps=1e-3, channel_axis=channel_axis)
    assert isinstance(y, da.Array) and y.chunks == dx.chunks and y.dtype == x.dtype
    expected = nbn.batch_norm(x, running_mean, running_var, weight, bias, eps=1e-3, channel_axis=channel_axis)
    np.testing.assert_array_equal(y.compute(), expected)


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("case", ODD_CHUNKS, ids=_ids)
def test_training_matches_the_in_memory_call(rng, case, affine):
    shape, chunks, channel_axis = case
    x = random_data(rng, shape, np.float32, offset=50.0)
    running_mean, running_var, weight, bias = vectors(rng, shape[channel_axis], affine)
    ours = running_mean.copy(), running_var.copy()
    dx = da.from_array(x, chunks=chunks)
    y = nbd.batch_norm(dx, *ours, weight, bias, training=True, momentum=0.3, channel_axis=channel_axis)
    assert y.chunks == dx.chunks and y.dtype == x.dtype
    y = y.compute()
    in_memory = running_mean.copy(), running_var.copy()
    expected = nbn.batch_norm(x, *in_memory, weight, bias, training=True, momentum=0.3, channel_axis=channel_axis)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[0], in_memory[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], in_memory[1], rtol=1e-6)
    # The running update is the reference's, from the statistics of the whole array.
    mean, var, count = ref_batch_stats(x, channel_axis)
    new_mean, new_var = ref_running_update(running_mean, running_var, mean, var, count, 0.3)
    np.testing.assert_allclose(ours[0], new_mean, rtol=1e-6)
    np.testing.assert_allclose(ours[1], new_var, rtol=1e-6)
    # Normalising with the same statistics gives the in-memory bits.
    stats = nbd.channel_stats(dx, channel_axis=channel_axis)
    same_stats = nbn.batch_norm(x, stats.mean, stats.var, weight, bias, channel_axis=channel_axis)
    np.testing.assert_array_equal(y, same_stats)


def test_training_without_running_buffers(rng):
    x = random_data(rng, (6, 3, 4), np.float64)
    y = nbd.batch_norm(da.from_array(x, chunks=(4, 2, 3)), None, None, training=True)
    np.testing.assert_allclose(y.compute(), nbn.batch_norm(x, None, None, training=True), rtol=1e-12, atol=1e-12)


def test_training_on_an_empty_array_leaves_the_buffers(rng):
    running_mean, running_var = np.arange(3, dtype=np.float32), np.ones(3, np.float32)
    dx = da.zeros((0, 3, 4), dtype=np.float32, chunks=2)
    y = nbd.batch_norm(dx, running_mean, running_var, training=True)
    assert y.shape == (0, 3, 4) and y.chunks == dx.chunks
    assert y.compute().shape == (0, 3, 4)
    np.testing.assert_array_equal(running_mean, np.arange(3))
    np.testing.assert_array_equal(running_var, np.ones(3))


def test_output_uses_the_vectors_as_they_were_at_the_call(rng):
    x = random_data(rng, (6, 3, 4), np.float32)
    running_mean, running_var, weight, bias = vectors(rng, 3, True)
    expected = nbn.batch_norm(x, running_mean, running_var, weight, bias)
    y = nbd.batch_norm(da.from_array(x, chunks=2), running_mean, running_var, weight, bias)
    for vector in (running_mean, running_var, weight, bias):
        vector[...] = 7
    np.testing.assert_array_equal(y.compute(), expected)


def test_batch_norm_on_every_scheduler(rng, scheduler):
    x = random_data(rng, (12, 5, 9), np.float32)
    dx = da.from_array(x, chunks=((5, 7), (2, 3), (4, 5)))
    running_mean, running_var, weight, bias = vectors(rng, 5, True)
    expected_buffers = running_mean.copy(), running_var.copy()
    with dask.config.set(scheduler="sync"):
        expected = nbd.batch_norm(dx, *expected_buffers, weight, bias, training=True).compute()
    y = nbd.batch_norm(dx, running_mean, running_var, weight, bias, training=True)
    np.testing.assert_array_equal(y.compute(), expected)
    np.testing.assert_array_equal(running_mean, expected_buffers[0])
    np.testing.assert_array_equal(running_var, expected_buffers[1])


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "function",
    [nbd.channel_stats, lambda x, **kw: nbd.batch_norm(x, None, None, training=True, **kw)],
    ids=["channel_stats", "batch_norm"],
)
def test_bad_inputs_are_named(function):
    x = np.ones((4, 3, 2), np.float32)
    with pytest.raises(TypeError, match=r"dask\.array\.Array, got numpy\.ndarray.*numba_bn\..*from_array"):
        function(x)
    with pytest.raises(TypeError, match=r"got list; wrap .*dask\.array\.from_array"):
        function(x.tolist())
    with pytest.raises(TypeError, match=r"float16, float32 or float64, got int64"):
        function(da.ones((4, 3), dtype=np.int64, chunks=2))
    with pytest.raises(ValueError, match=r"2 or more dimensions.*got 1D"):
        function(da.ones(4, dtype=np.float32, chunks=2))
    with pytest.raises(ValueError, match=r"1 \(channels first\) or -1 \(channels last\), got 0"):
        function(da.ones((4, 3), dtype=np.float32, chunks=2), channel_axis=0)
    with pytest.raises(TypeError, match=r"channel_axis to be 1 or -1, got str"):
        function(da.ones((4, 3), dtype=np.float32, chunks=2), channel_axis="1")
    unknown_channels = da.ones((4, 3), dtype=np.float32, chunks=2)
    unknown_channels = unknown_channels[:, unknown_channels[0] > 0]
    with pytest.raises(ValueError, match=r"known chunk sizes along the channel axis 1.*compute_chunk_sizes"):
        function(unknown_channels)
    masked = da.ma.masked_array(da.ones((4, 3), dtype=np.float32, chunks=2))
    with pytest.raises(TypeError, match=r"numpy\.ndarray blocks.*MaskedArray"):
        function(masked)


def _buffers():
    return np.zeros(3, np.float32), np.ones(3, np.float32)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda x, m, v: nbd.batch_norm(x[:1, :, :1], m, v, training=True),
            ValueError,
            "more than 1 value per channel",
        ),
        (lambda x, m, v: nbd.batch_norm(x, m, v, np.ones(4), training=True), ValueError, r"weight of shape \(3,\)"),
        (lambda x, m, v: nbd.batch_norm(x, m, v, np.ones(3, np.int32), training=True), TypeError, "weight of a float"),
        (lambda x, m, v: nbd.batch_norm(x, m, v, da.ones(3, chunks=3), training=True), TypeError, "numpy.ndarray"),
        (lambda x, m, v: nbd.batch_norm(x, m, None, training=True), ValueError, "both given or both None"),
        (lambda x, m, v: nbd.batch_norm(x, None, None), ValueError, "when training=False"),
        (lambda x, m, v: nbd.batch_norm(x, m, v, training=1), TypeError, "training to be a bool"),
        (lambda x, m, v: nbd.batch_norm(x, m, v, training=True, momentum="0.1"), TypeError, "momentum"),
        (lambda x, m, v: nbd.batch_norm(x, m, v, training=True, eps=-1.0), ValueError, "eps >= 0"),
        (lambda x, m, v: nbd.batch_norm(x, m, v, training=True, momentum=math.nan), ValueError, "finite"),
    ],
)
def test_a_call_that_raises_changes_nothing(call, error, message):
    x = da.ones((4, 3, 2), dtype=np.float32, chunks=2)
    running_mean, running_var = _buffers()
    with pytest.raises(error, match=message):
        call(x, running_mean, running_var)
    expected_mean, expected_var = _buffers()
    np.testing.assert_array_equal(running_mean, expected_mean)
    np.testing.assert_array_equal(running_var, expected_var)


def test_read_only_buffers_are_refused_for_training_only():
    x = da.ones((4, 3, 2), dtype=np.float32, chunks=2)
    running_mean, running_var = _buffers()
    running_mean.setflags(write=False)
    with pytest.raises(ValueError, match="running_mean to be writeable"):
        nbd.batch_norm(x, running_mean, running_var, training=True)
    np.testing.assert_array_equal(running_var, np.ones(3))
    nbd.batch_norm(x, running_mean, running_var).compute()


# ---------------------------------------------------- imports, docs, example


def _run_python(code, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_import_numba_bn_leaves_dask_alone_and_a_missing_dask_is_explained():
    code = (
        "import sys\n"
        "import numba_bn\n"
        "assert 'dask' not in sys.modules and 'numba_bn.dask' not in sys.modules, sorted(sys.modules)\n"
        "sys.modules['dask'] = None  # as if dask were not installed\n"
        "try:\n"
        "    import numba_bn.dask\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert "pip install 'numba_bn[dask]'" in result.stdout


@pytest.mark.parametrize("function", [nbd.channel_stats, nbd.batch_norm], ids=lambda f: f.__name__)
def test_docstrings_match_the_signatures(function):
    from test_docstrings import docstring_problems

    assert docstring_problems(function) == []


def test_docstring_examples_run():
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(exclude_empty=True).find(nbd, nbd.__name__):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted > 0


def run_example(tmp_path, *options):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "dask_dataset_stats.py"),
            "--small",
            "--path",
            str(tmp_path),
            *options,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the statistics match" in result.stdout
    return result.stdout


def test_dataset_example_runs_in_small_mode(tmp_path):
    run_example(tmp_path)
    assert (tmp_path / "dataset.npy").exists()


def test_dataset_example_on_a_cluster_with_zarr(tmp_path):
    pytest.importorskip("zarr")
    out = run_example(tmp_path, "--zarr", "--cluster")
    assert "local cluster of 2 worker processes" in out and "tasks ran on the workers" in out
    assert (tmp_path / "dataset.zarr").exists()


def test_bench_dask_command(capsys):
    from numba_bn import cli

    assert cli.main(["bench-dask", "--shape", "4x3x5", "--batch-chunk", "2", "--budget", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "4x3x5 float32, chunks of 2 (2 chunks)" in out
    assert "speedup of numba_bn.dask over dask.array" in out and "in-memory numba_bn time" in out
