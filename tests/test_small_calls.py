"""Repeated small calls on the CPU run in one compiled step: the same bits and state as the general path.

Each test drives two modules with the same state through the same calls:
one that may take the repeated-call lane and one that may not
(``_repeats_small_calls = False``), and requires identical outputs, buffers,
counters and gradients, and that the lane was taken (or, where a call
differs from the last one, not).
"""

import pickle

import numpy as np
import pytest

import numba_bn as nbn
from numba_bn.cpu import small_calls


@pytest.fixture
def lane_calls(monkeypatch):
    """How many forwards and backwards ran in the lane."""
    calls = {"forward": 0, "backward": 0}
    forward, backward = small_calls.RepeatedCall.forward, small_calls.RepeatedCall.backward

    def counted_forward(self, *args, **kwargs):
        calls["forward"] += 1
        return forward(self, *args, **kwargs)

    def counted_backward(self, *args):
        calls["backward"] += 1
        return backward(self, *args)

    monkeypatch.setattr(small_calls.RepeatedCall, "forward", counted_forward)
    monkeypatch.setattr(small_calls.RepeatedCall, "backward", counted_backward)
    return calls


def _twins(cls, channels, seed=0, **options):
    lane, general = cls(channels, **options), cls(channels, **options)
    general._repeats_small_calls = False
    rng = np.random.default_rng(seed)
    state = {key: value.copy() for key, value in lane.state_dict().items()}
    for key in ("weight", "bias"):
        if key in state:
            state[key] = rng.normal(1.0, 0.5, channels).astype(state[key].dtype)
    lane.load_state_dict(state)
    general.load_state_dict(state)
    return lane, general


def _assert_same_state(lane, general):
    for key, value in general.state_dict().items():
        np.testing.assert_array_equal(lane.state_dict()[key], value, err_msg=key)
    for name in ("grad_weight", "grad_bias"):
        a, b = getattr(lane, name), getattr(general, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b, err_msg=name)


CASES = [
    (nbn.BatchNorm1d, (64, 128), 1),
    (nbn.BatchNorm1d, (16, 5, 7), 1),
    (nbn.BatchNorm2d, (4, 3, 9, 11), 1),
    (nbn.BatchNorm2d, (4, 9, 11, 3), -1),
    (nbn.BatchNorm3d, (2, 4, 3, 5, 6), 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, shape, channel_axis", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize(
    "options",
    [{}, {"momentum": None}, {"affine": False}, {"bias": False}, {"track_running_stats": False}],
    ids=["default", "cumulative", "no-affine", "no-bias", "no-tracking"],
)
def test_repeated_calls_match_the_general_path_bitwise(cls, shape, channel_axis, dtype, options, lane_calls):
    channels = shape[channel_axis]
    lane, general = _twins(cls, channels, dtype=dtype, channel_axis=channel_axis, **options)
    rng = np.random.default_rng(1)
    for step in range(3):
        x = rng.normal(0.5, 2.0, shape).astype(dtype)
        dy = rng.normal(0.0, 1.0, shape).astype(dtype)
        np.testing.assert_array_equal(lane(x), general(x))
        np.testing.assert_array_equal(lane.backward(dy), general.backward(dy))
        _assert_same_state(lane, general)
    lane.eval()
    general.eval()
    for step in range(2):
        x = rng.normal(0.5, 2.0, shape).astype(dtype)
        np.testing.assert_array_equal(lane(x), general(x))
        np.testing.assert_array_equal(lane.backward(x), general.backward(x))
        _assert_same_state(lane, general)
    # Training: the first call makes the lane, the next two forwards and all three backwards take it;
    # eval: the first call after the mode change makes a new one and the second takes it, and the
    # backwards take it only after batch statistics (without tracking).
    tracking = options.get("track_running_stats", True)
    assert lane_calls == {"forward": 3, "backward": 3 if tracking else 5}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, shape, channel_axis", [CASES[0], CASES[2]], ids=lambda v: getattr(v, "__name__", str(v)))
def test_out_in_the_lane_matches_the_general_path(cls, shape, channel_axis, dtype, lane_calls):
    lane, general = _twins(cls, shape[channel_axis], dtype=dtype, channel_axis=channel_axis)
    rng = np.random.default_rng(4)
    out_lane, out_general = np.empty(shape, dtype), np.empty(shape, dtype)
    for step in range(3):
        x = rng.normal(0.5, 2.0, shape).astype(dtype)
        dy = rng.normal(0.0, 1.0, shape).astype(dtype)
        assert lane(x, out=out_lane) is out_lane
        general(x, out=out_general)
        np.testing.assert_array_equal(out_lane, out_general)
        np.testing.assert_array_equal(lane.backward(dy), general.backward(dy))
        _assert_same_state(lane, general)
    lane.eval()
    general.eval()
    with nbn.no_grad():
        for step in range(2):
            x = rng.normal(0.5, 2.0, shape).astype(dtype)
            assert lane(x, out=out_lane) is out_lane
            np.testing.assert_array_equal(out_lane, general(x, out=out_general))
    assert lane_calls == {"forward": 3, "backward": 3}


def test_out_in_place_in_the_lane(lane_calls):
    lane, general = _twins(nbn.BatchNorm2d, 3)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    lane(x)
    general(x)
    a, b = x.copy(), x.copy()
    assert lane(a, out=a) is a  # in place: the statistics are read before the values are overwritten
    general(b, out=b)
    np.testing.assert_array_equal(a, b)
    _assert_same_state(lane, general)
    assert lane_calls["forward"] == 1
    for module in (lane, general):
        with pytest.raises(ValueError, match="over its input"):
            module.backward(np.ones_like(x))


def test_out_that_the_lane_does_not_take(lane_calls):
    lane, general = _twins(nbn.BatchNorm1d, 8)
    values = np.random.default_rng(6).normal(size=(16, 8)).astype(np.float32)
    memory = np.zeros(values.size + 1, np.float32)
    x = memory[: values.size].reshape(values.shape)
    x[...] = values
    lane(x)
    general(values)
    for out in (
        memory[1:].reshape(values.shape),  # overlapping the input
        np.empty(values.shape[::-1], np.float32).T,  # not C-contiguous
    ):
        x[...] = values
        assert lane(x, out=out) is out
        np.testing.assert_array_equal(out, general(values))
        _assert_same_state(lane, general)
    x[...] = values
    before = lane.state_dict()
    with pytest.raises(TypeError, match="float64"):
        lane(x, out=np.empty(values.shape, np.float64))
    for key, value in lane.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert lane_calls["forward"] == 0


def test_the_lane_needs_a_repeated_call(lane_calls):
    bn = nbn.BatchNorm2d(3)
    x = np.random.default_rng(0).normal(size=(4, 3, 5, 5)).astype(np.float32)
    bn(x)
    bn(x.copy())
    assert lane_calls["forward"] == 1
    bn(np.asfortranarray(x))  # another layout: the general path, and no lane for it
    bn(np.asfortranarray(x))
    bn(x[:3])  # another shape
    assert lane_calls["forward"] == 1
    big = np.zeros((64, 3, 32, 32), np.float32)  # above config.SERIAL_BELOW: the parallel kernels
    bn(big)
    bn(big)
    assert lane_calls["forward"] == 1
    bn.weight = bn.weight.copy()  # a new parameter object: checked on the general path first
    bn(x)
    bn(x)
    assert lane_calls["forward"] == 2


def test_changes_to_the_module_between_calls_are_seen(lane_calls):
    lane, general = _twins(nbn.BatchNorm1d, 6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    for module in (lane, general):
        module(x)
        module.eps = 0.5
        module.momentum = 0.7
        module.weight[...] = 3.0  # in place: the same object
    np.testing.assert_array_equal(lane(x), general(x))
    _assert_same_state(lane, general)
    assert lane_calls["forward"] == 1


def test_bad_state_between_calls_raises_and_changes_nothing(lane_calls):
    bn = nbn.BatchNorm1d(6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    bn(x)
    bn.weight = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="weight"):
        bn(x)
    bn.weight = np.ones(6, np.float32)
    bn(x)
    bn.running_var.flags.writeable = False
    before = bn.state_dict()
    with pytest.raises(ValueError, match="running_var"):
        bn(x)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(TypeError):
        bn(x.astype(np.float64))
    assert lane_calls["forward"] == 0


def test_backward_after_a_lane_forward_checks_its_input_and_grad_output(lane_calls):
    bn = nbn.BatchNorm1d(6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    bn(x)
    bn(x)
    assert lane_calls["forward"] == 1
    with pytest.raises(ValueError, match="shape"):
        bn.backward(np.ones((10, 5), np.float32))
    with pytest.raises(TypeError):
        bn.backward(np.ones((10, 6), np.float64))
    x[0, 0] += 1.0  # modified in place since the forward
    with pytest.raises(ValueError, match="modified"):
        bn.backward(np.ones((10, 6), np.float32))
    assert lane_calls["backward"] == 1  # the lane's backward checked the input itself


def test_no_grad_and_the_lane():
    bn = nbn.BatchNorm1d(6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    bn(x)
    with nbn.no_grad():
        bn(x)
        bn(x)
    with pytest.raises(RuntimeError, match="no_grad"):
        bn.backward(np.ones_like(x))
    bn(x)
    bn.backward(np.ones_like(x))


def test_the_lane_is_not_kept_by_pickles_or_moves():
    bn = nbn.BatchNorm1d(6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    bn(x)
    assert bn._repeated is not None
    copy = pickle.loads(pickle.dumps(bn))
    assert copy._repeated is None
    np.testing.assert_array_equal(copy(x), bn(x))
