"""``no_grad``: forwards that keep nothing for a backward pass.

A module's forward normally keeps its input (by reference) and a few
per-channel vectors so that ``backward`` can follow; inference does not need
them, and a kept batch holds its memory until the next forward. Inside
``with numba_bn.no_grad():`` (or a function decorated with it) forwards keep
nothing, skip the input's sampled fingerprint, and a later ``backward``
raises. The switch is per thread, as PyTorch's is.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless the calling thread is inside :class:`no_grad`.

    Returns
    -------
    bool
        Whether forwards keep what ``backward`` needs.

    Examples
    --------
    >>> import numba_bn as nbn
    >>> nbn.is_grad_enabled()
    True
    >>> with nbn.no_grad():
    ...     nbn.is_grad_enabled()
    False
    """
    return getattr(_state, "enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager and decorator: module forwards inside keep nothing for ``backward``.

    Use it for inference: the module then holds no reference to its last
    input, and each forward skips the bookkeeping that a backward pass
    needs. Outputs, running buffers and ``num_batches_tracked`` are updated
    exactly as outside it (a training-mode forward still updates the running
    statistics, as in PyTorch). ``backward`` after such a forward raises
    ``RuntimeError``. Nests, and restores the previous setting on exit;
    applies to the calling thread only.

    Examples
    --------
    >>> import numpy as np
    >>> import numba_bn as nbn
    >>> bn = nbn.BatchNorm1d(4).eval()
    >>> with nbn.no_grad():
    ...     y = bn(np.ones((2, 4), dtype=np.float32))
    >>> y.shape
    (2, 4)
    """

    # Each thread keeps its own stack of the settings to restore, not this
    # object: one instance (a decorated function) may run in several threads,
    # or recursively. A class, not a generator: entering and leaving cost
    # about a fifth of a generator-based context manager's, which counts for
    # inference on small batches.

    def __enter__(self) -> None:
        previous = _state.__dict__.setdefault("previous", [])
        previous.append(getattr(_state, "enabled", True))
        _state.enabled = False

    def __exit__(self, *exc_info: object) -> bool:
        _state.enabled = _state.previous.pop()
        return False
