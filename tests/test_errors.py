"""Every rejected argument: exception type, message content, and no state change."""

import numpy as np
import pytest

import numba_bn as nbn
from state_snapshot import assert_unchanged, snapshot


def trained(cls=nbn.BatchNorm2d, shape=(4, 3, 5, 5), **kwargs):
    """A module that has seen one train step and one backward, so every field is set."""
    bn = cls(shape[1] if kwargs.get("channel_axis", 1) == 1 else shape[-1], **kwargs)
    x = np.random.default_rng(0).standard_normal(shape).astype(bn.dtype)
    bn(x)
    bn.backward(np.ones_like(x))
    return bn


def raises_without_change(bn, call, error, *fragments):
    before = snapshot(bn)
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert_unchanged(bn, before)
    return info


# ----------------------------------------------------------------- forward


@pytest.mark.parametrize(
    "cls, shape, expected",
    [
        (nbn.BatchNorm1d, (2, 3, 4, 5), "expected 2D or 3D input (got 4D input)"),
        (nbn.BatchNorm1d, (3,), "expected 2D or 3D input (got 1D input)"),
        (nbn.BatchNorm2d, (2, 3, 4), "expected 4D input (got 3D input)"),
        (nbn.BatchNorm3d, (2, 3, 4, 5), "expected 5D input (got 4D input)"),
    ],
)
def test_wrong_rank(cls, shape, expected):
    bn = cls(3)
    raises_without_change(bn, lambda: bn(np.zeros(shape, np.float32)), ValueError, expected)


@pytest.mark.parametrize("channel_axis, shape, axis", [(1, (4, 5, 2, 2), 1), (-1, (4, 2, 2, 5), 3)])
def test_wrong_channel_count(channel_axis, shape, axis):
    bn = trained(channel_axis=channel_axis, shape=(4, 3, 2, 2) if channel_axis == 1 else (4, 2, 2, 3))
    raises_without_change(
        bn,
        lambda: bn(np.zeros(shape, np.float32)),
        ValueError,
        f"expected input with 3 channels on axis {axis}, got 5",
    )


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex64, object])
def test_non_floating_input(dtype):
    bn = trained()
    x = np.zeros((4, 3, 5, 5), dtype)
    raises_without_change(bn, lambda: bn(x), TypeError, "float32", str(np.dtype(dtype)))


def test_mismatched_float_dtype_names_both():
    bn = trained(dtype=np.float64)
    x = np.zeros((4, 3, 5, 5), np.float32)
    info = raises_without_change(bn, lambda: bn(x), TypeError, "float64", "got float32")
    assert "astype" in str(info.value)
    bn16 = trained(dtype=np.float64)
    raises_without_change(bn16, lambda: bn16(x.astype(np.float16)), TypeError, "got float16")


@pytest.mark.parametrize("value", [[[1.0, 2.0]], 3.0, "x", None])
def test_non_array_input(value):
    bn = trained(nbn.BatchNorm1d, (5, 2))
    raises_without_change(bn, lambda: bn(value), TypeError, "numpy.ndarray")


@pytest.mark.parametrize(
    "cls, shape",
    [(nbn.BatchNorm1d, (1, 3)), (nbn.BatchNorm1d, (1, 3, 1)), (nbn.BatchNorm2d, (1, 3, 1, 1)), (nbn.BatchNorm3d, (1, 3, 1, 1, 1))],
)
def test_one_value_per_channel_when_training(cls, shape):
    bn = cls(3)
    raises_without_change(
        bn,
        lambda: bn(np.ones(shape, np.float32)),
        ValueError,
        "Expected more than 1 value per channel when training",
        str(shape),
    )
    untracked = cls(3, track_running_stats=False).eval()  # still uses batch statistics
    raises_without_change(untracked, lambda: untracked(np.ones(shape, np.float32)), ValueError, "more than 1 value")
    y = bn.eval()(np.ones(shape, np.float32))  # running statistics: fine
    assert y.shape == shape


@pytest.mark.parametrize("name, value", [("weight", np.ones(4, np.float32)), ("bias", np.ones(3, np.float64)), ("running_var", np.ones((3, 1), np.float32))])
def test_reassigned_parameter_of_wrong_shape_or_dtype(name, value):
    bn = trained()
    setattr(bn, name, value)
    raises_without_change(bn, lambda: bn(np.zeros((4, 3, 5, 5), np.float32)), (ValueError, TypeError), name)


def test_read_only_running_buffer_rejected_only_when_updated():
    bn = trained()
    bn.running_mean.flags.writeable = False
    raises_without_change(bn, lambda: bn(np.zeros((4, 3, 5, 5), np.float32)), ValueError, "running_mean", "read-only")
    bn.eval()(np.zeros((4, 3, 5, 5), np.float32))


# ----------------------------------------------------------------- backward


def test_backward_before_forward():
    bn = nbn.BatchNorm2d(3)
    with pytest.raises(RuntimeError, match="forward"):
        bn.backward(np.zeros((4, 3, 5, 5), np.float32))
    assert bn.grad_weight is None


@pytest.mark.parametrize(
    "grad, error, fragments",
    [
        (np.zeros((4, 3, 5, 4), np.float32), ValueError, ["(4, 3, 5, 5)", "(4, 3, 5, 4)"]),
        (np.zeros((4, 3, 5, 5), np.float64), TypeError, ["float32", "float64"]),
        ([[0.0]], TypeError, ["numpy.ndarray", "list"]),
    ],
)
def test_bad_grad_output(grad, error, fragments):
    bn = trained()
    raises_without_change(bn, lambda: bn.backward(grad), error, *fragments)


# ---------------------------------------------------------- construction


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"num_features": 0}, ValueError, "num_features >= 1, got 0"),
        ({"num_features": -2}, ValueError, "got -2"),
        ({"num_features": 2.0}, TypeError, "num_features to be an int, got float"),
        ({"num_features": True}, TypeError, "got bool"),
        ({"num_features": 3, "eps": -1e-5}, ValueError, "eps >= 0.0"),
        ({"num_features": 3, "eps": "small"}, TypeError, "eps to be a real number, got str"),
        ({"num_features": 3, "momentum": 1.5}, ValueError, "momentum <= 1.0"),
        ({"num_features": 3, "momentum": float("nan")}, ValueError, "finite"),
        ({"num_features": 3, "affine": 1}, TypeError, "affine to be a bool, got int"),
        ({"num_features": 3, "track_running_stats": None}, TypeError, "track_running_stats"),
        ({"num_features": 3, "bias": "yes"}, TypeError, "bias to be a bool"),
        ({"num_features": 3, "dtype": np.int32}, TypeError, "float32 or float64, got int32"),
        ({"num_features": 3, "dtype": np.float16}, TypeError, "got float16"),
        ({"num_features": 3, "dtype": "not a dtype"}, TypeError, "float32 or float64"),
        ({"num_features": 3, "device": "tpu"}, ValueError, "got 'tpu'"),
        ({"num_features": 3, "device": 0}, TypeError, "device to be a str, got int"),
        ({"num_features": 3, "channel_axis": 2}, ValueError, "channel_axis to be 1 (channels first) or -1"),
        ({"num_features": 3, "channel_axis": "last"}, TypeError, "channel_axis"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, fragment):
    with pytest.raises(error) as info:
        nbn.BatchNorm2d(**kwargs)
    assert fragment in str(info.value)


def test_train_mode_must_be_boolean():
    bn = trained()
    raises_without_change(bn, lambda: bn.train("no"), ValueError, "training mode is expected to be boolean")


def test_unknown_device_on_move():
    bn = trained()
    raises_without_change(bn, lambda: bn.to("tpu"), ValueError, "'tpu'")


# --------------------------------------------------------------- functional


def _buffers(channels=3, dtype=np.float32):
    return np.zeros(channels, dtype), np.ones(channels, dtype)


def _functional_raises(call, error, *fragments, buffers=()):
    copies = [b.copy() for b in buffers]
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    for buffer, copy in zip(buffers, copies):
        np.testing.assert_array_equal(buffer, copy)


def test_functional_errors():
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    rm, rv = _buffers()
    keep = dict(buffers=(rm, rv))
    _functional_raises(lambda: nbn.batch_norm(x, None, None), ValueError, "training=False", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, None, training=True), ValueError, "both", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm[:2], rv, training=True), ValueError, "running_mean of shape (3,), got (2,)", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, weight=np.ones(4, np.float32), training=True), ValueError, "weight of shape (3,)", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, bias=[0.0, 0.0, 0.0], training=True), TypeError, "bias to be a numpy.ndarray", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, training=True, momentum=None), TypeError, "momentum", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, training="yes"), TypeError, "training", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, eps=-1.0), ValueError, "eps", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, channel_axis=0), ValueError, "channel_axis", **keep)
    _functional_raises(lambda: nbn.batch_norm(x[0, 0], rm, rv), ValueError, "2 or more dimensions (N, C, ...), got 1D", **keep)
    _functional_raises(lambda: nbn.batch_norm(x.astype(np.int16), rm, rv), TypeError, "int16", **keep)
    _functional_raises(lambda: nbn.batch_norm(x[:1, :, :1], rm, rv, training=True), ValueError, "Expected more than 1 value per channel", **keep)
    rm_ro = rm.copy()
    rm_ro.flags.writeable = False
    _functional_raises(lambda: nbn.batch_norm(x, rm_ro, rv, training=True), ValueError, "read-only", buffers=(rm_ro, rv))
    _functional_raises(lambda: nbn.batch_stats(x, channel_axis=2), ValueError, "channel_axis")
    _functional_raises(lambda: nbn.batch_stats(list(x)), TypeError, "numpy.ndarray")
