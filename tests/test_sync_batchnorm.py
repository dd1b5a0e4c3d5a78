"""SyncBatchNorm: real ``mpiexec`` runs of ``mpi_scenarios.py``, and the one-process behaviour.

The multi-process tests start ``mpiexec -n K`` from the test with a timeout,
so a collective that hangs fails the test instead of blocking the suite.
They need mpi4py and an MPI launcher (``pip install 'numba_bn[mpi]'``) and
skip without them.
"""

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numba_bn as nbn
from isolated import run_script
from numba_bn import config
from numba_bn.bench.sync import mpiexec, oversubscription_settings

MPI = pytest.importorskip("mpi4py.MPI", reason="SyncBatchNorm needs mpi4py (pip install 'numba_bn[mpi]')")

TESTS = Path(__file__).resolve().parent
#: Seconds before a run counts as hung (the simulator case is the slowest).
TIMEOUT = 300


@pytest.fixture(scope="module")
def compiled_kernels():
    """Compile (or load) the scenarios' kernels once here, so the ranks load them from the cache
    instead of all compiling them at once."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for channel_axis in (1, -1):
            bn = nbn.SyncBatchNorm(3, dtype=dtype, channel_axis=channel_axis)
            x = rng.standard_normal((4, 3, 3)).astype(dtype)
            bn.backward(bn(x))
            bn.eval()(x)


def _run_ranks(ranks, *args, env=None, script=TESTS / "mpi_scenarios.py"):
    """``(exit status, rank 0's JSON report, stderr)`` of ``mpiexec -n ranks python script *args``."""
    process, stdout, stderr = _launch(ranks, script, args, env)
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert reports, f"no report from rank 0 (exit status {process.returncode}):\n{stdout}\n{stderr[-4000:]}"
    return process.returncode, reports[-1], stderr


def _launch(ranks, script, args, env):
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec found (pip install 'numba_bn[mpi]' installs one)")
    environment = dict(os.environ, NUMBA_NUM_THREADS="1", NUMBA_BN_COMPILE_NOTICE="0", **(env or {}))
    environment.update(oversubscription_settings(ranks))
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(Path(nbn.__file__).resolve().parents[1]), str(TESTS), environment.get("PYTHONPATH", "")]
    )
    command = [launcher, "-n", str(ranks), sys.executable, str(script), *args]
    try:
        # A new session, so that a hung run's whole process group can be killed.
        process = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        pytest.fail(f"mpiexec -n {ranks} did not finish within {TIMEOUT} s: a collective hung")
    return process, stdout, stderr


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_ranks_match_one_batchnorm_on_the_whole_batch(ranks, compiled_kernels):
    """Unequal and empty shares, channels-last, |mean|/std = 1e4, momentum=None, affine off,
    no running stats, two steps then eval; bad input on one rank; identical buffers on every rank."""
    status, report, stderr = _run_ranks(ranks)
    assert report["failures"] == [], "\n".join(report["failures"])
    assert status == 0, stderr[-4000:]
    assert report["ranks"] == ranks and report["scenarios"] >= 14


@pytest.mark.cuda
def test_cuda_ranks_match_one_batchnorm(compiled_kernels):
    """device="cuda": the states are staged through the host (the CUDA simulator without a GPU)."""
    from cuda_support import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason:
        pytest.skip(reason)
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "1")
    status, report, stderr = _run_ranks(2, "cuda", env={"NUMBA_ENABLE_CUDASIM": simulator})
    assert report["failures"] == [], "\n".join(report["failures"])
    assert status == 0, stderr[-4000:]
    assert report["device"] == "cuda"


# ------------------------------------------------------------ one process


def _pair(dtype=np.float32, **flags):
    rng = np.random.default_rng(0)
    bn = nbn.BatchNorm2d(4, dtype=dtype, **flags)
    if bn.affine:
        bn.weight[...] = rng.normal(1, 0.2, 4)
        bn.bias[...] = rng.normal(0, 0.2, 4)
    return bn, nbn.SyncBatchNorm.from_batchnorm(copy.deepcopy(bn))


@pytest.mark.parametrize("flags", [{}, {"momentum": None}, {"affine": False}, {"channel_axis": -1}])
def test_one_process_is_batchnorm_bit_for_bit(flags):
    bn, sync = _pair(**flags)
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = rng.normal(3, 2, (6, 5, 3, 4) if flags.get("channel_axis") == -1 else (6, 4, 5, 3)).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        assert np.array_equal(sync(x), bn(x))
        assert np.array_equal(sync.backward(dy), bn.backward(dy))
        for name in ("running_mean", "running_var", "grad_weight", "grad_bias"):
            if getattr(bn, name) is None:
                assert getattr(sync, name) is None, name
            else:
                assert np.array_equal(getattr(sync, name), getattr(bn, name)), name
        assert sync.num_batches_tracked == bn.num_batches_tracked
    x = rng.normal(3, 2, x.shape).astype(np.float32)
    assert np.array_equal(sync.eval()(x), bn.eval()(x))
    assert np.array_equal(sync.backward(x), bn.backward(x))


def test_one_process_is_batchnorm_bit_for_bit_on_a_large_batch():
    """A batch whose backward takes a channel at a time (see ``config.BACKWARD_BY_CHANNEL``), in float64."""
    bn = nbn.BatchNorm2d(config.BACKWARD_BY_CHANNEL, dtype=np.float64)
    sync = nbn.SyncBatchNorm.from_batchnorm(copy.deepcopy(bn))
    rng = np.random.default_rng(2)
    shape = (2, config.BACKWARD_BY_CHANNEL, 67, 131)  # runs of an odd length
    assert shape[0] * shape[2] * shape[3] >= config.BACKWARD_BY_CHANNEL_VALUES
    x = rng.normal(3, 2, shape)
    dy = rng.standard_normal(shape)
    assert np.array_equal(sync(x), bn(x))
    assert np.array_equal(sync.backward(dy), bn.backward(dy))
    assert np.array_equal(sync.grad_weight, bn.grad_weight)


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 4), (2, 3, 2, 2), (2, 3, 1, 2, 2), (2, 3, 1, 1, 2, 2)])
def test_any_rank_of_two_or_more(shape):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    y = nbn.SyncBatchNorm(3)(x)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)


def test_from_batchnorm_shares_arrays_and_mode():
    bn = nbn.BatchNorm3d(3, eps=1e-3, momentum=0.2, bias=False, dtype=np.float64, channel_axis=-1).eval()
    bn.num_batches_tracked = 5
    sync = nbn.SyncBatchNorm.from_batchnorm(bn, comm=MPI.COMM_WORLD)
    assert sync.weight is bn.weight and sync.running_var is bn.running_var and sync.bias is None
    assert (sync.eps, sync.momentum, sync.dtype, sync.channel_axis) == (1e-3, 0.2, np.float64, -1)
    assert sync.num_batches_tracked == 5 and not sync.training and sync.comm is MPI.COMM_WORLD
    assert repr(sync).startswith("SyncBatchNorm(3, eps=0.001, momentum=0.2, affine=True, bias=False")


def test_pickle_and_copy_restore_on_the_world_communicator():
    sync = nbn.SyncBatchNorm(3, momentum=None)
    sync(np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32))
    for restored in (pickle.loads(pickle.dumps(sync)), copy.deepcopy(sync)):
        assert restored.comm is MPI.COMM_WORLD and restored.num_batches_tracked == 1
        np.testing.assert_array_equal(restored.running_var, sync.running_var)
        with pytest.raises(RuntimeError, match="forward"):
            restored.backward(np.ones((4, 3), np.float32))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: nbn.SyncBatchNorm(3, comm="world"), TypeError, "mpi4py communicator"),
        (lambda: nbn.SyncBatchNorm.from_batchnorm(nbn.SyncBatchNorm(3)), TypeError, "BatchNorm1d/2d/3d"),
        (lambda: nbn.SyncBatchNorm.from_batchnorm(object()), TypeError, "BatchNorm1d/2d/3d"),
        (lambda: nbn.SyncBatchNorm(3)(np.ones(3, np.float32)), ValueError, "expected 2D or higher input"),
        (lambda: nbn.SyncBatchNorm(3)(np.ones((1, 3), np.float32)), ValueError, "more than 1 value per channel"),
    ],
)
def test_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_without_mpi4py_construction_names_the_extra():
    result = run_script("sync_without_mpi.py")
    assert result.returncode == 0, result.stderr
    assert "pip install 'numba_bn[mpi]'" in result.stdout


def test_data_parallel_digits_example_follows_one_process(compiled_kernels):
    """examples/train_digits_mpi.py on 3 processes (shares 22/21/21) reaches one process's accuracy and buffers."""
    pytest.importorskip("sklearn")
    script = TESTS.parent / "examples" / "train_digits_mpi.py"
    process, stdout, stderr = _launch(3, script, ["--epochs", "2", "--check"], None)
    assert process.returncode == 0, stderr[-4000:]
    assert "split [22, 21, 21]" in stdout and "identical on every process: True" in stdout, stdout
    accuracies = [float(part.split("%")[0]) for part in stdout.split("test accuracy ")[1:]]
    assert len(accuracies) == 2 and abs(accuracies[0] - accuracies[1]) <= 1.0 and accuracies[0] > 80, stdout
    difference = float(stdout.rsplit("relative difference ", 1)[1].split()[0])
    assert difference < 1e-4, stdout
