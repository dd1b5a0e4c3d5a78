"""Numerical edge cases: ill-conditioned data, constants, huge values, NaN, empty input."""

import numba
import numpy as np
import pytest

import numba_bn as nbn


@pytest.mark.parametrize("channel_axis, shape", [(1, (16, 2, 50, 50)), (-1, (16, 50, 50, 2)), (1, (40000, 2))])
def test_large_mean_small_std_float32(channel_axis, shape):
    """|mean|/std = 1e5 in float32: E[x^2]-E[x]^2 would lose every digit."""
    rng = np.random.default_rng(0)
    x = (1e5 + rng.standard_normal(shape)).astype(np.float32)
    axes = tuple(i for i in range(x.ndim) if i != channel_axis % x.ndim)
    mean, var, _ = nbn.batch_stats(x, channel_axis=channel_axis)
    exact = x.astype(np.float64).var(axis=axes)
    np.testing.assert_allclose(var, exact, rtol=1e-5)
    y = nbn.batch_norm(x, None, None, training=True, channel_axis=channel_axis)
    exact_y = (x - x.astype(np.float64).mean(axis=axes, keepdims=True)) / np.sqrt(
        x.astype(np.float64).var(axis=axes, keepdims=True) + 1e-5
    )
    np.testing.assert_allclose(y, exact_y, atol=2e-5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_constant_channels_give_zero_variance_and_exact_bias(dtype, channel_axis):
    values = np.array([3.1, -1e4, 0.0], dtype)
    shape = (5, 3, 7, 9) if channel_axis == 1 else (5, 7, 9, 3)
    x = np.broadcast_to(values.reshape((1, 3, 1, 1) if channel_axis == 1 else (3,)), shape)
    mean, var, _ = nbn.batch_stats(x, channel_axis=channel_axis)
    np.testing.assert_array_equal(var, 0.0)
    np.testing.assert_array_equal(mean, values.astype(mean.dtype))
    bn = nbn.BatchNorm2d(3, channel_axis=channel_axis, dtype=np.float64 if dtype == np.float64 else np.float32)
    bn.bias[:] = [0.5, -2.0, 7.25]
    y = bn(x)
    expected = np.broadcast_to(bn.bias.reshape((1, 3, 1, 1) if channel_axis == 1 else (3,)), shape)
    np.testing.assert_array_equal(y, expected.astype(dtype))
    np.testing.assert_array_equal(bn.running_var, bn.dtype.type(0.9))  # (1 - 0.1) * 1 + 0.1 * 0


def test_float32_magnitudes_up_to_1e20():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 3, 20)) * 1e20).astype(np.float32)
    mean, var, _ = nbn.batch_stats(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-5, atol=1e15)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(var, x64.var(axis=(0, 2)).astype(np.float32))  # inf: beyond float32
    y = nbn.BatchNorm1d(3)(x)
    assert np.all(np.isfinite(y))
    exact = (x64 - x64.mean(axis=(0, 2), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2), keepdims=True))
    np.testing.assert_allclose(y, exact, atol=1e-5)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_nan_and_inf_stay_in_their_channel(channel_axis):
    rng = np.random.default_rng(2)
    shape = (6, 4, 10) if channel_axis == 1 else (6, 10, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    index = (2, 1, 3) if channel_axis == 1 else (2, 3, 1)
    x[index] = np.nan
    index = (4, 2, 5) if channel_axis == 1 else (4, 5, 2)
    x[index] = np.inf
    bn = nbn.BatchNorm1d(4, channel_axis=channel_axis)
    y = bn(x)
    dx = bn.backward(np.ones_like(x))
    take = lambda a, c: np.take(a, c, axis=channel_axis % a.ndim)
    for c in (1, 2):
        assert np.all(np.isnan(take(y, c))) and np.all(np.isnan(take(dx, c)))
        assert np.isnan(bn.running_mean[c]) or np.isinf(bn.running_mean[c])
    for c in (0, 3):
        assert np.all(np.isfinite(take(y, c))) and np.all(np.isfinite(take(dx, c)))
        assert np.isfinite(bn.running_var[c])


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0)])
def test_empty_batch(shape):
    bn = nbn.BatchNorm1d(3, momentum=None)
    y = bn(np.zeros(shape, np.float32))
    assert y.shape == shape and y.dtype == np.float32
    assert bn.num_batches_tracked == 1  # PyTorch counts the empty step too
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    dx = bn.backward(np.zeros(shape, np.float32))
    assert dx.shape == shape
    np.testing.assert_array_equal(bn.grad_weight, 0)
    assert bn.eval()(np.zeros(shape, np.float32)).shape == shape
    mean, var, count = nbn.batch_stats(np.zeros(shape, np.float32))
    assert count == 0 and np.all(np.isnan(mean)) and np.all(np.isnan(var))


def test_two_values_per_channel():
    x = np.array([[1.0, -4.0], [3.0, -4.0]])
    bn = nbn.BatchNorm1d(2, dtype=np.float64)
    y = bn(x)
    np.testing.assert_allclose(y[:, 0], [-1.0 / np.sqrt(1 + 1e-5), 1.0 / np.sqrt(1 + 1e-5)])
    np.testing.assert_array_equal(y[:, 1], 0.0)
    np.testing.assert_allclose(bn.running_var, [0.9 + 0.1 * 2.0, 0.9])


def test_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 123, 77)).astype(np.float32) + 10
    rows = rng.standard_normal((5000, 7)).astype(np.float32)
    original = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, original}):
            numba.set_num_threads(threads)
            bn = nbn.BatchNorm2d(5)
            y = bn(x)
            dx = bn.backward(x)
            stats = nbn.batch_stats(rows)
            results.append((y, dx, bn.running_var.copy(), bn.grad_weight, *stats[:2]))
    finally:
        numba.set_num_threads(original)
    for first, other in zip(results[0], results[-1]):
        np.testing.assert_array_equal(first, other)


def test_huge_channel_count_tiny_batch():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 100000)).astype(np.float32)
    y = nbn.BatchNorm1d(100000)(x)
    x64 = x.astype(np.float64)
    half_gap = (x64[0] - x64[1]) / 2  # two values per channel: y = +-half_gap / sqrt(half_gap**2 + eps)
    np.testing.assert_allclose(y[0], half_gap / np.sqrt(half_gap**2 + 1e-5), atol=1e-6)
    np.testing.assert_allclose(y[1], -y[0], atol=1e-6)


def test_element_count_beyond_int32_index_arithmetic():
    """A broadcast view with > 2**31 elements exercises 64-bit index arithmetic cheaply."""
    values = np.array([1.0, 2.0], np.float32)
    x = np.broadcast_to(values.reshape(1, 2, 1), (2**16, 2, 2**15 + 3))
    assert x.size > 2**31
    mean, var, count = nbn.batch_stats(x)
    assert count == 2**16 * (2**15 + 3)
    np.testing.assert_array_equal(mean, values)
    np.testing.assert_array_equal(var, 0.0)
