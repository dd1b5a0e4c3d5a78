"""``out=``: results written into the caller's arrays, any strides, in place too; on both devices."""

import re

import numpy as np
import pytest

import numba_bn as nbn
from devices import DEVICES, host, to_device


def _pair(device, dtype=np.float32, channel_axis=1):
    rng = np.random.default_rng(0)
    bn = nbn.BatchNorm2d(3, dtype=dtype, channel_axis=channel_axis)
    bn.weight[...] = rng.normal(1, 0.3, 3)
    bn.bias[...] = rng.normal(0, 0.3, 3)
    other = nbn.BatchNorm2d(3, dtype=dtype, channel_axis=channel_axis)
    other.load_state_dict(bn.state_dict())
    return bn.to(device), other.to(device)


def _x(dtype=np.float32, shape=(4, 3, 5, 6)):
    return np.random.default_rng(1).normal(2.0, 3.0, shape).astype(dtype)


def _outputs(shape, dtype):
    """Writeable targets of ``shape``: contiguous, Fortran order, a strided slice, negative strides."""
    base = np.zeros(tuple(2 * n for n in shape), dtype)
    return {
        "contiguous": np.zeros(shape, dtype),
        "fortran": np.zeros(shape, dtype, order="F"),
        "every other": base[tuple(slice(None, None, 2) for _ in shape)],
        "reversed": np.zeros(shape, dtype)[:, :, ::-1, ::-1],
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["contiguous", "fortran", "every other", "reversed"])
@pytest.mark.parametrize("training", [True, False])
def test_module_writes_into_out(device, kind, training):
    bn, reference = _pair(device)
    bn.train(training)
    reference.train(training)
    x = _x()
    target = _outputs(x.shape, np.float32)[kind]
    out = to_device(target, device)
    result = bn(to_device(x, device), out=out)
    assert result is out
    np.testing.assert_array_equal(host(out), host(reference(to_device(x, device))))
    np.testing.assert_array_equal(host(bn.running_var), host(reference.running_var))
    dy = to_device(x, device)
    np.testing.assert_array_equal(host(bn.backward(dy)), host(reference.backward(dy)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_functional_writes_into_out_and_in_place(device, training):
    x = _x(np.float64)
    mean, var = np.zeros(3), np.ones(3)
    expected = host(nbn.batch_norm(to_device(x, device), to_device(mean.copy(), device),
                                   to_device(var.copy(), device), training=training))
    out = to_device(np.empty_like(x), device)
    got = nbn.batch_norm(to_device(x, device), to_device(mean.copy(), device), to_device(var.copy(), device),
                         training=training, out=out)
    assert got is out
    np.testing.assert_array_equal(host(out), expected)
    in_place = to_device(x.copy(), device)
    nbn.batch_norm(in_place, to_device(mean.copy(), device), to_device(var.copy(), device), training=training,
                   out=in_place)
    np.testing.assert_array_equal(host(in_place), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_forward_then_backward_raises(device):
    bn, reference = _pair(device)
    x = _x()
    expected = host(reference(to_device(x, device)))
    data = to_device(x.copy(), device)
    assert bn(data, out=data) is data
    np.testing.assert_array_equal(host(data), expected)
    with pytest.raises(ValueError, match=re.escape("wrote its output over its input (out=x)")):
        bn.backward(to_device(x, device))
    bn(to_device(x, device))  # a forward that keeps its input makes backward work again
    bn.backward(to_device(x, device))


@pytest.mark.parametrize("device", DEVICES)
def test_out_overlapping_the_input_in_another_layout(device):
    """A transposed view of x as out: the result is as if computed into a new array first."""
    x = _x(np.float64, (3, 3))
    bn = nbn.BatchNorm1d(3, dtype=np.float64).eval().to(device)
    expected_values = host(bn(to_device(x.copy(), device)))
    data = to_device(x.copy(), device)
    # out[i, j] receives y[i, j], stored at data[j, i]: the input is overwritten out of order.
    view = data.T
    bn(data, out=view)
    np.testing.assert_array_equal(host(view), expected_values)
    np.testing.assert_array_equal(host(data), expected_values.T)


@pytest.mark.parametrize("dtype", [np.float16, ">f4", ">f8"])
def test_half_and_byte_swapped_out(dtype):
    native = np.dtype(dtype).newbyteorder("=")
    x = _x(native)
    bn = nbn.BatchNorm2d(3, dtype=np.float32 if native != np.float64 else np.float64)
    expected = bn.eval()(x)
    out = np.zeros(x.shape, dtype)
    assert bn(x, out=out) is out
    np.testing.assert_array_equal(out.astype(native), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "make_out, error, message",
    [
        (lambda x: np.zeros((4, 3, 5, 5), np.float32), ValueError, "expected out of shape (4, 3, 5, 6)"),
        (lambda x: np.zeros(x.shape, np.float64), TypeError, "expected out of dtype float32"),
        (lambda x: np.lib.stride_tricks.as_strided(np.zeros(6, np.float32), x.shape, (0, 0, 0, 4)), ValueError,
         "zero stride"),
    ],
)
def test_bad_out_changes_nothing(device, make_out, error, message):
    bn, _ = _pair(device)
    x = _x()
    before = bn.state_dict()
    with pytest.raises(error, match=re.escape(message)):
        bn(to_device(x, device), out=to_device(make_out(x), device) if device == "cuda" else make_out(x))
    after = bn.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert bn.num_batches_tracked == 0


def test_read_only_and_wrong_device_out():
    x = _x()
    out = np.zeros_like(x)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="expected out to be writeable"):
        nbn.BatchNorm2d(3)(x, out=out)
    with pytest.raises(TypeError, match="expected out to be a numpy.ndarray"):
        nbn.batch_norm(x, None, None, training=True, out=x.tolist())
