"""GroupNorm and LayerNorm forwards that repeat the last call skip the general path's steps, with the same bits.

Each test drives two modules with the same state through the same calls: one
that may take the repeated-call lane (``numba_bn/cpu/row_small_calls.py``)
and one that may not (``_repeats_small_calls = False``), and requires
identical outputs and gradients, and that the lane was taken (or, where a
call differs from the last one, not).
"""

import pickle

import numpy as np
import pytest

import numba_bn as nbn
from numba_bn.cpu import row_small_calls


@pytest.fixture
def lane_calls(monkeypatch):
    """How many forwards ran in the lane."""
    calls = {"forward": 0}
    forward = row_small_calls.RepeatedRows.forward

    def counted_forward(self, *args):
        calls["forward"] += 1
        return forward(self, *args)

    monkeypatch.setattr(row_small_calls.RepeatedRows, "forward", counted_forward)
    return calls


def _twins(make, seed=0):
    lane, general = make(), make()
    general._repeats_small_calls = False
    rng = np.random.default_rng(seed)
    for name in ("weight", "bias"):
        value = getattr(lane, name)
        if value is not None:
            value[...] = rng.normal(1.0, 0.5, value.shape)
            getattr(general, name)[...] = value
    return lane, general


def _assert_same_gradients(lane, general):
    for name in ("grad_weight", "grad_bias"):
        a, b = getattr(lane, name), getattr(general, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)


MODULES = {
    "layer-4096 (parallel kernel)": (lambda **o: nbn.LayerNorm(4096, **o), (8, 4096)),
    "layer-2d-shape": (lambda **o: nbn.LayerNorm((4, 8), **o), (3, 5, 4, 8)),
    "layer-no-bias": (lambda **o: nbn.LayerNorm(16, bias=False, **o), (6, 16)),
    "layer-no-affine": (lambda **o: nbn.LayerNorm(16, elementwise_affine=False, **o), (6, 16)),
    "group": (lambda **o: nbn.GroupNorm(2, 4, **o), (3, 4, 5, 6)),
    "group-channels-last": (lambda **o: nbn.GroupNorm(3, 6, channel_axis=-1, **o), (3, 5, 6)),
    "group-no-affine": (lambda **o: nbn.GroupNorm(2, 4, affine=False, **o), (3, 4, 7)),
}


@pytest.mark.parametrize("input_dtype, dtype", [(np.float16, np.float32), (np.float32, np.float32),
                                                (np.float64, np.float64)], ids=["half", "float", "double"])
@pytest.mark.parametrize("name", MODULES)
def test_repeated_calls_match_the_general_path_bitwise(name, input_dtype, dtype, lane_calls):
    make, shape = MODULES[name]
    lane, general = _twins(lambda: make(dtype=dtype))
    rng = np.random.default_rng(1)
    steps = 3
    for step in range(steps):
        x = rng.normal(2.0, 3.0, shape).astype(input_dtype)
        dy = rng.normal(size=shape).astype(input_dtype)
        y = lane(x)
        np.testing.assert_array_equal(y, general(x))
        assert y.dtype == input_dtype
        np.testing.assert_array_equal(lane.backward(dy), general.backward(dy))
        _assert_same_gradients(lane, general)
        for module in (lane, general):  # an optimizer's step: in place, the same objects
            if module.weight is not None:
                module.weight -= np.asarray(0.1, dtype) * module.grad_weight
    assert lane_calls["forward"] == steps - 1


@pytest.mark.parametrize("name", ["layer-4096 (parallel kernel)", "layer-2d-shape", "group"])
def test_a_parameter_updated_between_forward_and_backward_does_not_change_the_backward(name, lane_calls):
    make, shape = MODULES[name]
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    dy = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    lane, general = _twins(make)
    untouched, _ = _twins(make)
    expected = (untouched(x), untouched.backward(dy))
    for module in (lane, general):
        for _ in range(2):  # the second forward runs in the lane
            module(x)
        module.weight *= 3.0  # in place, before the backward: a view of it must not be what backward reads
        np.testing.assert_array_equal(module.backward(dy), expected[1])
    assert lane_calls["forward"] == 1


def test_the_lane_needs_a_repeated_call(lane_calls):
    ln = nbn.LayerNorm(8)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    ln(x)
    ln(x.copy())
    assert lane_calls["forward"] == 1
    ln(np.asfortranarray(x))  # another layout: the general path, and no lane for it
    ln(np.asfortranarray(x))
    ln(x[:3])  # another shape
    ln(x.astype(x.dtype.newbyteorder()))  # another byte order: copied on the general path
    assert lane_calls["forward"] == 1
    ln.weight = ln.weight.copy()  # a new parameter object: checked on the general path first
    ln(x)
    ln(x)
    assert lane_calls["forward"] == 2


@pytest.mark.parametrize("make", [lambda: nbn.LayerNorm(6), lambda: nbn.GroupNorm(3, 6)], ids=["layer", "group"])
def test_changes_to_the_module_between_calls_are_seen(make, lane_calls):
    lane, general = _twins(make)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    for module in (lane, general):
        module(x)
        module.weight[...] = 3.0  # in place: the same object, read as it is now
    np.testing.assert_array_equal(lane(x), general(x))
    assert lane_calls["forward"] == 1
    lane.eps = general.eps = 0.5  # another option: the general path first
    np.testing.assert_array_equal(lane(x), general(x))
    np.testing.assert_array_equal(lane(x), general(x))
    assert lane_calls["forward"] == 2
    if isinstance(lane, nbn.GroupNorm):
        lane.num_groups = general.num_groups = 2  # the grouping the rows depend on
        np.testing.assert_array_equal(lane(x), general(x))
        np.testing.assert_array_equal(lane(x), general(x))
        assert lane_calls["forward"] == 3


def test_bad_state_between_calls_raises_and_changes_nothing(lane_calls):
    ln = nbn.LayerNorm(6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    ln(x)
    ln.backward(np.ones_like(x))
    grad_weight = ln.grad_weight.copy()
    ln.weight = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="weight"):
        ln(x)
    ln.weight = np.ones(6, np.float32)
    ln(x)
    ln.weight.shape = (2, 3)  # the same object, reshaped in place
    with pytest.raises(ValueError, match="weight"):
        ln(x)
    ln.weight.shape = (6,)
    with pytest.raises(TypeError):
        ln(x.astype(np.float64))
    with pytest.raises(ValueError, match="normalized_shape"):
        ln(np.ones((10, 7), np.float32))
    ln.backward(np.ones_like(x))  # the last successful forward is still the one kept
    np.testing.assert_array_equal(ln.grad_weight, grad_weight)
    assert lane_calls["forward"] == 0


def test_backward_after_a_lane_forward_checks_its_input_and_grad_output(lane_calls):
    gn = nbn.GroupNorm(2, 6)
    x = np.random.default_rng(0).normal(size=(10, 6, 3)).astype(np.float32)
    gn(x)
    gn(x)
    assert lane_calls["forward"] == 1
    with pytest.raises(ValueError, match="shape"):
        gn.backward(np.ones((10, 6, 2), np.float32))
    with pytest.raises(TypeError):
        gn.backward(np.ones(x.shape, np.float64))
    x[0, 0, 0] += 1.0  # modified in place since the forward
    with pytest.raises(ValueError, match="modified"):
        gn.backward(np.ones_like(x))


def test_no_grad_and_the_lane(lane_calls):
    ln = nbn.LayerNorm(6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    ln(x)
    with nbn.no_grad():
        y = ln(x)
    assert lane_calls["forward"] == 1
    with pytest.raises(RuntimeError, match="no_grad"):
        ln.backward(np.ones_like(x))
    np.testing.assert_array_equal(ln(x), y)
    ln.backward(np.ones_like(x))


def test_the_lane_is_not_kept_by_pickles_or_moves():
    ln = nbn.LayerNorm(6)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    ln(x)
    assert ln._repeated is not None
    copy = pickle.loads(pickle.dumps(ln))
    assert copy._repeated is None
    np.testing.assert_array_equal(copy(x), ln(x))
    ln.load_state_dict({"weight": np.full(6, 2.0, np.float32), "bias": np.zeros(6, np.float32)})
    np.testing.assert_array_equal(ln(x), 2.0 * copy(x))
