"""One line on stderr when the CPU kernels for a new dtype and layout start compiling.

Numba compiles a kernel on its first call with new argument types, which
takes seconds, and caches the machine code on disk; without a word, a new
user's first call just seems to hang. Numba announces every real compilation
(not a load from its cache) as a ``numba:compile`` event; this listener
prints a notice when one of the kernels given to :func:`install` starts
compiling, once per (data type, layout) in a process. Nested compilations
(the kernels' parts and helpers) and the per-channel arithmetic stay silent.
"""

import contextlib
import sys
import threading

from numba.core import config as numba_config
from numba.core import event

from .. import config

_DTYPE_NAMES = {"uint16": "float16"}  # float16 reaches the kernels as its bits

_lock = threading.Lock()
_announced = set()
_suppressed = threading.local()
#: Kernel dispatcher -> the layout it serves, as the notice names it.
_watched = {}


class _Listener(event.Listener):
    def on_start(self, ev):
        if not config.COMPILE_NOTICE or getattr(_suppressed, "active", False):
            return
        layout = _watched.get(ev.data["dispatcher"])
        if layout is None:
            return
        dtype = str(ev.data["args"][0].dtype)
        key = (_DTYPE_NAMES.get(dtype, dtype), layout)
        with _lock:
            if key in _announced:
                return
            _announced.add(key)
        cache = numba_config.CACHE_DIR or "__pycache__ next to numba_bn"
        print(
            f"numba_bn: compiling kernels for {key[0]} {key[1]} input (first use only, a few seconds; "
            f"cached in {cache}; `python -m numba_bn precompile` does it ahead; "
            "NUMBA_BN_COMPILE_NOTICE=0 silences this)",
            file=sys.stderr,
            flush=True,
        )

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def suppressed():
    """Within this context the calling thread prints no notice (``precompile`` shows progress instead)."""
    previous = getattr(_suppressed, "active", False)
    _suppressed.active = True
    try:
        yield
    finally:
        _suppressed.active = previous


def install(kernels):
    """Announce the compilations of ``kernels`` (``{dispatcher: layout name}``); compiles nothing."""
    global _installed
    with _lock:
        _watched.update(kernels)
        if not _installed:
            event.register("numba:compile", _Listener())
            _installed = True


_installed = False
