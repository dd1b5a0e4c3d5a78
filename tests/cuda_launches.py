"""The simulator's own record of every kernel launch, and what a GPU's launcher accepts.

The simulator calls a kernel's Python function with the arguments as they
are, so an argument that the real launcher cannot pass (``None``, a Python
object) runs there and fails only on a GPU. ``recorded_launches`` records
each launch's kernel, arguments, block and stream as the simulator runs it
(independently of numba_bn's own ``launch_record``, which the CUDA report
uses, so the two can be compared); ``marshalling_problems`` checks each
argument against what numba-cuda's launcher (``_Kernel._prepare_args``)
marshals: device arrays, integers, floats (16/32/64), booleans, complex
numbers, records, enum members and tuples of these. A host NumPy array
would be accepted there but copied to the device and back at every launch,
synchronously, so it is reported too. The workload that reaches every
launch is ``numba_bn.cuda.workload.exercise_backend``.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from unittest import mock

import numpy as np
from numba.cuda.simulator.kernel import FakeCUDAKernel


@dataclass(frozen=True)
class Launch:
    module: str
    kernel: str
    args: tuple
    block: tuple  # threads per block, (x, y, z)
    stream: object  # as given in the launch configuration; 0 for the default stream


@contextlib.contextmanager
def recorded_launches():
    """Yield a list that receives a :class:`Launch` for every kernel launched inside the block."""
    launches = []
    configure, run = FakeCUDAKernel.__getitem__, FakeCUDAKernel.__call__
    streams = {}

    def configuring(kernel, configuration):
        streams[id(kernel)] = configuration[2] if len(configuration) > 2 else 0
        return configure(kernel, configuration)

    def recording(kernel, *args):
        if not kernel._device:
            block = tuple(kernel.block_dim) if isinstance(kernel.block_dim, tuple) else (kernel.block_dim,)
            launches.append(Launch(kernel.fn.__module__, kernel.fn.__name__, args, block, streams.get(id(kernel), 0)))
        return run(kernel, *args)

    with mock.patch.object(FakeCUDAKernel, "__getitem__", configuring), mock.patch.object(
        FakeCUDAKernel, "__call__", recording
    ):
        yield launches


def _is_device_array(value):
    return hasattr(value, "copy_to_host") and hasattr(value, "dtype") and not isinstance(value, np.ndarray)


def marshalling_problems(launch):
    """Messages for the arguments of ``launch`` that a GPU launch would reject (or copy)."""
    problems = []

    def check(value, where):
        if _is_device_array(value):
            return
        if isinstance(value, np.ndarray):
            problems.append(f"{where}: a host numpy.ndarray (copied to the GPU and back at every launch)")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
        elif isinstance(value, (bool, np.bool_, float, np.floating, complex, np.complexfloating, np.void)):
            return
        elif isinstance(value, (int, np.integer)):
            if not -(2**63) <= int(value) < 2**64:
                problems.append(f"{where}: integer {value} does not fit 64 bits")
        elif isinstance(value, enum.Enum):
            check(value.value, where)
        else:
            problems.append(f"{where}: {type(value).__name__} {value!r} cannot be passed to a kernel")

    for i, value in enumerate(launch.args):
        check(value, f"{launch.kernel} argument {i}")
    return problems
