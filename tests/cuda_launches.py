"""Every kernel launch of the CUDA backend, recorded under the simulator, and what a GPU accepts.

The simulator calls a kernel's Python function with the arguments as they
are, so an argument that the real launcher cannot pass (``None``, a Python
object) runs there and fails only on a GPU. ``recorded_launches`` records
each launch's kernel and arguments while the simulator runs them;
``marshalling_problems`` checks each argument against what numba-cuda's
launcher (``_Kernel._prepare_args``) marshals: device arrays, integers,
floats (16/32/64), booleans, complex numbers, records, enum members and
tuples of these. A host NumPy array would be accepted there but copied to
the device and back at every launch, synchronously, so it is reported too.
``signature`` turns the arguments into the numba types the launcher would
compile the kernel for, for the lowering check (``cuda_lowering_check.py``).
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from unittest import mock

import numpy as np
from numba.cuda.simulator.kernel import FakeCUDAKernel

import numba_bn as nbn
from numba import cuda


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


def _layout(array):
    if array.is_c_contiguous():
        return "C"
    if array.is_f_contiguous():
        return "F"
    return "A"


def signature(launch):
    """The launch's argument types as JSON-able descriptions (see ``cuda_lowering_check.numba_type``)."""

    def describe(value):
        if _is_device_array(value):
            return ["array", np.dtype(value.dtype).str, len(value.shape), _layout(value)]
        if isinstance(value, tuple):
            return ["tuple", [describe(item) for item in value]]
        if isinstance(value, (bool, np.bool_)):
            return ["boolean"]
        if isinstance(value, np.generic):
            return ["scalar", value.dtype.str]
        if isinstance(value, int):
            return ["scalar", np.dtype(np.int64).str]
        if isinstance(value, float):
            return ["scalar", np.dtype(np.float64).str]
        raise TypeError(f"cannot describe {type(value).__name__} for a kernel signature")

    return [describe(value) for value in launch.args]


# ------------------------------------------------------------ the workload

#: (module class, channels-first shape); each runs channels-first and channels-last.
SHAPES = [
    (nbn.BatchNorm1d, (9, 3)),
    (nbn.BatchNorm1d, (3, 2, 5)),
    (nbn.BatchNorm2d, (2, 3, 3, 4)),
    (nbn.BatchNorm3d, (2, 2, 2, 3, 3)),
]
#: (module dtype, input dtype)
DTYPES = [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float16)]
#: (affine, bias, track_running_stats)
FLAGS = [(True, True, True), (True, False, True), (False, True, False)]


def _channels_last(shape):
    return (shape[0], *shape[2:], shape[1])


def exercise_cuda_backend(rng):
    """Run every path of the CUDA backend once on small inputs: modules and functions, all
    ranks, layouts, dtypes and flags, train and eval, forward and backward, odd strides.

    Use it with small blocks (the ``small_cuda_blocks`` fixture): the simulator is slow.
    """
    for cls, shape in SHAPES:
        for channel_axis in (1, -1):
            data_shape = shape if channel_axis == 1 else _channels_last(shape)
            channels = shape[1]
            for module_dtype, input_dtype in DTYPES:
                for affine, bias, track in FLAGS:
                    bn = cls(
                        channels, affine=affine, bias=bias, track_running_stats=track, dtype=module_dtype,
                        device="cuda", channel_axis=channel_axis, momentum=None if bias else 0.1,
                    )
                    x = cuda.to_device(rng.standard_normal(data_shape).astype(input_dtype))
                    dy = cuda.to_device(rng.standard_normal(data_shape).astype(input_dtype))
                    bn(x)
                    bn.backward(dy)
                    bn.eval()
                    bn(x)
                    bn.backward(dy)
                # The fused passes: ReLU with and without a residual, train and eval, forward and backward.
                relu = cls(channels, dtype=module_dtype, device="cuda", channel_axis=channel_axis, activation="relu")
                for residual in (None, dy):
                    relu.train()
                    relu(x, residual)
                    relu.backward(dy)
                    relu.eval()
                    relu(x, residual)
                    relu.backward(dy)
            x = rng.standard_normal(data_shape).astype(np.float32)
            nbn.batch_stats(cuda.to_device(x), channel_axis=channel_axis)
            for buffer_dtype in (np.float16, np.float32, np.float64):
                mean = cuda.to_device(np.zeros(channels, buffer_dtype))
                var = cuda.to_device(np.ones(channels, buffer_dtype))
                weight = cuda.to_device(np.ones(channels, buffer_dtype))
                nbn.batch_norm(cuda.to_device(x), mean, var, weight, training=True, channel_axis=channel_axis)
                nbn.batch_norm(cuda.to_device(x), mean, var, bias=weight, channel_axis=channel_axis)
    # Negative strides (copied on the device first) and an empty batch.
    host = rng.standard_normal((4, 3, 5)).astype(np.float32)
    flipped = cuda.to_device(host)[:, :, ::-1]
    bn = nbn.BatchNorm1d(3, device="cuda")
    bn(flipped)
    bn.backward(flipped)
    bn.eval()
    bn(cuda.to_device(np.zeros((0, 3, 5), np.float32)))
    bn.backward(cuda.to_device(np.zeros((0, 3, 5), np.float32)))
    # out=: a reversed output, the input itself, and an output overlapping the input in another layout.
    square = cuda.to_device(rng.standard_normal((3, 3)).astype(np.float32))
    bn = nbn.BatchNorm1d(3, device="cuda")
    bn(flipped, out=cuda.to_device(np.zeros((4, 3, 5), np.float32))[:, :, ::-1])
    bn(square, out=square)
    bn(square, out=square.T)
    # A fused forward into a reversed output (its mask follows the input's order) and a residual
    # without a ReLU (its gradient is a copy of dy).
    fused = nbn.BatchNorm1d(3, device="cuda", activation="relu")
    fused(flipped, flipped, out=cuda.to_device(np.zeros((4, 3, 5), np.float32))[:, :, ::-1])
    fused.backward(flipped)
    plain = nbn.BatchNorm1d(3, device="cuda")
    plain(flipped, flipped)
    plain.backward(flipped)
    # SyncBatchNorm's paths: its forward normalises with statistics that arrive merged (the whole
    # batch's; here this share's), its backward stages the totals through the host; on a share and on
    # an empty share, with one process's totals standing for the whole batch's.
    from numba_bn._backend import RunningUpdate
    from numba_bn.cuda import backend as cuda_backend

    backend = cuda_backend.CUDA

    def same_totals(sum_dy, sum_dy_xmu):
        return sum_dy, sum_dy_xmu

    for batch in (4, 0):
        bn = nbn.BatchNorm1d(3, device="cuda")
        share = cuda.to_device(rng.standard_normal((batch, 3, 5)).astype(np.float32))
        merged = backend.batch_statistics(share, 1)
        running = RunningUpdate(bn.running_mean, bn.running_var, bn.momentum)
        backend.forward(share, 1, merged, bn.weight, bn.bias, bn.eps, running=running)
        bn(share)
        backend.backward(bn._saved, share, np.dtype(np.float32), combine_totals=same_totals)
    # A training forward whose elementwise pass fails after the running buffers were blended puts them back.
    bn = nbn.BatchNorm1d(3, device="cuda")
    with mock.patch.object(cuda_backend, "normalize", side_effect=MemoryError("the elementwise pass failed")):
        with contextlib.suppress(MemoryError):
            bn(flipped)
