"""The CUDA stream that numba_bn's kernels and allocations use.

The one module of ``numba_bn.cuda`` that imports nothing of CUDA: choosing a
stream never imports ``numba.cuda``. The choice is per thread / async task
(a ``ContextVar``).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from .._typing import CudaStream

_STREAM = contextvars.ContextVar("numba_bn_cuda_stream", default=None)


@contextlib.contextmanager
def cuda_stream(stream: CudaStream | None) -> Iterator[CudaStream | None]:
    """Run numba_bn's CUDA work inside the block on ``stream``.

    Kernels and allocations of the modules and functions called inside the
    ``with`` block are queued on ``stream`` in order, and results are
    returned without waiting for them; reading a result on the host
    (``copy_to_host``, ``state_dict``) waits for that stream. Without this
    context manager everything runs on the default stream. The choice holds
    for the current thread or async task only, and blocks may be nested (the
    previous stream is restored on exit, also after an exception). Choosing
    a stream needs no CUDA: nothing is imported or checked until CUDA work
    is actually done, and CPU work is unaffected.

    Parameters
    ----------
    stream : numba.cuda stream or None
        A ``numba.cuda`` stream: ``numba.cuda.stream()``, or
        ``numba.cuda.external_stream(ptr)`` wrapping a CuPy or PyTorch
        stream. None selects the default stream.

    Yields
    ------
    numba.cuda stream or None
        ``stream``, unchanged.

    Notes
    -----
    The stream is not synchronised on exit: use ``stream.synchronize()``
    (or a host read) before relying on results from another stream.

    Examples
    --------
    >>> import numpy as np
    >>> from numba import cuda  # doctest: +SKIP
    >>> import numba_bn as nbn
    >>> bn = nbn.BatchNorm2d(64, device="cuda")  # doctest: +SKIP
    >>> x_gpu = cuda.to_device(np.ones((8, 64, 7, 7), np.float32))  # doctest: +SKIP
    >>> with nbn.cuda_stream(cuda.stream()) as stream:  # doctest: +SKIP
    ...     y_gpu = bn(x_gpu)  # queued on stream, not waited for
    >>> stream.synchronize()  # doctest: +SKIP
    """
    token = _STREAM.set(stream)
    try:
        yield stream
    finally:
        _STREAM.reset(token)


def current_stream() -> CudaStream | int:
    """The stream chosen with ``cuda_stream``, or 0 (the default stream)."""
    stream = _STREAM.get()
    return 0 if stream is None else stream
