"""numba_bn against the float64 NumPy reference in ``reference.py``, on every device.

Checks, step by step through sequences of train forwards, backward calls,
optimiser steps and eval forwards: outputs, ``grad_input``,
``grad_weight``/``grad_bias``, the running buffers and
``num_batches_tracked``, for BatchNorm1d (``(N, C)`` and ``(N, C, L)``), 2d
and 3d, channels first and last, float32, float64 and float16-in-float32, and
the affine/bias/tracking/momentum flags. Also: inputs large enough to span
many kernel work units or CUDA blocks (and tiny work units on small inputs),
any memory layout (transposed, Fortran, strided, negative and zero strides;
on the CPU also read-only, unaligned and byte-swapped), empty batches, one
value per channel, and the functional ``batch_stats``/``batch_norm``.

Tests take a ``device``: the CPU runs the full matrix on larger inputs; CUDA
(the simulator on machines without a GPU, see conftest) runs a matrix that
still covers every layout, dtype and flag on small inputs, with blocks of 32
threads and two values per thread (``small_cuda_blocks``), so these inputs
span several blocks per channel and the thread-, block- and grid-level
merges all run; the shapes are not multiples of the block size. The
shared-memory merge is what runs in the simulator; the warp-shuffle merge is
checked in ``test_cuda_gpu_only.py``.

The reference always gets the very values the package got (low-precision
inputs cast to float64), so tolerances only cover the package's own rounding.
"""

import numpy as np
import pytest

import numba_bn as nbn
from checks import (
    SEQUENCE,
    assert_close,
    backward_step,
    check_array_result,
    check_grads,
    check_state,
    forward_step,
    make_pair,
    run_sequence,
)
from cuda_support import DEFAULT_CUDA_THREADS, needs_cuda
from devices import CPU, CUDA, DEVICES, assign, host, is_on, to_device
from inputs import KINDS, layout_shape, memory_layout, random_input
from matrix import AXES, DTYPES, FLAGS, cases
from numba_bn import config
from reference import RefBatchNorm, ref_batch_stats, ref_forward, ref_running_update

# Tiny CUDA blocks for every test (the CPU ignores them).
pytestmark = pytest.mark.usefixtures("small_cuda_blocks")

# ---------------------------------------------------------------- sequences

#: (module class, channels-first shape); channel_axis=-1 moves axis 1 last.
LAYOUTS = [
    pytest.param(nbn.BatchNorm1d, (7, 5), id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (6, 3, 11), id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 7), id="2d"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 3, 5, 6), id="3d"),
]
#: The same for CUDA: small, but several blocks per channel (see
#: test_small_blocks_exercise_every_merge_level).
CUDA_LAYOUTS = [
    pytest.param(nbn.BatchNorm1d, (37, 5), id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (6, 3, 11), id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 7), id="2d"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 3, 4, 5), id="3d"),
]

#: Per device: the CPU runs every combination; CUDA every layout (float32),
#: every dtype (2d) and every flag (1d float64 and 2d channels-last float16).
SEQUENCE_CASES = cases([CPU], LAYOUTS, AXES, DTYPES, FLAGS) + [
    *cases([CUDA], CUDA_LAYOUTS, AXES, DTYPES[:1], FLAGS[:1]),
    *cases([CUDA], CUDA_LAYOUTS[2:3], AXES, DTYPES[1:], FLAGS[:1]),
    *cases([CUDA], CUDA_LAYOUTS[1:2], AXES[:1], DTYPES[1:2], FLAGS[1:]),
    *cases([CUDA], CUDA_LAYOUTS[2:3], AXES[1:], DTYPES[2:], FLAGS[1:]),
]

#: (steps, batch size increments) per device: shorter on CUDA (the simulator
#: runs each CUDA thread as a Python thread) but with every transition:
#: train, backward after train, an optimiser step, eval, backward after
#: eval, train again.
SEQUENCES = {
    "cpu": (SEQUENCE, (0, 1, 2)),
    "cuda": (["train", "backward", "sgd", "train", "eval", "backward", "train", "backward"], (0, 1, 0)),
}


@pytest.mark.parametrize("device, cls, shape_cf, channel_axis, module_dtype, input_dtype, flags", SEQUENCE_CASES)
def test_sequence(device, cls, shape_cf, channel_axis, module_dtype, input_dtype, flags):
    rng = np.random.default_rng([*shape_cf, channel_axis + 1])
    shape = layout_shape(shape_cf, channel_axis)
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng, device, **flags)
    steps, batch_extra = SEQUENCES[device]
    run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype, steps, batch_extra)


@pytest.mark.parametrize("device", DEVICES)
def test_module_built_on_the_device(device):
    rng = np.random.default_rng(16)
    bn = nbn.BatchNorm1d(5, device=device, momentum=None)
    ref = RefBatchNorm(5, momentum=None)
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert is_on(getattr(bn, name), device), name
    assert type(bn.num_batches_tracked) is int
    run_sequence(bn, ref, rng, (37, 5), 1, np.float32, np.float32, ["train", "train", "backward"])


# ------------------------------------------------------ many work units

#: CPU: inputs large enough for many work units of the default sizes. CUDA:
#: (with one value per thread) more blocks than the reduction target, runs cut
#: into segments, channel tiles wider than a warp (C=37).
MANY_UNITS = [
    *cases([CPU], [
        pytest.param(nbn.BatchNorm2d, (3, 5, 70, 70), 1, id="2d-cfirst-3x5x70x70"),
        pytest.param(nbn.BatchNorm2d, (3, 70, 70, 5), -1, id="2d-clast-3x70x70x5"),
        pytest.param(nbn.BatchNorm1d, (20000, 3), 1, id="1d-20000x3"),
        pytest.param(nbn.BatchNorm1d, (2, 3, 9001), 1, id="1d-cfirst-2x3x9001"),
        pytest.param(nbn.BatchNorm3d, (2, 7, 9, 131, 3), -1, id="3d-clast-2x7x9x131x3"),
    ], DTYPES),
    *cases([CUDA], [
        pytest.param(nbn.BatchNorm1d, (300, 3), 1, id="1d-300x3"),
        pytest.param(nbn.BatchNorm2d, (2, 3, 7, 11), 1, id="2d-cfirst-C3"),
        pytest.param(nbn.BatchNorm2d, (2, 3, 5, 37), -1, id="2d-clast-C37"),
    ], DTYPES[:1]),
]
MANY_UNITS_STEPS = {"cpu": ["train", "backward", "train", "eval", "backward"], "cuda": ["train", "backward"]}


@pytest.mark.parametrize("device, cls, shape, channel_axis, module_dtype, input_dtype", MANY_UNITS)
def test_inputs_spanning_many_work_units(device, cls, shape, channel_axis, module_dtype, input_dtype, monkeypatch):
    if device == "cuda":
        monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 1)
    rng = np.random.default_rng(7)
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng, device, momentum=None)
    run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype, MANY_UNITS_STEPS[device])


@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("device", [CUDA])
def test_default_cuda_blocks(device, channel_axis, monkeypatch):
    """The CUDA kernels at the block size they launch with on a GPU (the other simulator tests take
    64 threads), on an input of several blocks per channel."""
    monkeypatch.setattr(config, "CUDA_THREADS", DEFAULT_CUDA_THREADS)
    monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 1)
    rng = np.random.default_rng(8)
    shape = (1, 3, 4, 70) if channel_axis == 1 else (1, 4, 70, 3)  # 280 values per channel: 2 blocks
    bn, ref = make_pair(nbn.BatchNorm2d, 3, np.float32, channel_axis, rng, device)
    run_sequence(bn, ref, rng, shape, channel_axis, np.float32, np.float32, ["train", "backward"])


@pytest.fixture
def tiny_work_units(monkeypatch):
    """Shrink the CPU kernels' work units so that small inputs span many of them."""
    monkeypatch.setattr(config, "RUN_CHUNK", 3)
    monkeypatch.setattr(config, "ROW_BLOCKS", 4)
    monkeypatch.setattr(config, "ROW_BLOCK_VALUES", 1)
    monkeypatch.setattr(config, "ROW_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)  # the thread-pool kernels, despite the size


@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("cls, shape_cf", LAYOUTS)
def test_cpu_sequence_with_tiny_work_units(cls, shape_cf, channel_axis, module_dtype, input_dtype, tiny_work_units):
    rng = np.random.default_rng(11)
    shape = layout_shape(shape_cf, channel_axis)
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng)
    run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype)


ODD_SHAPES = [
    pytest.param(nbn.BatchNorm1d, (9, 1), 1, id="1d-one-channel"),
    pytest.param(nbn.BatchNorm2d, (4, 1, 3, 5), 1, id="2d-one-channel"),
    pytest.param(nbn.BatchNorm1d, (37, 1000), 1, id="1d-1000-channels"),
    pytest.param(nbn.BatchNorm2d, (2, 5, 3, 131), -1, id="2d-clast-131-channels"),
    pytest.param(nbn.BatchNorm2d, (2, 131, 3, 5), 1, id="2d-cfirst-131-channels"),
    pytest.param(nbn.BatchNorm1d, (5000, 3, 1), 1, id="1d-L1"),
    pytest.param(nbn.BatchNorm1d, (1, 7, 3), -1, id="1d-clast-N1"),
    pytest.param(nbn.BatchNorm2d, (5, 3, 1, 7), 1, id="2d-H1"),
    pytest.param(nbn.BatchNorm2d, (1, 1, 9, 3), -1, id="2d-clast-N1-H1"),
    pytest.param(nbn.BatchNorm3d, (3, 2, 1, 1, 4), 1, id="3d-D1-H1"),
    pytest.param(nbn.BatchNorm3d, (2, 1, 5, 1, 17), -1, id="3d-clast-17-channels"),
]


@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("cls, shape, channel_axis", ODD_SHAPES)
def test_cpu_odd_shapes(cls, shape, channel_axis, module_dtype, input_dtype):
    """One or many channels, size-1 axes, vector-width remainders."""
    rng = np.random.default_rng(15)
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng)
    run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype,
                 steps=["train", "backward", "eval", "backward", "train"])


# ----------------------------------------------------------- memory layouts

#: Kinds of ``inputs.memory_layout`` per device: a device array keeps the
#: host array's strides (``devices.to_device``); read-only and unaligned
#: memory are host-only notions.
LAYOUT_KINDS = {
    "cpu": [*KINDS, "negative-strided"],
    "cuda": ["transposed", "sliced", "negative-strided"],
}
#: Modes of the forward and backward per device (CUDA: the simulator is slow;
#: strided loads are the same code in both modes).
LAYOUT_MODES = {"cpu": ("train", "eval"), "cuda": ("train",)}
LAYOUT_CASES = [
    pytest.param(nbn.BatchNorm1d, (9, 4), 1, id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (5, 3, 8), 1, id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 6), 1, id="2d-cfirst"),
    pytest.param(nbn.BatchNorm2d, (3, 5, 6, 4), -1, id="2d-clast"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 4, 5, 3), -1, id="3d-clast"),
]
CUDA_LAYOUT_CASES = [
    pytest.param(nbn.BatchNorm1d, (5, 4, 9), 1, id="1d-NCL"),
    pytest.param(nbn.BatchNorm1d, (5, 9, 4), -1, id="1d-NLC"),
]


def _kinds(device):
    return [pytest.param(kind, id=kind) for kind in LAYOUT_KINDS[device]]


@pytest.mark.parametrize(
    "device, cls, shape, channel_axis, kind, module_dtype, input_dtype",
    cases([CPU], LAYOUT_CASES, _kinds("cpu"), DTYPES[1:]) + cases([CUDA], CUDA_LAYOUT_CASES, _kinds("cuda"), DTYPES[:1]),
)
def test_any_memory_layout(device, cls, shape, channel_axis, kind, module_dtype, input_dtype):
    """x in layout ``kind``; grad_output in a different layout, so the two disagree."""
    rng = np.random.default_rng(3)
    kinds = LAYOUT_KINDS[device]
    dy_kind = kinds[(kinds.index(kind) + 1) % len(kinds)]
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng, device)
    for step in LAYOUT_MODES[device]:
        bn.train(step == "train")
        ref.train(step == "train")
        x = memory_layout(kind, random_input(rng, shape, channel_axis, input_dtype), seed=1)
        if device == "cuda":
            assert to_device(x, device).strides == x.strides
        forward_step(bn, ref, x, f"{step} forward")
        dy = memory_layout(dy_kind, rng.standard_normal(shape).astype(input_dtype), seed=2)
        backward_step(bn, ref, x, dy, module_dtype, f"{step} backward")


@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", AXES)
def test_cpu_byteswapped_input(channel_axis, module_dtype, input_dtype):
    """Non-native byte order is read correctly; results are in native byte order."""
    rng = np.random.default_rng(4)
    shape = layout_shape((4, 3, 5, 6), channel_axis)
    bn, ref = make_pair(nbn.BatchNorm2d, 3, module_dtype, channel_axis, rng)
    x = random_input(rng, shape, channel_axis, input_dtype)
    y = bn(x.astype(x.dtype.newbyteorder()))
    assert y.dtype == np.dtype(input_dtype) and y.flags.c_contiguous
    assert_close(y, ref(x), input_dtype, "output")
    check_state(bn, ref)
    dy = rng.standard_normal(shape).astype(input_dtype)
    dx = bn.backward(dy.astype(dy.dtype.newbyteorder()))
    assert dx.dtype == np.dtype(input_dtype) and dx.flags.c_contiguous
    assert_close(dx, ref.backward(dy), input_dtype, "grad_input")
    check_grads(bn, ref, np.dtype(module_dtype))


BROADCAST_CASES = [
    *cases([CPU], [pytest.param(nbn.BatchNorm2d, (6, 3, 4, 5), np.float64, id="2d-f64")], AXES),
    *cases([CUDA], [pytest.param(nbn.BatchNorm1d, (5, 4, 9), np.float32, id="1d-f32")], AXES),
]


@pytest.mark.parametrize("device, cls, shape_cf, dtype, channel_axis", BROADCAST_CASES)
def test_broadcast_input_with_zero_strides(device, cls, shape_cf, dtype, channel_axis):
    """Stride-0 (np.broadcast_to, read-only) input and grad_output along the batch axis."""
    rng = np.random.default_rng(5)
    shape = layout_shape(shape_cf, channel_axis)
    one = random_input(rng, (1, *shape[1:]), channel_axis, dtype)
    x = np.broadcast_to(one, shape)
    assert x.strides[0] == 0
    bn, ref = make_pair(cls, shape[channel_axis], dtype, channel_axis, rng, device)
    forward_step(bn, ref, x, "forward")
    dy = np.broadcast_to(rng.standard_normal((1, *shape[1:])).astype(dtype), shape)
    backward_step(bn, ref, x, dy, np.dtype(dtype), "backward")


# ----------------------------------------------------- batch-size edge cases


EMPTY = [
    pytest.param(nbn.BatchNorm1d, (0, 3), 1, id="1d-0xC"),
    pytest.param(nbn.BatchNorm1d, (0, 3, 4), 1, id="1d-0xCxL"),
    pytest.param(nbn.BatchNorm1d, (2, 3, 0), 1, id="1d-2xCx0"),
    pytest.param(nbn.BatchNorm2d, (0, 4, 5, 3), -1, id="2d-clast-0"),
    pytest.param(nbn.BatchNorm3d, (0, 3, 2, 2, 2), 1, id="3d-0"),
]
CUDA_EMPTY = [
    pytest.param(nbn.BatchNorm1d, (0, 4, 3), -1, id="1d-clast-0xLxC"),
    pytest.param(nbn.BatchNorm1d, (2, 3, 0), 1, id="1d-2xCx0"),
]
MOMENTA = [pytest.param(0.1, id="momentum0.1"), pytest.param(None, id="cumavg")]


@pytest.mark.parametrize(
    "device, cls, empty_shape, channel_axis, module_dtype, input_dtype, momentum",
    cases([CPU], EMPTY, DTYPES, MOMENTA) + cases([CUDA], CUDA_EMPTY, DTYPES[:1], MOMENTA[1:]),
)
def test_empty_batch(device, cls, empty_shape, channel_axis, module_dtype, input_dtype, momentum):
    """Empty train batches keep the buffers but count (PyTorch); the next batch then sees the count."""
    rng = np.random.default_rng(6)
    channels = empty_shape[channel_axis]
    bn, ref = make_pair(cls, channels, module_dtype, channel_axis, rng, device, momentum=momentum)
    empty = np.zeros(empty_shape, input_dtype)
    full_shape = tuple(4 if (i != channel_axis % len(empty_shape) and n == 0) else n
                       for i, n in enumerate(empty_shape))
    for step in ("train", "eval"):
        bn.train(step == "train")
        ref.train(step == "train")
        forward_step(bn, ref, empty, f"{step} empty forward")
        backward_step(bn, ref, empty, np.zeros(empty_shape, input_dtype), module_dtype, f"{step} empty backward")
        bn.train()
        ref.train()
        forward_step(bn, ref, random_input(rng, full_shape, channel_axis, input_dtype), "full forward")
    assert bn.num_batches_tracked == 3
    mean, var, count = nbn.batch_stats(to_device(empty, device), channel_axis=channel_axis)
    assert count == 0 and is_on(mean, device) and is_on(var, device)
    assert tuple(mean.shape) == tuple(var.shape) == (channels,)
    assert np.isnan(host(mean)).all() and np.isnan(host(var)).all()


ONE_VALUE = [
    pytest.param(nbn.BatchNorm1d, (1, 3), 1, id="1d-1xC"),
    pytest.param(nbn.BatchNorm1d, (1, 3, 1), 1, id="1d-1xCx1"),
    pytest.param(nbn.BatchNorm1d, (1, 1, 3), -1, id="1d-clast-1x1xC"),
    pytest.param(nbn.BatchNorm2d, (1, 3, 1, 1), 1, id="2d-1xCx1x1"),
    pytest.param(nbn.BatchNorm3d, (1, 1, 1, 1, 3), -1, id="3d-clast"),
]


@pytest.mark.parametrize("cls, shape, channel_axis", ONE_VALUE)
def test_cpu_one_value_per_channel(cls, shape, channel_axis):
    """Training (or not tracking) raises PyTorch's ValueError and changes nothing; eval works.
    (On every device: test_errors.py::test_one_value_per_channel_when_training.)"""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape).astype(np.float32)
    for flags in ({}, {"track_running_stats": False}):
        bn, _ = make_pair(cls, 3, np.float32, channel_axis, rng, **flags)
        before = {k: v.copy() for k, v in bn.state_dict().items()}
        for training in (True, False) if flags else (True,):
            bn.train(training)
            with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
                bn(x)
        after = bn.state_dict()
        assert before.keys() == after.keys()
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    bn, ref = make_pair(cls, 3, np.float32, channel_axis, rng)
    bn.eval()
    ref.eval()
    forward_step(bn, ref, x, "eval forward")
    backward_step(bn, ref, x, rng.standard_normal(shape).astype(np.float32), np.dtype(np.float32), "eval backward")


@pytest.mark.parametrize("channel_axis", AXES)
def test_cpu_single_sample_with_spatial_extent_trains(channel_axis):
    rng = np.random.default_rng(9)
    shape = layout_shape((1, 3, 9), channel_axis)
    bn, ref = make_pair(nbn.BatchNorm1d, 3, np.float64, channel_axis, rng)
    run_sequence(bn, ref, rng, shape, channel_axis, np.dtype(np.float64), np.float64,
                 steps=["train", "backward"])


# -------------------------------------------------------------- numerics

#: CUDA simulator kernels compute with NumPy scalars, which warn where a GPU
#: silently gives inf or NaN (0 * inf, inf - inf); these tests want exactly that.
ieee_specials = pytest.mark.filterwarnings("ignore::RuntimeWarning")

LARGE_MEAN = [
    *cases([CPU], [
        pytest.param(nbn.BatchNorm2d, (8, 3, 40, 30), 1, 0.5, id="2d-cfirst-spread0.5"),
        pytest.param(nbn.BatchNorm2d, (8, 40, 30, 3), -1, 0.5, id="2d-clast-spread0.5"),
    ]),
    *cases([CUDA], [pytest.param(nbn.BatchNorm1d, (9, 2, 40), 1, 0.01, id="1d-cfirst-spread0.01")]),
]


@pytest.mark.parametrize("device, cls, shape, channel_axis, spread", LARGE_MEAN)
def test_large_mean_small_spread_float32(device, cls, shape, channel_axis, spread):
    """|mean| >> std in float32 (1e4 / spread): no cancellation in the statistics, the
    normalisation or the gradients; the reference on the same float32 data is the truth."""
    rng = np.random.default_rng(10)
    x = (np.float32(1e4) + np.float32(spread) * rng.standard_normal(shape).astype(np.float32)).astype(np.float32)
    mean, var, _ = nbn.batch_stats(to_device(x, device), channel_axis=channel_axis)
    ref_mean, ref_var, _ = ref_batch_stats(x, channel_axis)
    np.testing.assert_allclose(host(mean), ref_mean, rtol=1e-7)
    np.testing.assert_allclose(host(var), ref_var, rtol=1e-4)
    bn, ref = make_pair(cls, shape[channel_axis], np.float32, channel_axis, rng, device)
    forward_step(bn, ref, x, "forward")
    dy = rng.standard_normal(shape).astype(np.float32)
    backward_step(bn, ref, x, dy, np.dtype(np.float32), "backward")


@ieee_specials
@pytest.mark.parametrize("device", DEVICES)
def test_constant_channel_has_exactly_zero_variance(device):
    rng = np.random.default_rng(17)
    x = random_input(rng, (7, 3, 11), 1, np.float32)
    x[:, 1, :] = np.float32(1234.5678)
    mean, var, count = nbn.batch_stats(to_device(x, device))
    assert is_on(mean, device) and is_on(var, device) and count == 77
    assert host(var)[1] == 0.0
    assert host(mean)[1] == np.float32(1234.5678)
    bn = nbn.BatchNorm1d(3, device=device, eps=0.0)
    y = host(bn(to_device(x, device)))
    # 0 * inf is NaN in every framework; the other channels are unaffected.
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


@ieee_specials
@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("device", DEVICES)
def test_nan_stays_in_its_channel(device, channel_axis):
    rng = np.random.default_rng(18)
    x = random_input(rng, layout_shape((6, 3, 10), channel_axis), channel_axis, np.float32)
    x[(2, 1, 4) if channel_axis == 1 else (2, 4, 1)] = np.nan
    bn = nbn.BatchNorm1d(3, device=device, channel_axis=channel_axis)
    y = host(bn(to_device(x, device)))
    rm = host(bn.running_mean)
    picks = np.moveaxis(y, channel_axis, 0)
    assert np.isnan(picks[1]).all()
    assert np.isfinite(picks[[0, 2]]).all()
    assert np.isnan(rm[1]) and np.isfinite(rm[[0, 2]]).all()


# ------------------------------------------------------------- functional


FUNCTIONAL_SHAPES = [
    pytest.param((7, 5), 1, id="NC"),
    pytest.param((6, 3, 11), 1, id="NCL"),
    pytest.param((6, 11, 3), -1, id="NLC"),
    pytest.param((3, 4, 5, 7), 1, id="NCHW"),
    pytest.param((3, 5, 7, 4), -1, id="NHWC"),
    pytest.param((2, 3, 3, 5, 6), 1, id="NCDHW"),
    pytest.param((2, 3, 5, 6, 3), -1, id="NDHWC"),
    pytest.param((20000, 3), -1, id="20000xC"),
    pytest.param((3, 5, 70, 70), 1, id="3x5x70x70"),
]
FUNCTIONAL_DTYPES = [pytest.param(np.float16, id="f16"), pytest.param(np.float32, id="f32"),
                     pytest.param(np.float64, id="f64")]
STATS_DTYPE = {np.float16: np.float32, np.float32: np.float32, np.float64: np.float64}


@pytest.mark.parametrize(
    "device, shape, channel_axis, dtype",
    cases([CPU], FUNCTIONAL_SHAPES, FUNCTIONAL_DTYPES)
    + cases([CUDA], FUNCTIONAL_SHAPES[1:2], FUNCTIONAL_DTYPES[::2])
    + cases([CUDA], FUNCTIONAL_SHAPES[2:3], FUNCTIONAL_DTYPES[1:2]),
)
def test_batch_stats(device, shape, channel_axis, dtype):
    rng = np.random.default_rng(12)
    x = random_input(rng, shape, channel_axis, dtype)
    x = memory_layout("negative", x)  # any strides
    mean, var, count = nbn.batch_stats(to_device(x, device), channel_axis=channel_axis)
    ref_mean, ref_var, ref_count = ref_batch_stats(x, channel_axis)
    assert type(count) is int and count == ref_count
    for name, actual, expected in (("mean", mean, ref_mean), ("var", var, ref_var)):
        assert is_on(actual, device), name
        assert tuple(actual.shape) == (shape[channel_axis],) and actual.dtype == STATS_DTYPE[dtype], name
        assert_close(actual, expected, STATS_DTYPE[dtype], name)


#: (training, running buffers?, momentum, affine parameters)
FUNCTIONAL_MODES = [
    pytest.param(True, True, 0.1, id="train"),
    pytest.param(True, True, 0.7, id="train-momentum0.7"),
    pytest.param(True, False, 0.1, id="train-nobuffers"),
    pytest.param(False, True, 0.1, id="eval"),
]
AFFINE = [pytest.param(a, id=a) for a in ("weight+bias", "weight", "none")]
#: CUDA: training with every argument, evaluation with none, training without buffers.
CUDA_FUNCTIONAL_MODES = [
    pytest.param(True, True, 0.7, "weight+bias", id="train-momentum0.7-weight+bias"),
    pytest.param(False, True, 0.1, "none", id="eval-none"),
    pytest.param(True, False, 0.1, "weight", id="train-nobuffers-weight"),
]


@pytest.mark.parametrize(
    "device, shape, channel_axis, dtype, training, buffers, momentum, affine",
    cases([CPU], FUNCTIONAL_SHAPES[1:5], FUNCTIONAL_DTYPES, FUNCTIONAL_MODES, AFFINE)
    + cases([CUDA], FUNCTIONAL_SHAPES[1:3], FUNCTIONAL_DTYPES, CUDA_FUNCTIONAL_MODES[:2])
    + cases([CUDA], FUNCTIONAL_SHAPES[1:2], FUNCTIONAL_DTYPES[1:2], CUDA_FUNCTIONAL_MODES[2:]),
)
def test_batch_norm_functional(device, shape, channel_axis, dtype, training, buffers, momentum, affine):
    rng = np.random.default_rng(13)
    channels = shape[channel_axis]
    param_dtype = STATS_DTYPE[dtype]
    x = random_input(rng, shape, channel_axis, dtype)
    running_mean = rng.standard_normal(channels).astype(param_dtype) if buffers else None
    running_var = rng.uniform(0.5, 2, channels).astype(param_dtype) if buffers else None
    weight = rng.uniform(0.5, 2, channels).astype(param_dtype) if affine != "none" else None
    bias = rng.standard_normal(channels).astype(param_dtype) if affine == "weight+bias" else None
    eps = 1e-3
    rm_ref, rv_ref = (running_mean.astype(np.float64), running_var.astype(np.float64)) if buffers else (None, None)
    rm_obj, rv_obj = (to_device(running_mean, device), to_device(running_var, device)) if buffers else (None, None)
    on_device = [None if a is None else to_device(a, device) for a in (weight, bias)]

    y = nbn.batch_norm(to_device(x, device), rm_obj, rv_obj, *on_device, training=training,
                       momentum=momentum, eps=eps, channel_axis=channel_axis)

    if training:
        mean, var, count = ref_batch_stats(x, channel_axis)
        y_ref = ref_forward(x, mean, var, weight, bias, eps, channel_axis)
        if buffers:
            rm_ref, rv_ref = ref_running_update(rm_ref, rv_ref, mean, var, count, momentum)
    else:
        y_ref = ref_forward(x, rm_ref, rv_ref, weight, bias, eps, channel_axis)
    check_array_result(y, y_ref, x, "output", device)
    if buffers:  # updated in place
        assert rm_obj.dtype == param_dtype and rv_obj.dtype == param_dtype
        assert_close(rm_obj, rm_ref, param_dtype, "running_mean (in place)")
        assert_close(rv_obj, rv_ref, param_dtype, "running_var (in place)")


# The API layer, the same on every device: CUDA only in test_batch_norm_functional
# (this test takes seconds in the simulator).
@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("device", [CPU])
def test_functional_matches_module(device, channel_axis):
    """batch_norm with the module's arrays does what the module's forward does."""
    rng = np.random.default_rng(14)
    shape = layout_shape((5, 3, 4, 6), channel_axis)
    bn, _ = make_pair(nbn.BatchNorm2d, 3, np.float64, channel_axis, rng, device)
    rm, rv = (to_device(host(a), device) for a in (bn.running_mean, bn.running_var))
    for training in (True, True, False):
        bn.train(training)
        x = to_device(random_input(rng, shape, channel_axis, np.float64), device)
        y = nbn.batch_norm(x, rm, rv, bn.weight, bn.bias, training, 0.1, 1e-5, channel_axis=channel_axis)
        assert_close(y, host(bn(x)), np.float64, "output")
        assert_close(rm, host(bn.running_mean), np.float64, "running_mean")
        assert_close(rv, host(bn.running_var), np.float64, "running_var")


# ------------------------------------------------------- state and moves


@pytest.mark.parametrize("device", DEVICES)
def test_reset_parameters(device):
    rng = np.random.default_rng(19)
    bn = nbn.BatchNorm1d(3, device=device)
    bn(to_device(random_input(rng, (8, 3), 1, np.float32), device))
    weight, running_mean = bn.weight, bn.running_mean
    assign(bn.weight, np.full(3, 2.0, np.float32))
    bn.reset_parameters()
    assert bn.weight is weight and bn.running_mean is running_mean  # in place
    np.testing.assert_array_equal(host(bn.weight), 1)
    np.testing.assert_array_equal(host(bn.bias), 0)
    np.testing.assert_array_equal(host(bn.running_mean), 0)
    np.testing.assert_array_equal(host(bn.running_var), 1)
    assert bn.num_batches_tracked == 0


@needs_cuda
def test_cuda_state_dict_round_trips_and_moves():
    from numba import cuda

    rng = np.random.default_rng(20)
    bn = nbn.BatchNorm2d(4, device="cuda", momentum=None)
    x = random_input(rng, (3, 4, 5, 6), 1, np.float32)
    bn(cuda.to_device(x))
    bn.backward(cuda.to_device(np.ones_like(x)))
    state = bn.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    for key, value in state.items():
        assert isinstance(value, np.ndarray), key
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"] == 1

    cpu_twin = nbn.BatchNorm2d(4, momentum=None)
    cpu_twin.load_state_dict(state)
    np.testing.assert_array_equal(cpu_twin.running_var, host(bn.running_var))

    # Host state into a device module: copied into the existing device arrays.
    other = nbn.BatchNorm2d(4, device="cuda")
    weight_before = other.weight
    changed = {k: (v + 1 if k != "num_batches_tracked" else v) for k, v in state.items()}
    other.load_state_dict(changed)
    assert other.weight is weight_before
    np.testing.assert_array_equal(host(other.weight), state["weight"] + 1)
    assert other.num_batches_tracked == 1

    # Moves keep values, types and gradients; forward results agree on both devices.
    grads = host(bn.grad_weight)
    assert bn.cpu() is bn and bn.device == "cpu"
    assert isinstance(bn.running_mean, np.ndarray) and isinstance(bn.grad_weight, np.ndarray)
    np.testing.assert_array_equal(bn.grad_weight, grads)
    np.testing.assert_array_equal(bn.running_mean, state["running_mean"])
    bn.eval()
    y_cpu = bn(x)
    assert bn.to("cuda") is bn and is_on(bn.running_var, "cuda")
    assert_close(host(bn(cuda.to_device(x))), y_cpu, np.float32, "eval output after moves")
    with pytest.raises(RuntimeError, match="forward"):
        bn.cpu().backward(np.ones_like(x))


@needs_cuda
def test_cuda_stream_choice():
    from numba import cuda

    x = random_input(np.random.default_rng(21), (5, 3, 8), 1, np.float32)
    expected = host(nbn.BatchNorm1d(3, device="cuda")(cuda.to_device(x)))
    stream = cuda.stream()
    bn = nbn.BatchNorm1d(3, device="cuda")
    with nbn.cuda_stream(stream) as chosen:
        assert chosen is stream
        y = bn(cuda.to_device(x, stream=stream))
        state = bn.state_dict()
    stream.synchronize()
    np.testing.assert_array_equal(host(y), expected)
    assert state["num_batches_tracked"] == 1


# --------------------------------------------------------- CUDA geometry


@needs_cuda
def test_small_blocks_exercise_every_merge_level(monkeypatch):
    """The CUDA shapes above really span several blocks per channel, split runs and tile channels."""
    from numba_bn._layout import ROWS, RUNS
    from numba_bn.cuda.launch import geometry

    _, block, parts, _ = geometry(RUNS, (4, 1, 1, 3, 35), reduction=True)  # 2d (3, 4, 5, 7)
    assert block == (32, 1) and parts > 1
    _, block, parts, _ = geometry(ROWS, (1, 1, 1, 37, 5), reduction=True)  # 1d (37, 5)
    assert block == (8, 4) and parts > 1
    monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 1)  # as test_inputs_spanning_many_work_units
    _, _, parts, (splits,) = geometry(RUNS, (3, 1, 1, 2, 77), reduction=True)  # 2d (2, 3, 7, 11)
    assert parts > 1 and splits > 1  # runs cut into segments
    grid, block, parts, _ = geometry(ROWS, (1, 1, 2, 15, 37), reduction=True)  # 2d (2, 3, 5, 37) clast
    assert block == (32, 1) and grid[1] == 2 and parts > 1  # two channel tiles
