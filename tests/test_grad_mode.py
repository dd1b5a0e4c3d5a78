"""``no_grad``: forwards that keep nothing for backward, on every device, and the switch itself."""

import sys
import threading

import numpy as np
import pytest

import numba_bn as nbn
from devices import DEVICES, host, to_device
from state_snapshot import ARRAYS, SCALARS

pytestmark = pytest.mark.usefixtures("small_cuda_blocks")


def _batch(seed=0, shape=(6, 3, 4, 4)):
    return np.random.default_rng(seed).normal(2.0, 3.0, shape).astype(np.float32)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_forward_matches_and_updates_buffers_but_keeps_nothing(device, training):
    kept, unkept = nbn.BatchNorm2d(3, device=device), nbn.BatchNorm2d(3, device=device)
    for bn in (kept, unkept):
        bn(to_device(_batch(1), device))  # some running statistics to evaluate with
        bn.train(training)
    x = to_device(_batch(2), device)
    y = kept(x)
    with nbn.no_grad():
        y_unkept = unkept(x)
    np.testing.assert_array_equal(host(y_unkept), host(y))
    for name in SCALARS:
        assert getattr(unkept, name) == getattr(kept, name), name
    for name in ARRAYS:
        expected, actual = getattr(kept, name), getattr(unkept, name)
        assert (actual is None) == (expected is None), name
        if expected is not None:
            np.testing.assert_array_equal(host(actual), host(expected), err_msg=name)
    with pytest.raises(RuntimeError, match=r"numba_bn\.no_grad\(\)"):
        unkept.backward(to_device(np.ones_like(_batch()), device))
    assert unkept.grad_weight is None
    unkept(x)  # outside no_grad again: backward works
    np.testing.assert_array_equal(host(unkept.backward(y)), host(kept.backward(y)))


def test_no_grad_forward_holds_no_reference_to_its_input():
    bn = nbn.BatchNorm2d(3)
    x = _batch()
    references = sys.getrefcount(x)
    bn(x)
    assert sys.getrefcount(x) > references  # kept for backward
    bn(_batch(1))
    assert sys.getrefcount(x) == references
    with nbn.no_grad():
        bn(x)
    assert sys.getrefcount(x) == references


def test_no_grad_nests_restores_and_decorates():
    assert nbn.is_grad_enabled()
    with nbn.no_grad():
        assert not nbn.is_grad_enabled()
        with nbn.no_grad():
            assert not nbn.is_grad_enabled()
        assert not nbn.is_grad_enabled()
    assert nbn.is_grad_enabled()

    @nbn.no_grad()
    def infer(depth):
        assert not nbn.is_grad_enabled()
        return infer(depth - 1) if depth else nbn.is_grad_enabled()

    assert infer(3) is False
    assert nbn.is_grad_enabled()
    with pytest.raises(ZeroDivisionError), nbn.no_grad():
        1 / 0
    assert nbn.is_grad_enabled()  # restored by an exception too


def test_no_grad_is_per_thread():
    inside, seen = threading.Event(), []
    release = threading.Event()

    def other_thread():
        inside.wait()
        seen.append(nbn.is_grad_enabled())
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with nbn.no_grad():
        inside.set()
        release.wait(10)
    thread.join(10)
    assert seen == [True]
