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

Forking is the other hazard: GNU OpenMP cannot run parallel regions in a
child forked after the parent started its threads, and Numba then kills the
child with SIGTERM at the first parallel launch. In such a child the guarded
entry points raise a ``RuntimeError`` that says what to do instead.
"""

import functools
import os
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


_forked_after_gnu_openmp_started = False


def _openmp_vendor():
    from numba.np.ufunc import omppool  # loaded already when the omp layer runs

    return getattr(omppool, "openmp_vendor", "")


def _note_fork_in_child():
    global _forked_after_gnu_openmp_started
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never started a layer: the child may start any
        return
    if layer == "omp" and _openmp_vendor() == "GNU":
        _forked_after_gnu_openmp_started = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork_in_child)


def _refuse_in_forked_gnu_openmp_child():
    raise RuntimeError(
        "numba_bn cannot run its parallel kernels in this process: it was forked from a "
        "process that had already started GNU OpenMP threads (Numba's 'omp' threading layer), "
        "and GNU OpenMP does not work after fork(). Start worker processes with "
        "multiprocessing's 'spawn' or 'forkserver' method, or set NUMBA_THREADING_LAYER=tbb "
        "(or workqueue) before the parent process first uses numba_bn."
    )


def serialize_unless_thread_safe(function):
    """Run ``function`` under a process-wide lock unless the threading layer is thread-safe.

    Also refuses, with a clear error, to run in a child forked after GNU OpenMP started.
    """

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        # The common case first, in the fewest steps: small kernels take microseconds.
        if _active_layer_is_thread_safe and not _forked_after_gnu_openmp_started:
            return function(*args, **kwargs)
        if _forked_after_gnu_openmp_started:
            _refuse_in_forked_gnu_openmp_child()
        if active_layer_is_thread_safe():
            return function(*args, **kwargs)
        with _kernel_lock:
            return function(*args, **kwargs)

    return guarded
