"""The one import of ``numba.cuda`` in numba_bn.

Every CUDA module of the package takes ``cuda`` from here, so replacing the
compiler (``numba-cuda`` is in maintenance mode) is a change in one place.
Importing this module imports ``numba.cuda``: only the CUDA backend does,
and only once CUDA is used.
"""

from numba import config as _numba_config
from numpy.lib.stride_tricks import as_strided

#: How to get the CUDA compiler; it is an optional dependency.
INSTALL_HINT = "pip install 'numba_bn[cuda]' (the numba-cuda package)"

try:
    # numba-cuda installs itself as numba.cuda; without it an older numba
    # would hand out its own deprecated copy, which numba_bn does not support.
    import numba_cuda  # noqa: F401
except ImportError as error:
    raise ImportError(f"numba_bn's CUDA backend needs numba-cuda: {INSTALL_HINT}") from error

from numba import cuda  # noqa: E402

__all__ = ["cuda", "is_available", "is_simulator", "strided_view"]


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
