"""Every launch the CUDA backend makes would work on a real GPU.

The backend's launches are recorded once under the simulator, over every
path (``cuda_launches.exercise_cuda_backend``), and then checked for what
the simulator cannot see: every argument is one that numba-cuda's launcher
marshals, every block fits the register budget the kernels were checked
against, and every kernel compiles for a real GPU (sm_90) with exactly the
argument types it was launched with (``cuda_lowering_check.py``, in a
subprocess without the simulator: the switch is read once per process).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cuda_support import CUDA_MISSING  # before the CUDA imports below

if CUDA_MISSING and "numba-cuda" in CUDA_MISSING:
    pytest.skip(f"the cuda extra is not installed: {CUDA_MISSING}", allow_module_level=True)

import numba_bn
from cuda_launches import exercise_cuda_backend, marshalling_problems, recorded_launches, signature
from cuda_support import SIMULATOR, needs_cuda
from numba_bn.cuda.limits import MAX_THREADS

pytestmark = [needs_cuda, pytest.mark.skipif(not SIMULATOR, reason="records launches in the CUDA simulator")]

HERE = os.path.dirname(os.path.abspath(__file__))
UNAVAILABLE = 3  # cuda_lowering_check.py's status when the PTX toolchain is missing
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(numba_bn.__file__)))


@pytest.fixture(scope="module")
def launches():
    from numba_bn import config

    saved = config.CUDA_THREADS, config.CUDA_VALUES_PER_THREAD, config.CUDA_TARGET_BLOCKS
    config.CUDA_THREADS, config.CUDA_VALUES_PER_THREAD, config.CUDA_TARGET_BLOCKS = 32, 2, 64
    try:
        with recorded_launches() as recorded:
            exercise_cuda_backend(np.random.default_rng(0))
    finally:
        config.CUDA_THREADS, config.CUDA_VALUES_PER_THREAD, config.CUDA_TARGET_BLOCKS = saved
    return recorded


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


def test_every_argument_marshals_on_a_gpu(launches):
    problems = [problem for launch in launches for problem in marshalling_problems(launch)]
    assert problems == []


def test_recorder_catches_what_a_gpu_rejects():
    """The check itself fails on the arguments that broke GPU launches before."""
    from cuda_launches import Launch

    bad = Launch("m", "k", (None, np.zeros(3), object(), 2**70, (1.0, None)), (32, 1, 1), 0)
    assert len(marshalling_problems(bad)) == 5


def test_block_sizes_fit_the_register_budget(launches):
    assert max(int(np.prod(launch.block)) for launch in launches) <= MAX_THREADS


def _lowering_check(launches, tmp_path, *options):
    """Run ``cuda_lowering_check.py`` on the launched signatures: ``(number of signatures, its output)``."""
    unique = sorted({json.dumps([launch.module, launch.kernel, signature(launch)]) for launch in launches})
    path = tmp_path / "signatures.json"
    path.write_text("[" + ",".join(unique) + "]")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "cuda_lowering_check.py"), str(path), *options],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if result.returncode == UNAVAILABLE:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stderr[-5000:]
    return len(unique), result.stdout.split("\n")


def test_kernels_compile_for_a_gpu_with_the_launched_types(launches, tmp_path):
    count, output = _lowering_check(launches, tmp_path)
    assert output[0] == f"checked {count}"


def _ptxas():
    """``ptxas`` from the ``nvidia-cuda-nvcc-cu12`` wheel or the PATH, or None."""
    try:
        import nvidia.cuda_nvcc

        for folder in nvidia.cuda_nvcc.__path__:  # a namespace package
            candidate = os.path.join(folder, "bin", "ptxas")
            if os.path.exists(candidate):
                return candidate
    except ImportError:
        pass
    return shutil.which("ptxas")


@pytest.mark.skipif(_ptxas() is None, reason="needs ptxas (the nvidia-cuda-nvcc-cu12 wheel or a CUDA toolkit)")
def test_every_kernel_fits_the_register_budget_at_the_largest_block(launches, tmp_path):
    """A block's threads share an SM's 65,536 registers: checked on sm_90 code, without spills."""
    count, output = _lowering_check(launches, tmp_path, "--ptxas", _ptxas())
    assert output[0] == f"checked {count}"
    _, registers, _, spills = output[1].split()
    assert int(registers) * MAX_THREADS <= 65536, registers
    assert int(spills) == 0


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
