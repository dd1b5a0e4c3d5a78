"""Modules pickle and deep-copy: parameters, buffers, gradients and flags, never the last input.

A CUDA module's arrays travel as host copies and come back on the GPU when
unpickled (a clear ValueError where there is no CUDA).
"""

import copy
import pickle

import numpy as np
import pytest

import numba_bn as nbn
from cuda_support import host, needs_cuda
from numba_bn import _backend
from state_snapshot import ARRAYS, SCALARS

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

pytestmark = pytest.mark.usefixtures("small_cuda_blocks")


def _trained(device, cls=nbn.BatchNorm2d, shape=(6, 3, 4, 4), **flags):
    rng = np.random.default_rng(5)
    bn = cls(3, device=device, **flags)
    x = rng.standard_normal(shape).astype(bn.dtype)
    move = (lambda a: a) if device == "cpu" else __import__("numba").cuda.to_device
    bn(move(x))
    bn.backward(move(rng.standard_normal(shape).astype(bn.dtype)))
    return bn, x, move


def _assert_same_state(copied, original):
    assert type(copied) is type(original)
    for name in SCALARS + ("dtype", "affine", "track_running_stats", "num_features"):
        assert getattr(copied, name) == getattr(original, name), name
    for name in ARRAYS:
        a, b = getattr(copied, name), getattr(original, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a is not b, name
            assert type(a) is type(b), name
            np.testing.assert_array_equal(host(a), host(b), err_msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make_copy", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy], ids=["pickle", "deepcopy"])
@pytest.mark.parametrize(
    "flags", [dict(), dict(affine=False, momentum=None), dict(bias=False, dtype=np.float64, channel_axis=-1)],
    ids=["default", "no-affine", "f64-clast"],
)
def test_copies_keep_the_state_and_behave_alike(device, make_copy, flags):
    shape = (6, 4, 4, 3) if flags.get("channel_axis") == -1 else (6, 3, 4, 4)
    bn, x, move = _trained(device, shape=shape, **flags)
    bn.eval()
    copied = make_copy(bn)
    _assert_same_state(copied, bn)
    assert copied._saved is None  # the recorded forward (and its input) is not copied
    with pytest.raises(RuntimeError, match="forward"):
        copied.backward(move(np.ones_like(x)))
    np.testing.assert_array_equal(host(copied(move(x))), host(bn(move(x))))
    copied.train()(move(x))
    assert copied.num_batches_tracked == bn.num_batches_tracked + 1  # independent of the original


def test_a_pickle_does_not_hold_the_input():
    bn, x, _ = _trained("cpu", cls=nbn.BatchNorm1d, shape=(4096, 3))
    assert len(pickle.dumps(bn)) < x.nbytes // 4


@needs_cuda
def test_a_cuda_pickle_holds_host_arrays_and_needs_cuda_to_load(monkeypatch):
    bn, _, _ = _trained("cuda")
    payload = pickle.dumps(bn)
    state = bn.__getstate__()
    assert all(state[name] is None or isinstance(state[name], np.ndarray) for name in ARRAYS)
    monkeypatch.setattr(_backend, "cuda_available", lambda: False)
    with pytest.raises(ValueError, match="usable CUDA device"):
        pickle.loads(payload)
