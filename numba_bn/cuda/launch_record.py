"""Recording the backend's kernel launches, with their argument types as plain data.

Every kernel of the backend is launched through ``launch.launch``; while
:func:`recording` is active each launch is written down - the kernel, the
types numba-cuda's launcher would compile it for, the block and the dynamic
shared memory - and, with ``run=False``, not run at all. The CUDA report
uses that to learn every kernel variant the backend launches without waiting
for the simulator to execute them, and the tests use it next to the
simulator's own view of the launches. Argument types are described as
JSON-able lists (:func:`describe_arguments`), so they can cross to a process
without the simulator, where ``ptx_resources`` turns them back into numba
types.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from . import launch


@dataclass(frozen=True)
class LaunchRecord:
    module: str  # where the kernel is defined: its dispatcher is ``getattr(import_module(module), kernel)``
    kernel: str
    arguments: tuple  # describe_arguments(...) of the launch's arguments
    block: tuple  # threads per block along x, y, z
    shared_bytes: int  # dynamic shared memory of the launch

    @property
    def threads(self):
        return math.prod(self.block)


def _python_function(kernel):
    """The Python function a kernel was compiled from (a dispatcher's ``py_func``, the simulator's ``fn``)."""
    function = getattr(kernel, "py_func", None)
    return function if function is not None else kernel.fn


def _block_tuple(block):
    block = tuple(block) if isinstance(block, tuple) else (block,)
    return block + (1,) * (3 - len(block))


@contextlib.contextmanager
def recording(run=True):
    """Yield a list that receives a :class:`LaunchRecord` for every launch inside the block.

    With ``run=False`` the kernels are not run: only what the backend decides
    on the host (kernels, argument types, blocks) is observed, and results
    are whatever the output arrays held. Not reentrant, and for one thread.
    """
    records = []

    def observe(kernel, block, args, shared_bytes):
        function = _python_function(kernel)
        records.append(
            LaunchRecord(
                function.__module__, function.__name__, describe_arguments(args), _block_tuple(block),
                int(shared_bytes),
            )
        )
        return run

    previous = launch.set_launch_observer(observe)
    try:
        yield records
    finally:
        launch.set_launch_observer(previous)


def _is_device_array(value):
    return hasattr(value, "copy_to_host") and hasattr(value, "dtype") and not isinstance(value, np.ndarray)


def _layout(array):
    if array.is_c_contiguous():
        return "C"
    if array.is_f_contiguous():
        return "F"
    return "A"


def describe_arguments(args):
    """The numba types the launcher infers for ``args``, as JSON-able lists (a tuple of them).

    ``["array", dtype string, ndim, layout]``, ``["tuple", [items]]``,
    ``["boolean"]`` or ``["scalar", dtype string]``, as numba-cuda's launcher
    types device arrays, Python and NumPy numbers and tuples of these.
    """

    def describe(value):
        if _is_device_array(value):
            return ("array", np.dtype(value.dtype).str, len(value.shape), _layout(value))
        if isinstance(value, tuple):
            return ("tuple", tuple(describe(item) for item in value))
        if isinstance(value, (bool, np.bool_)):
            return ("boolean",)
        if isinstance(value, np.generic):
            return ("scalar", value.dtype.str)
        if isinstance(value, int):
            return ("scalar", np.dtype(np.int64).str)
        if isinstance(value, float):
            return ("scalar", np.dtype(np.float64).str)
        raise TypeError(
            f"expected kernel arguments to be device arrays, numbers, booleans or tuples of these, "
            f"got {type(value).__name__}"
        )

    return tuple(describe(value) for value in args)
