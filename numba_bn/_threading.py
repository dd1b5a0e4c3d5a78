"""Keep concurrent calls from several Python threads safe on every Numba threading layer.

Numba runs ``parallel=True`` kernels on one of three threading layers. ``tbb``
and ``omp`` accept parallel regions launched from several threads at once;
``workqueue`` (the fallback when neither TBB nor an OpenMP runtime is
available, or when the user selects it) does not: a second concurrent launch
terminates the whole process. A library cannot pick the layer for its users
(it is process-wide and may already be in use), so the kernel entry points are
wrapped with ``serialize_unless_thread_safe``: they hold one process-wide lock
while the active layer is not known to be thread-safe, and run without it
once Numba reports ``tbb`` or ``omp``. Before the first parallel launch the
layer is unknown, so the first calls are serialised too; this also covers the
layer's own start-up.

Only numba_bn's calls are serialised: other ``parallel=True`` code running
concurrently on the workqueue layer can still collide with them.
"""

import functools
import threading

import numba

#: Layers that Numba documents as safe to enter from several threads at once.
THREAD_SAFE_LAYERS = frozenset({"tbb", "omp"})

_kernel_lock = threading.RLock()
_active_layer_is_thread_safe = False


def active_layer_is_thread_safe():
    """Whether the running threading layer accepts concurrent launches (False while unknown)."""
    global _active_layer_is_thread_safe
    if not _active_layer_is_thread_safe:
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet: the layer is not chosen
            return False
        # Only ever switches False -> True: the layer cannot change once started.
        _active_layer_is_thread_safe = layer in THREAD_SAFE_LAYERS
    return _active_layer_is_thread_safe


def serialize_unless_thread_safe(function):
    """Run ``function`` under a process-wide lock unless the threading layer is thread-safe."""

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        if active_layer_is_thread_safe():
            return function(*args, **kwargs)
        with _kernel_lock:
            return function(*args, **kwargs)

    return guarded
