"""The block sizes numba_bn's kernels are built for (no CUDA import: the CUDA report checks them too)."""

#: The most threads a block of a numba_bn kernel has. Every kernel is
#: compiled for it (``numba_cuda.kernel``'s launch bounds), so a larger
#: block would fail to launch.
MAX_THREADS = 512


def check_threads(threads, name="config.CUDA_THREADS"):
    """``threads`` if it is a power of two from 32 to :data:`MAX_THREADS`, else a ValueError naming ``name``."""
    if not (isinstance(threads, int) and 32 <= threads <= MAX_THREADS and threads & (threads - 1) == 0):
        raise ValueError(f"expected {name} to be a power of two from 32 to {MAX_THREADS}, got {threads!r}")
    return threads
