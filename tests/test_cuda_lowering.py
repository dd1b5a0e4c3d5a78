"""Every CUDA kernel passes numba-cuda's compiler front end for a real GPU target.

Complements the simulator tests (which run kernels as Python) on machines
without a GPU; see ``cuda_lowering_check.py``. Runs in a subprocess because
the simulator switch is read once per process.
"""

import os
import subprocess
import sys

import numba_bn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(numba_bn.__file__)))


def test_kernels_lower_for_a_gpu_target():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "cuda_lowering_check.py")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.strip().startswith("checked "), result.stdout
