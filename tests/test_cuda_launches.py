"""Every launch the CUDA backend makes would work on a real GPU, and the CUDA report sees it.

The backend's launches are recorded once under the simulator, over every
path (``numba_bn.cuda.workload.exercise_backend``), by the simulator's own
record (``cuda_launches``) and by numba_bn's (``numba_bn.cuda.launch_record``,
what ``python -m numba_bn cuda-report`` compiles), and then checked for
what the simulator cannot see: every argument is one that numba-cuda's
launcher marshals, every block fits the kernels' launch bounds, and every
kernel compiles for a real GPU (sm_90) with exactly the argument types it
was launched with (``cuda_lowering_check.py``, in a subprocess without the
simulator: the switch is read once per process). Registers, spills and
occupancy are checked on the report (``test_cuda_report.py``).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cuda_support import CUDA_MISSING  # before the CUDA imports below

if CUDA_MISSING and "numba-cuda" in CUDA_MISSING:
    pytest.skip(f"the cuda extra is not installed: {CUDA_MISSING}", allow_module_level=True)

import numba_bn
from cuda_launches import marshalling_problems, recorded_launches
from cuda_support import SIMULATOR, needs_cuda
from numba_bn.cuda.limits import MAX_THREADS

pytestmark = [needs_cuda, pytest.mark.skipif(not SIMULATOR, reason="records launches in the CUDA simulator")]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(numba_bn.__file__)))


@pytest.fixture(scope="module")
def recorded():
    """``(the simulator's launches, numba_bn's records of them)`` over every path, with small blocks."""
    from numba_bn import config
    from numba_bn.cuda.launch_record import recording
    from numba_bn.cuda.workload import exercise_backend

    saved = config.CUDA_THREADS, config.CUDA_VALUES_PER_THREAD, config.CUDA_TARGET_BLOCKS
    config.CUDA_THREADS, config.CUDA_VALUES_PER_THREAD, config.CUDA_TARGET_BLOCKS = 32, 2, 64
    try:
        with recorded_launches() as launches, recording() as records:
            exercise_backend(np.random.default_rng(0))
    finally:
        config.CUDA_THREADS, config.CUDA_VALUES_PER_THREAD, config.CUDA_TARGET_BLOCKS = saved
    return launches, records


@pytest.fixture(scope="module")
def launches(recorded):
    return recorded[0]


def test_every_kernel_is_launched(launches):
    from numba_bn.cuda import channel_math, kernels

    launched = {launch.kernel for launch in launches}
    defined = {
        name
        for module in (kernels, channel_math)
        for name, value in vars(module).items()
        if type(value).__name__ in ("FakeCUDAKernel", "CUDADispatcher") and not value._device
    }
    assert defined - launched == set()


def test_the_report_records_every_launch(recorded):
    """What ``cuda-report`` compiles is what the simulator ran: the same kernels, argument types and
    blocks, launch for launch."""
    from numba_bn.cuda.launch_record import describe_arguments

    launches, records = recorded
    seen_by_simulator = [
        (launch.module, launch.kernel, describe_arguments(launch.args), launch.block + (1,) * (3 - len(launch.block)))
        for launch in launches
    ]
    assert [(r.module, r.kernel, r.arguments, r.block) for r in records] == seen_by_simulator


def test_other_ranks_launch_no_other_variant():
    """The workload's shapes stand for every rank: 2- and 5-D modules launch no kernel with argument
    types or blocks that they do not (recorded with the kernels unrun)."""
    import numba_bn as nbn
    from numba_bn.cuda.launch_record import recording
    from numba_bn.cuda.workload import SHAPES, exercise_backend

    def variants(shapes):
        with recording(run=False) as records:
            exercise_backend(np.random.default_rng(0), shapes)
        return {(r.kernel, repr(r.arguments), r.block) for r in records}

    covered = variants(SHAPES)
    for shape in [(nbn.BatchNorm1d, (9, 3)), (nbn.BatchNorm3d, (2, 2, 2, 3, 3)), (nbn.BatchNorm3d, (2, 3, 2, 3, 3))]:
        assert variants([shape]) <= covered, shape


def test_every_argument_marshals_on_a_gpu(launches):
    problems = [problem for launch in launches for problem in marshalling_problems(launch)]
    assert problems == []


def test_recorder_catches_what_a_gpu_rejects():
    """The check itself fails on the arguments that broke GPU launches before."""
    from cuda_launches import Launch

    bad = Launch("m", "k", (None, np.zeros(3), object(), 2**70, (1.0, None)), (32, 1, 1), 0)
    assert len(marshalling_problems(bad)) == 5


def test_block_sizes_fit_the_launch_bounds(launches):
    assert max(int(np.prod(launch.block)) for launch in launches) <= MAX_THREADS


def test_kernels_compile_for_a_gpu_with_the_launched_types(recorded, tmp_path):
    _, records = recorded
    unique = sorted({json.dumps([r.module, r.kernel, r.arguments]) for r in records})
    path = tmp_path / "signatures.json"
    path.write_text("[" + ",".join(unique) + "]")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "cuda_lowering_check.py"), str(path)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.split("\n")[0] == f"checked {len(unique)}"


@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_training_forward_is_three_launches(channel_axis, momentum):
    """Statistics, then one per-channel kernel (merge, coefficients, running buffers), then the
    normalisation: the module and the function alike."""
    from numba import cuda

    import numba_bn as nbn

    shape = (4, 3, 5) if channel_axis == 1 else (4, 5, 3)
    x = cuda.to_device(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    bn = nbn.BatchNorm1d(3, device="cuda", channel_axis=channel_axis, momentum=momentum)
    mean, var = cuda.to_device(np.zeros(3, np.float32)), cuda.to_device(np.ones(3, np.float32))
    with recorded_launches() as module_launches:
        bn(x)
    with recorded_launches() as function_launches:
        nbn.batch_norm(x, mean, var, training=True, channel_axis=channel_axis)
    layout = "runs" if channel_axis == 1 else "rows"
    expected = [f"channel_stats_{layout}", "batch_coefficients", f"normalize_{layout}"]
    assert [launch.kernel for launch in module_launches] == expected
    assert [launch.kernel for launch in function_launches] == expected
