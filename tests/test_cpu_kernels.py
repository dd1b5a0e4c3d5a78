"""The CPU kernels' internal paths: serial twins, thread counts, tiles of packed rows.

Public-API tests use small inputs, which run on the serial kernels; these
tests also drive the thread-pool kernels, the packed-rows tiles (full tiles
and tails, for channel counts that do and do not divide the tile) and the
strided fallbacks, and require every variant to give the same bits.
"""

import numba
import numpy as np
import pytest

import numba_bn as nbn
from numba_bn import config
from numba_bn.cpu import backend as cpu_backend, channel_math

from reference import ref_backward_train, ref_batch_stats

# (shape, channel_axis): packed rows with C that divides the tile or not, and
# channels-first runs whose length does and does not divide the work unit.
CASES = [
    ((300, 3), 1),
    ((1500, 3), 1),
    ((97, 5), 1),
    ((40, 64), 1),
    ((33, 100), 1),
    ((6, 7, 11, 3), -1),
    ((5, 3, 17, 19), 1),
    ((3, 2, 4, 5, 31), 1),
]
LAYOUTS = ["contiguous", "strided"]


def make_input(shape, layout, dtype, seed=0):
    values = (np.random.default_rng(seed).standard_normal(shape) * 3 + 50).astype(dtype)
    if layout == "strided":  # every other element along the last axis: the general-stride loops
        padded = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
        padded[..., ::2] = values
        return padded[..., ::2]
    return values


def run_all_operations(x, channel_axis):
    """Every backend operation on ``x``, with ``dy`` derived from ``x``."""
    axis = channel_axis % x.ndim
    channels = x.shape[axis]
    compute = np.float64 if x.dtype == np.float64 else np.float32
    dy = np.flip(x, axis=0)  # a second operand with other values and the same layout
    rng = np.random.default_rng(1)
    coefficients = rng.standard_normal((4, channels)).astype(compute)
    count, mean, m2 = cpu_backend.channel_stats(x, axis)
    # The fused passes: a residual add and a ReLU whose mask (one bit per value, written by parts
    # that must start on whole bytes) gates the backward's passes.
    mask = np.empty((x.size + 7) // 8, np.uint8)
    fused = cpu_backend.normalize(x, axis, coefficients, residual=dy, relu=True, mask=mask)
    gated_input, passed = cpu_backend.grad_input(x, dy, axis, coefficients, mask, grad_residual=True)
    return {
        "count": np.array(count),
        "mean": mean,
        "m2": m2,
        "normalize": cpu_backend.normalize(x, axis, coefficients),
        "grad_sums": np.stack(cpu_backend.grad_sums(x, dy, axis, mean)),
        "grad_input": cpu_backend.grad_input(x, dy, axis, coefficients)[0],
        "fused": fused,
        "mask": np.unpackbits(mask, bitorder="little")[: x.size],
        "gated_sums": np.stack(cpu_backend.grad_sums(x, dy, axis, mean, mask)),
        "gated_input": gated_input,
        "passed": passed,
    }


def assert_same_bits(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, channel_axis", CASES, ids=str)
def test_serial_parallel_and_thread_counts_agree_bitwise(shape, channel_axis, layout, monkeypatch):
    x = make_input(shape, layout, np.float32)
    monkeypatch.setattr(config, "ROW_BLOCK_VALUES", 1)
    monkeypatch.setattr(config, "ROW_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(config, "ROW_BLOCKS", 3)  # blocks long enough for whole tiles
    monkeypatch.setattr(config, "RUN_CHUNK", 37)
    monkeypatch.setattr(config, "SERIAL_BELOW", 10**12)
    serial = run_all_operations(x, channel_axis)
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = run_all_operations(x, channel_axis)
    finally:
        numba.set_num_threads(threads)
    all_threads = run_all_operations(x, channel_axis)
    assert_same_bits(serial, one_thread)
    assert_same_bits(serial, all_threads)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, channel_axis", CASES, ids=str)
def test_kernels_match_reference(shape, channel_axis, layout, dtype, monkeypatch):
    monkeypatch.setattr(config, "ROW_BLOCK_VALUES", 1)
    monkeypatch.setattr(config, "ROW_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(config, "ROW_BLOCKS", 3)  # blocks long enough for whole tiles
    monkeypatch.setattr(config, "RUN_CHUNK", 37)
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)
    x = make_input(shape, layout, dtype)
    axis = channel_axis % x.ndim
    out = run_all_operations(x, channel_axis)
    mean, var, count = ref_batch_stats(x, channel_axis)
    assert out["count"] == count
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(out["m2"] / count, var, rtol=1e-9)

    broadcast = [1] * x.ndim
    broadcast[axis] = x.shape[axis]
    compute = np.float64 if dtype == np.float64 else np.float32
    rng = np.random.default_rng(1)
    shift, scale, offset, extra = (
        rng.standard_normal(x.shape[axis]).astype(compute).reshape(broadcast) for _ in range(4)
    )
    x64 = x.astype(np.float64)
    dy64 = np.flip(x, axis=0).astype(np.float64)
    tolerance = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    expected_y = (x64 - shift) * scale + offset
    np.testing.assert_allclose(out["normalize"], expected_y, rtol=tolerance, atol=tolerance * np.abs(expected_y).max())
    expected_dx = (x64 - shift) * scale + offset + extra * dy64  # rows: shift, k_x, k_const, k_dy
    np.testing.assert_allclose(out["grad_input"], expected_dx, rtol=tolerance, atol=tolerance * np.abs(expected_dx).max())
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    expected_sums = np.stack([dy64.sum(axis=reduce), (dy64 * (x64 - mean.reshape(broadcast))).sum(axis=reduce)])
    np.testing.assert_allclose(out["grad_sums"], expected_sums, rtol=1e-9, atol=1e-9 * np.abs(dy64).sum())


def test_strides_that_are_not_whole_elements():
    """A field of a packed record array steps 5 bytes per float32: read through a copy."""
    records = np.zeros((12, 3), dtype=[("value", "<f4"), ("flag", "u1")])
    values = np.random.default_rng(2).standard_normal((12, 3)).astype(np.float32)
    records["value"] = values
    x = records["value"]
    assert x.strides[1] % x.itemsize
    count, mean, m2 = cpu_backend.channel_stats(x, 1)
    expected_mean, expected_var, expected_count = ref_batch_stats(values, 1)
    assert count == expected_count
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(m2 / count, expected_var, rtol=1e-9)
    ones = np.ones(3, np.float32)
    identity = np.stack([0 * ones, ones, 0 * ones, 0 * ones])
    np.testing.assert_array_equal(cpu_backend.normalize(x, 1, identity), values)


def _two_pass_backward(x, dy, axis, mean, invstd, weight, count):
    """The training backward as two whole-array passes and the per-channel step between them."""
    channels = x.shape[axis]
    sum_dy, sum_dy_xmu = cpu_backend.grad_sums(x, dy, axis, mean)
    sums = np.empty((2, channels))
    coefficients = np.empty((4, channels), np.float64 if x.dtype == np.float64 else np.float32)
    channel_math.backward_coefficients(sum_dy, sum_dy_xmu, mean, invstd, weight, float(count), sums, coefficients)
    return cpu_backend.grad_input(x, dy, axis, coefficients)[0], sums, coefficients


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, channel_axis", CASES[-3:], ids=str)  # channels-last, then runs
def test_backward_by_channel(shape, channel_axis, layout, dtype, monkeypatch):
    """A channel at a time: the same bits for any thread count, the two passes' results to rounding,
    and no such path for channels-last data."""
    monkeypatch.setattr(config, "RUN_CHUNK", 37)  # several units per channel, summed in order
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)
    monkeypatch.setattr(config, "BACKWARD_BY_CHANNEL", 1)
    monkeypatch.setattr(config, "BACKWARD_BY_CHANNEL_VALUES", 1)
    x = make_input(shape, layout, dtype)
    axis = channel_axis % x.ndim
    dy = np.flip(x, axis=0)
    count, mean, _ = cpu_backend.channel_stats(x, axis)
    rng = np.random.default_rng(2)
    invstd = rng.random(x.shape[axis]) + 0.5
    weight = rng.standard_normal(x.shape[axis]).astype(np.float64 if dtype == np.float64 else np.float32)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = cpu_backend.backward_by_channel(x, dy, axis, mean, invstd, weight, count)
    finally:
        numba.set_num_threads(threads)
    all_threads = cpu_backend.backward_by_channel(x, dy, axis, mean, invstd, weight, count)
    if x.ndim == 2 or axis == x.ndim - 1:  # channels vary fastest: rows, never this path
        assert one_thread is None and all_threads is None
        return
    expected = _two_pass_backward(x, dy, axis, mean, invstd, weight, count)
    for a, b, e, what in zip(one_thread, all_threads, expected, ("grad_input", "sums", "coefficients")):
        np.testing.assert_array_equal(a, b, err_msg=what)
        assert a.dtype == e.dtype and a.shape == e.shape and a.flags.c_contiguous, what
        tolerance = {
            "grad_input": {np.float16: 2e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype],
            "sums": 1e-12,
            "coefficients": 1e-12 if dtype == np.float64 else 1e-6,
        }[what]
        scale = np.abs(e.astype(np.float64)).max()
        np.testing.assert_allclose(a.astype(np.float64), e, rtol=tolerance, atol=tolerance * scale, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_module_backward_by_channel_matches_reference(dtype):
    """A channels-first batch large enough for the by-channel backward, through the module."""
    shape = (3, config.BACKWARD_BY_CHANNEL, 64, 86)  # just above the values per channel it needs
    assert np.prod(shape) >= max(config.SERIAL_BELOW, shape[1] * config.BACKWARD_BY_CHANNEL_VALUES)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    bn = nbn.BatchNorm2d(shape[1], dtype=dtype)
    bn.weight[...] = rng.standard_normal(shape[1])
    bn(x)
    grad = bn.backward(dy)
    expected, grad_weight, grad_bias = ref_backward_train(x, dy, bn.weight, bn.eps, 1)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grad, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())
    np.testing.assert_allclose(bn.grad_weight, grad_weight, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(bn.grad_bias, grad_bias, rtol=tolerance, atol=tolerance)
