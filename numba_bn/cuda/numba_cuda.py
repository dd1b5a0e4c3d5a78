"""The one import of ``numba.cuda`` in numba_bn.

Every CUDA module of the package takes ``cuda`` from here, so replacing the
compiler (``numba-cuda`` is in maintenance mode) is a change in one place.
Importing this module imports ``numba.cuda``: only the CUDA backend does,
and only once CUDA is used.
"""

from numba import config as _numba_config
from numpy.lib.stride_tricks import as_strided

#: How to get the CUDA compiler; it is an optional dependency.
INSTALL_HINT = "pip install 'numba_bn[cuda]' (the numba-cuda package, numba-cuda[cu12])"

try:
    # numba-cuda installs itself as numba.cuda; without it an older numba
    # would hand out its own deprecated copy, which numba_bn does not support.
    import numba_cuda  # noqa: F401
except ImportError as error:
    raise ImportError(f"numba_bn's CUDA backend needs numba-cuda: {INSTALL_HINT}") from error

from numba import cuda  # noqa: E402

from .limits import MAX_THREADS  # noqa: E402

__all__ = ["cuda", "is_available", "is_simulator", "kernel", "strided_view"]

#: The fewest threads of a kernel's blocks that must fit on an SM at once: half the 2,048 of
#: compute capability 8.0 and 9.0, i.e. 50% occupancy there.
_RESIDENT_THREADS = 1024


def is_simulator():
    """True when ``numba.cuda`` is the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return bool(_numba_config.ENABLE_CUDASIM)


def is_available():
    """True when kernels can run: a usable GPU, or the simulator."""
    return bool(cuda.is_available())


def strided_view(array, shape, strides):
    """A device array over ``array``'s memory with another shape and strides (same first element)."""
    if is_simulator():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(as_strided(array._ary, shape, strides), stream=array.stream)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(shape, strides, array.dtype, stream=array.stream, gpu_data=array.gpu_data)


def kernel(function):
    """``cuda.jit(function)`` with numba_bn's launch bounds.

    The bounds (PTX ``.maxntid`` and ``.minnctapersm``) tell ptxas that a
    block has at most :data:`MAX_THREADS` threads and that 1,024 threads
    must fit on an SM at once, so it keeps a thread within 65,536 / 1,024 =
    64 registers: 50% occupancy on sm_80 and sm_90 whatever the block size.
    Without them the gradient and fused passes take up to 72 registers on
    sm_90 (37.5%). A larger block cannot launch (``limits.check_threads``
    keeps ``config.CUDA_THREADS`` within the bound). The simulator takes no
    launch bounds.
    """
    if is_simulator():
        return cuda.jit(function)
    return cuda.jit(launch_bounds=(MAX_THREADS, _RESIDENT_THREADS // MAX_THREADS))(function)
