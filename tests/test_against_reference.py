"""numba_bn against the float64 NumPy reference in ``reference.py``.

Checks, step by step through sequences of train forwards, backward calls and
eval forwards: outputs, ``grad_input``, ``grad_weight``/``grad_bias``, the
running buffers and ``num_batches_tracked``, for BatchNorm1d (``(N, C)`` and
``(N, C, L)``), 2d and 3d, channels first and last, float32, float64 and
float16-in-float32, and the affine/bias/tracking/momentum flags. Also: inputs
large enough to span many kernel work units (and tiny work units on small
inputs), any memory layout (transposed, Fortran, strided, negative strides,
read-only, unaligned, byte-swapped, broadcast), empty batches, one value per
channel, and the functional ``batch_stats``/``batch_norm``.

The reference always gets the very values the package got (low-precision
inputs cast to float64), so tolerances only cover the package's own rounding.
"""

import numpy as np
import pytest

import numba_bn as nbn
from matrix import AXES, DTYPES
from numba_bn import config
from reference import RefBatchNorm, ref_batch_stats, ref_forward, ref_running_update

# ----------------------------------------------------------------- matrix

#: (module class, channels-first shape); channel_axis=-1 moves axis 1 last.
LAYOUTS = [
    pytest.param(nbn.BatchNorm1d, (7, 5), id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (6, 3, 11), id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 7), id="2d"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 3, 5, 6), id="3d"),
]
FLAGS = [
    pytest.param({}, id="default"),
    pytest.param({"bias": False, "momentum": None}, id="nobias-cumavg"),
    pytest.param({"affine": False, "eps": 0.25, "momentum": 0.5}, id="noaffine-eps"),
    pytest.param({"track_running_stats": False}, id="notrack"),
    pytest.param({"affine": False, "track_running_stats": False, "momentum": None}, id="noaffine-notrack"),
]

#: (rtol, atol / max(|ref|, 1)) per dtype of the compared array. float16 results
#: computed in float32 must be correctly rounded: within half an ulp (2**-11
#: relative) plus the float32 computation's error.
TOL = {
    np.dtype(np.float64): (1e-10, 1e-10),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float16): (2.0**-11 * 1.001, 1e-5),
}

#: Forwards ("train"/"eval" switch the mode first), backward calls and an SGD
#: step on weight/bias (in place, as an optimiser would); the repeated
#: backward checks that gradients are overwritten, not accumulated.
SEQUENCE = ["train", "train", "backward", "backward", "sgd", "eval", "backward", "train", "eval", "train",
            "backward"]


# ---------------------------------------------------------------- helpers


def layout_shape(shape_cf, channel_axis):
    """The input shape for ``channel_axis`` given the channels-first shape."""
    if channel_axis == 1 or len(shape_cf) == 2:
        return tuple(shape_cf)
    return (shape_cf[0], *shape_cf[2:], shape_cf[1])


def random_input(rng, shape, channel_axis, dtype):
    """Data with a different mean and spread in every channel."""
    channels = shape[channel_axis]
    bshape = [1] * len(shape)
    bshape[channel_axis] = channels
    loc = rng.uniform(-3, 3, channels).reshape(bshape)
    spread = rng.uniform(0.5, 3, channels).reshape(bshape)
    return (loc + spread * rng.standard_normal(shape)).astype(dtype)


def assert_close(actual, expected, dtype, what):
    """Compare with a tolerance for ``dtype``, scaled by the magnitude of ``expected``."""
    expected = np.asarray(expected, dtype=np.float64)
    rtol, atol = TOL[np.dtype(dtype)]
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    np.testing.assert_allclose(
        np.asarray(actual).astype(np.float64), expected, rtol=rtol, atol=atol * scale, err_msg=what
    )


def make_pair(cls, channels, module_dtype, channel_axis, rng, **flags):
    """A package module and a reference with the same random parameters and buffers."""
    bn = cls(channels, dtype=module_dtype, channel_axis=channel_axis, **flags)
    ref = RefBatchNorm(
        channels,
        eps=flags.get("eps", 1e-5),
        momentum=flags.get("momentum", 0.1),
        affine=flags.get("affine", True),
        track_running_stats=flags.get("track_running_stats", True),
        bias=flags.get("bias", True),
        channel_axis=channel_axis,
    )
    values = {
        "weight": rng.uniform(0.5, 2.0, channels),
        "bias": rng.standard_normal(channels),
        "running_mean": rng.standard_normal(channels),
        "running_var": rng.uniform(0.5, 2.0, channels),
    }
    for name, value in values.items():
        if getattr(bn, name) is not None:
            getattr(bn, name)[...] = value
            setattr(ref, name, getattr(bn, name).astype(np.float64))  # the rounded values
        assert (getattr(bn, name) is None) == (getattr(ref, name) is None), name
    return bn, ref


def check_state(bn, ref):
    """Running buffers, counter and mode of the module equal the reference's."""
    dtype = bn.running_mean.dtype if bn.running_mean is not None else None
    for name in ("running_mean", "running_var"):
        value = getattr(bn, name)
        if ref.track_running_stats:
            assert isinstance(value, np.ndarray) and value.shape == ref.running_mean.shape, name
            assert_close(value, getattr(ref, name), dtype, name)
        else:
            assert value is None, name
    if ref.track_running_stats:
        assert type(bn.num_batches_tracked) is int
    assert bn.num_batches_tracked == ref.num_batches_tracked
    assert bn.training == ref.training


def check_grads(bn, ref, module_dtype):
    for name in ("grad_weight", "grad_bias"):
        expected = getattr(ref, name)
        actual = getattr(bn, name)
        if expected is None:
            assert actual is None, name
        else:
            assert actual.shape == expected.shape and actual.dtype == module_dtype, name
            assert_close(actual, expected, module_dtype, name)


def check_array_result(actual, expected, like, what):
    """A fresh C-contiguous result of ``like``'s shape and dtype, close to ``expected``."""
    assert isinstance(actual, np.ndarray), what
    assert actual.shape == like.shape, what
    assert actual.dtype == like.dtype, what
    assert actual.flags.c_contiguous, what
    assert not np.shares_memory(actual, like), what
    assert_close(actual, expected, like.dtype, what)


def forward_step(bn, ref, x, what):
    x_before = x.copy()
    y = bn(x)
    y_ref = ref(x)
    np.testing.assert_array_equal(x, x_before, err_msg=f"{what}: input modified")
    check_array_result(y, y_ref, x, f"{what}: output")
    check_state(bn, ref)


def backward_step(bn, ref, x, dy, module_dtype, what):
    dy_before = dy.copy()
    dx = bn.backward(dy)
    dx_ref = ref.backward(dy)
    np.testing.assert_array_equal(dy, dy_before, err_msg=f"{what}: grad_output modified")
    check_array_result(dx, dx_ref, x, f"{what}: grad_input")
    check_grads(bn, ref, module_dtype)
    check_state(bn, ref)


def run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype, steps=SEQUENCE):
    """Run ``steps`` on both, varying the batch size, comparing after every step."""
    x = None
    batch = 0
    for i, step in enumerate(steps):
        what = f"step {i} ({step})"
        if step == "backward":
            dy = rng.standard_normal(x.shape).astype(input_dtype)
            backward_step(bn, ref, x, dy, module_dtype, what)
            continue
        if step == "sgd":
            for name in ("weight", "bias"):
                if getattr(bn, name) is not None:
                    getattr(bn, name)[...] -= 0.5 * getattr(bn, "grad_" + name)
                    setattr(ref, name, getattr(bn, name).astype(np.float64))
            continue
        assert (bn.train() if step == "train" else bn.eval()) is bn
        ref.train(step == "train")
        x = random_input(rng, (shape[0] + batch % 3, *shape[1:]), channel_axis, input_dtype)
        batch += 1
        forward_step(bn, ref, x, what)


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("cls, shape_cf", LAYOUTS)
def test_sequence(cls, shape_cf, channel_axis, module_dtype, input_dtype, flags):
    rng = np.random.default_rng([*shape_cf, channel_axis + 1])
    shape = layout_shape(shape_cf, channel_axis)
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng, **flags)
    run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype)


LARGE = [
    pytest.param(nbn.BatchNorm2d, (3, 5, 70, 70), 1, id="2d-cfirst-3x5x70x70"),
    pytest.param(nbn.BatchNorm2d, (3, 70, 70, 5), -1, id="2d-clast-3x70x70x5"),
    pytest.param(nbn.BatchNorm1d, (20000, 3), 1, id="1d-20000x3"),
    pytest.param(nbn.BatchNorm1d, (2, 3, 9001), 1, id="1d-cfirst-2x3x9001"),
    pytest.param(nbn.BatchNorm3d, (2, 7, 9, 131, 3), -1, id="3d-clast-2x7x9x131x3"),
]


@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("cls, shape, channel_axis", LARGE)
def test_large_inputs_span_many_work_units(cls, shape, channel_axis, module_dtype, input_dtype):
    rng = np.random.default_rng(7)
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng, momentum=None)
    run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype,
                 steps=["train", "backward", "train", "eval", "backward"])


@pytest.fixture
def tiny_work_units(monkeypatch):
    """Shrink the kernels' work units so that small inputs span many of them."""
    monkeypatch.setattr(config, "RUN_CHUNK", 3)
    monkeypatch.setattr(config, "ROW_BLOCKS", 4)
    monkeypatch.setattr(config, "ROW_BLOCK_VALUES", 1)
    monkeypatch.setattr(config, "ROW_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)  # the thread-pool kernels, despite the size


@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("cls, shape_cf", LAYOUTS)
def test_sequence_with_tiny_work_units(cls, shape_cf, channel_axis, module_dtype, input_dtype, tiny_work_units):
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
def test_odd_shapes(cls, shape, channel_axis, module_dtype, input_dtype):
    """One or many channels, size-1 axes, vector-width remainders."""
    rng = np.random.default_rng(15)
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng)
    run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype,
                 steps=["train", "backward", "eval", "backward", "train"])


# ----------------------------------------------------------- memory layouts


def unaligned_copy(values):
    """A copy of ``values`` at an address that is not a multiple of its itemsize."""
    raw = np.zeros(values.nbytes + 1, np.uint8)[1:]
    out = raw.view(values.dtype).reshape(values.shape)
    out[...] = values
    assert not out.flags.aligned
    return out


def memory_layout(kind, values, seed=0):
    """An array equal to ``values`` (same shape and dtype) in the memory layout ``kind``."""
    reverse = tuple(range(values.ndim))[::-1]
    flip_all = (slice(None, None, -1),) * values.ndim
    every_other = (slice(None, None, 2),) * values.ndim
    if kind == "c":
        return values.copy()
    if kind == "fortran":
        return np.asfortranarray(values)
    if kind == "transposed":
        return np.ascontiguousarray(values.transpose(reverse)).transpose(reverse)
    if kind == "permuted":
        order = np.random.default_rng(seed).permutation(values.ndim)
        return np.ascontiguousarray(values.transpose(order)).transpose(np.argsort(order))
    if kind == "strided":
        padded = np.full(tuple(2 * n for n in values.shape), np.nan, values.dtype)
        padded[every_other] = values
        return padded[every_other]
    if kind == "negative":
        return np.ascontiguousarray(values[flip_all])[flip_all]
    if kind == "sliced":  # an interior window: offset start, non-unit strides on axis 0
        padded = np.full((2 * values.shape[0] + 1, *values.shape[1:]), np.nan, values.dtype)
        padded[1::2] = values
        return padded[1::2]
    if kind == "readonly":
        out = values.copy()
        out.flags.writeable = False
        return out
    if kind == "unaligned":
        return unaligned_copy(values)
    raise ValueError(kind)


KINDS = ["c", "fortran", "transposed", "permuted", "strided", "negative", "sliced", "readonly", "unaligned"]
LAYOUT_CASES = [
    pytest.param(nbn.BatchNorm1d, (9, 4), 1, id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (5, 3, 8), 1, id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 6), 1, id="2d-cfirst"),
    pytest.param(nbn.BatchNorm2d, (3, 5, 6, 4), -1, id="2d-clast"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 4, 5, 3), -1, id="3d-clast"),
]


@pytest.mark.parametrize("module_dtype, input_dtype", [DTYPES[1], DTYPES[2]])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls, shape, channel_axis", LAYOUT_CASES)
def test_any_memory_layout(cls, shape, channel_axis, kind, module_dtype, input_dtype):
    """x in layout ``kind``; grad_output in a different layout, so the two disagree."""
    rng = np.random.default_rng(3)
    dy_kind = KINDS[(KINDS.index(kind) + 1) % len(KINDS)]
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng)
    for step in ("train", "eval"):
        bn.train(step == "train")
        ref.train(step == "train")
        x = memory_layout(kind, random_input(rng, shape, channel_axis, input_dtype), seed=1)
        forward_step(bn, ref, x, f"{step} forward")
        dy = memory_layout(dy_kind, rng.standard_normal(shape).astype(input_dtype), seed=2)
        backward_step(bn, ref, x, dy, module_dtype, f"{step} backward")


@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", AXES)
def test_byteswapped_input(channel_axis, module_dtype, input_dtype):
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


@pytest.mark.parametrize("channel_axis", AXES)
def test_broadcast_input_with_zero_strides(channel_axis):
    """Stride-0 (np.broadcast_to, read-only) input along the batch axis."""
    rng = np.random.default_rng(5)
    shape = layout_shape((6, 3, 4, 5), channel_axis)
    one = random_input(rng, (1, *shape[1:]), channel_axis, np.float64)
    x = np.broadcast_to(one, shape)
    bn, ref = make_pair(nbn.BatchNorm2d, 3, np.float64, channel_axis, rng)
    forward_step(bn, ref, x, "forward")
    dy = np.broadcast_to(rng.standard_normal((1, *shape[1:])), shape)
    backward_step(bn, ref, x, dy, np.dtype(np.float64), "backward")


# ----------------------------------------------------- batch-size edge cases


EMPTY = [
    pytest.param(nbn.BatchNorm1d, (0, 3), 1, id="1d-0xC"),
    pytest.param(nbn.BatchNorm1d, (0, 3, 4), 1, id="1d-0xCxL"),
    pytest.param(nbn.BatchNorm1d, (2, 3, 0), 1, id="1d-2xCx0"),
    pytest.param(nbn.BatchNorm2d, (0, 4, 5, 3), -1, id="2d-clast-0"),
    pytest.param(nbn.BatchNorm3d, (0, 3, 2, 2, 2), 1, id="3d-0"),
]


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumavg"])
@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("cls, empty_shape, channel_axis", EMPTY)
def test_empty_batch(cls, empty_shape, channel_axis, module_dtype, input_dtype, momentum):
    """Empty train batches keep the buffers but count (PyTorch); the next batch then sees the count."""
    rng = np.random.default_rng(6)
    channels = empty_shape[channel_axis]
    bn, ref = make_pair(cls, channels, module_dtype, channel_axis, rng, momentum=momentum)
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


ONE_VALUE = [
    pytest.param(nbn.BatchNorm1d, (1, 3), 1, id="1d-1xC"),
    pytest.param(nbn.BatchNorm1d, (1, 3, 1), 1, id="1d-1xCx1"),
    pytest.param(nbn.BatchNorm1d, (1, 1, 3), -1, id="1d-clast-1x1xC"),
    pytest.param(nbn.BatchNorm2d, (1, 3, 1, 1), 1, id="2d-1xCx1x1"),
    pytest.param(nbn.BatchNorm3d, (1, 1, 1, 1, 3), -1, id="3d-clast"),
]


@pytest.mark.parametrize("cls, shape, channel_axis", ONE_VALUE)
def test_one_value_per_channel(cls, shape, channel_axis):
    """Training (or not tracking) raises PyTorch's ValueError and changes nothing; eval works."""
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
def test_single_sample_with_spatial_extent_trains(channel_axis):
    rng = np.random.default_rng(9)
    shape = layout_shape((1, 3, 9), channel_axis)
    bn, ref = make_pair(nbn.BatchNorm1d, 3, np.float64, channel_axis, rng)
    run_sequence(bn, ref, rng, shape, channel_axis, np.dtype(np.float64), np.float64,
                 steps=["train", "backward"])


def test_large_mean_small_spread_float32():
    """|mean| / std = 1e4 in float32: the reference on the same float32 data is the truth."""
    rng = np.random.default_rng(10)
    for channel_axis, shape in ((1, (8, 3, 40, 30)), (-1, (8, 40, 30, 3))):
        x = (1e4 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
        bn, ref = make_pair(nbn.BatchNorm2d, 3, np.float32, channel_axis, rng)
        forward_step(bn, ref, x, f"axis {channel_axis} forward")
        dy = rng.standard_normal(shape).astype(np.float32)
        backward_step(bn, ref, x, dy, np.dtype(np.float32), f"axis {channel_axis} backward")


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
STATS_DTYPE = {np.float16: np.float32, np.float32: np.float32, np.float64: np.float64}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("shape, channel_axis", FUNCTIONAL_SHAPES)
def test_batch_stats(shape, channel_axis, dtype):
    rng = np.random.default_rng(12)
    x = random_input(rng, shape, channel_axis, dtype)
    x = memory_layout("negative", x)  # any strides
    mean, var, count = nbn.batch_stats(x, channel_axis=channel_axis)
    ref_mean, ref_var, ref_count = ref_batch_stats(x, channel_axis)
    assert type(count) is int and count == ref_count
    for name, actual, expected in (("mean", mean, ref_mean), ("var", var, ref_var)):
        assert actual.shape == (shape[channel_axis],) and actual.dtype == STATS_DTYPE[dtype], name
        assert_close(actual, expected, STATS_DTYPE[dtype], name)


FUNCTIONAL_MODES = [
    pytest.param(True, True, 0.1, id="train"),
    pytest.param(True, True, 0.7, id="train-momentum0.7"),
    pytest.param(True, False, 0.1, id="train-nobuffers"),
    pytest.param(False, True, 0.1, id="eval"),
]


@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
@pytest.mark.parametrize("training, buffers, momentum", FUNCTIONAL_MODES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("shape, channel_axis", FUNCTIONAL_SHAPES[1:5])
def test_batch_norm_functional(shape, channel_axis, dtype, training, buffers, momentum, affine):
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
    rm_obj, rv_obj = running_mean, running_var

    y = nbn.batch_norm(x, running_mean, running_var, weight, bias, training=training,
                       momentum=momentum, eps=eps, channel_axis=channel_axis)

    if training:
        mean, var, count = ref_batch_stats(x, channel_axis)
        y_ref = ref_forward(x, mean, var, weight, bias, eps, channel_axis)
        if buffers:
            rm_ref, rv_ref = ref_running_update(rm_ref, rv_ref, mean, var, count, momentum)
    else:
        y_ref = ref_forward(x, rm_ref, rv_ref, weight, bias, eps, channel_axis)
    check_array_result(y, y_ref, x, "output")
    if buffers:
        assert running_mean is rm_obj and running_var is rv_obj
        assert running_mean.dtype == param_dtype and running_var.dtype == param_dtype
        assert_close(running_mean, rm_ref, param_dtype, "running_mean (in place)")
        assert_close(running_var, rv_ref, param_dtype, "running_var (in place)")


@pytest.mark.parametrize("channel_axis", AXES)
def test_functional_matches_module(channel_axis):
    """batch_norm with the module's arrays does what the module's forward does."""
    rng = np.random.default_rng(14)
    shape = layout_shape((5, 3, 4, 6), channel_axis)
    bn, _ = make_pair(nbn.BatchNorm2d, 3, np.float64, channel_axis, rng)
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    for training in (True, True, False):
        bn.train(training)
        x = random_input(rng, shape, channel_axis, np.float64)
        y = nbn.batch_norm(x, rm, rv, bn.weight, bn.bias, training, 0.1, 1e-5, channel_axis=channel_axis)
        assert_close(y, bn(x), np.float64, "output")
        assert_close(rm, bn.running_mean, np.float64, "running_mean")
        assert_close(rv, bn.running_var, np.float64, "running_var")
