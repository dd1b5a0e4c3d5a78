"""The CUDA stream that numba_bn's kernels and allocations use.

Kept apart from the CUDA modules so that choosing a stream never imports
``numba.cuda``. The choice is per thread / async task (a ``ContextVar``).
"""

import contextlib
import contextvars

_STREAM = contextvars.ContextVar("numba_bn_cuda_stream", default=None)


@contextlib.contextmanager
def cuda_stream(stream):
    """Run numba_bn's CUDA work inside the block on ``stream``.

    ``stream`` is a ``numba.cuda`` stream (``numba.cuda.stream()``,
    ``numba.cuda.external_stream(ptr)`` for a CuPy or PyTorch stream), or
    ``None`` for the default stream. Kernels are queued on it in order and
    results are returned without waiting for them; reading a result on the
    host (``copy_to_host``, ``state_dict``) waits for that stream. Without
    this context manager everything runs on the default stream.
    """
    token = _STREAM.set(stream)
    try:
        yield stream
    finally:
        _STREAM.reset(token)


def current_stream():
    """The stream chosen with ``cuda_stream``, or 0 (the default stream)."""
    stream = _STREAM.get()
    return 0 if stream is None else stream
