"""Helpers for the CUDA tests: device detection, host views of device modules, snapshots."""

import numpy as np
import pytest
from numba import config as numba_config

from numba_bn import config
from numba_bn._backend import cuda_unavailable_reason
from numba_bn._device_arrays import is_device_array
from state_snapshot import ARRAYS

SIMULATOR = bool(numba_config.ENABLE_CUDASIM)
#: Why numba_bn cannot run CUDA kernels here (no ``cuda`` extra, no GPU), or None.
CUDA_MISSING = cuda_unavailable_reason()
REAL_GPU = not SIMULATOR and CUDA_MISSING is None
#: The CUDA block size the kernels launch with (the simulator's tests take smaller blocks: see conftest.py).
DEFAULT_CUDA_THREADS = config.CUDA_THREADS

needs_cuda = pytest.mark.skipif(CUDA_MISSING is not None, reason=f"needs a GPU or NUMBA_ENABLE_CUDASIM=1: {CUDA_MISSING}")
needs_real_gpu = pytest.mark.skipif(not REAL_GPU, reason="needs a real CUDA GPU (not the simulator)")



def host(array):
    """A device array's values on the host (None stays None, host arrays are copied)."""
    if array is None:
        return None
    if isinstance(array, np.ndarray):
        return array.copy()
    assert is_device_array(array), type(array)
    return array.copy_to_host()


class HostView:
    """A CUDA module's state copied to the host, for the CPU tests' checkers."""

    def __init__(self, module):
        for name in ARRAYS:
            setattr(self, name, host(getattr(module, name)))
        self.num_batches_tracked = module.num_batches_tracked
        self.training = module.training


