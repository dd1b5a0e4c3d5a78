"""Every path of the CUDA backend, once, on tiny inputs: what makes it launch each kernel variant.

The CUDA report (``python -m numba_bn cuda-report``) runs :func:`exercise_backend`
under ``launch_record.recording`` to learn every kernel and argument
signature the backend launches, and the tests run it to check each launch.
Signatures depend on dtypes, layouts and which options are used, not on
sizes or ranks, so tiny inputs of two shapes reach them all: modules and functions,
both layouts, every dtype and flag, training and evaluation, forward and
backward, fused passes, odd strides, ``out=``, an empty batch, the backward
of a batch split over processes, and the rollback of a forward that fails
after updating the running buffers.
"""

from __future__ import annotations

import contextlib

import numpy as np

import numba_bn as nbn

from .._backend import RunningUpdate
from . import backend as cuda_backend
from .numba_cuda import cuda

#: (module class, channels-first shape); each runs channels-first and channels-last. The kernels
#: see every rank as the same 5-D view, and the block of a channels-last launch depends on the
#: channel count: a shape with 2 channels and one with 3 reach every variant and block
#: (``tests/test_cuda_launches.py`` checks that the other ranks reach none besides). Each shape is
#: ~450 launches in the simulator.
SHAPES = [(nbn.BatchNorm1d, (3, 2, 5)), (nbn.BatchNorm2d, (2, 3, 3, 4))]
#: (module dtype, input dtype)
DTYPES = [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float16)]
#: (affine, bias, track_running_stats)
FLAGS = [(True, True, True), (True, False, True), (False, True, False)]


class InjectedFailure(Exception):
    """Raised in place of the elementwise pass by :func:`failing_elementwise_pass`."""


@contextlib.contextmanager
def failing_elementwise_pass():
    """The backend's forward elementwise pass raises inside the block, as a failed launch (or an
    interrupt) would there: a training forward then fails after its per-channel kernel blended the
    running buffers, and must put them back."""

    def fail(*args, **kwargs):
        raise InjectedFailure("the elementwise pass failed")

    original = cuda_backend.normalize
    cuda_backend.normalize = fail
    try:
        yield
    finally:
        cuda_backend.normalize = original


def _channels_last(shape):
    return (shape[0], *shape[2:], shape[1])


def exercise_backend(rng, shapes=SHAPES):
    """Run every path of the CUDA backend once on small inputs (see the module docstring), with the
    modules and shapes of ``shapes``.

    In the CUDA simulator use small blocks (``numba_bn.config.CUDA_THREADS = 32``)
    when the kernels really run: each simulated thread is a Python thread.
    """
    for cls, shape in shapes:
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
    # A training forward that fails after the running buffers were blended puts them back.
    bn = nbn.BatchNorm1d(3, device="cuda")
    with failing_elementwise_pass(), contextlib.suppress(InjectedFailure):
        bn(flipped)
    exercise_row_norms(rng)


def exercise_row_norms(rng):
    """GroupNorm, InstanceNorm and LayerNorm (``cuda/row_backend.py``): their kernels take flat arrays and
    numbers whatever the module, layout or shape, so one module per dtype reaches every variant:
    training and evaluation with running statistics (the statistics' kernels, or none), forward and
    backward with the affine's sums; and a strided input (copied on the device first)."""
    for module_dtype, input_dtype in DTYPES:
        x = cuda.to_device(rng.standard_normal((2, 4, 5)).astype(input_dtype))
        norm = nbn.InstanceNorm1d(4, affine=True, track_running_stats=True, dtype=module_dtype, device="cuda")
        for mode in (True, False):
            norm.train(mode)
            norm(x)
            norm.backward(x)
    strided = cuda.to_device(rng.standard_normal((2, 4, 6)).astype(np.float32))[:, :, ::2]
    nbn.group_norm(strided, 2)
