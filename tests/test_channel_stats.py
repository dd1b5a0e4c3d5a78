"""ChannelStats, channel_stats and set_running_stats against the float64 reference."""

import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numba_bn as nbn
from devices import DEVICES, to_device
from inputs import layout_shape, random_input
from reference import ref_batch_stats



def _reference(x, channel_axis=1):
    mean, var, count = ref_batch_stats(x, channel_axis)
    return count, mean, var * count


def _assert_stats(stats, x, channel_axis=1, rtol=1e-12):
    count, mean, m2 = _reference(x, channel_axis)
    assert stats.count == count
    scale = np.maximum(np.abs(mean), np.sqrt(m2 / max(count, 1)))
    np.testing.assert_allclose(stats.mean, mean, rtol=0, atol=rtol * np.max(scale))
    # Merging means of |mean|/std ~ k costs ~k float64 ulps of M2: exact up to that.
    relative = 1e-13 * (1.0 + np.abs(mean) / np.sqrt(np.maximum(m2 / max(count, 1), 1e-300)))
    assert np.all(np.abs(stats.m2 - m2) <= relative * m2 + 1e-300), (stats.m2, m2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_channel_stats_matches_reference(device, channel_axis, dtype):
    rng = np.random.default_rng(3)
    x = random_input(rng, layout_shape((6, 5, 3, 4), channel_axis), channel_axis, dtype)
    stats = nbn.channel_stats(to_device(x, device), channel_axis=channel_axis)
    assert isinstance(stats, nbn.ChannelStats) and isinstance(stats.mean, np.ndarray)
    assert stats.mean.dtype == stats.m2.dtype == np.float64 and stats.num_features == 5
    _assert_stats(stats, x, channel_axis)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    offset=st.sampled_from([0.0, 1e4, -3e6]),
    seed=st.integers(0, 2**16),
)
def test_merge_of_splits_equals_the_whole(sizes, offset, seed):
    """Any split of a batch, merged left to right, gives the whole batch's statistics (float32 at |mean|/std 1e4+)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((sum(sizes), 3, 2)) + offset).astype(np.float32)
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    parts = [nbn.channel_stats(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = nbn.ChannelStats.merge_all(parts)
    if x.shape[0] == 0:
        assert merged.count == 0 and np.all(np.isnan(merged.var))
        return
    _assert_stats(merged, x)
    pairwise = parts[0]
    for part in parts[1:]:
        pairwise = pairwise.merge(part)
    assert pairwise == merged  # merge_all is the left-to-right chain: the same bits


def test_merge_all_is_deterministic_and_order_only_moves_last_bits():
    rng = np.random.default_rng(5)
    parts = [nbn.channel_stats(rng.normal(7.0, 2.0, (n, 4))) for n in (3, 8, 1, 5)]
    forward = nbn.ChannelStats.merge_all(parts)
    assert nbn.ChannelStats.merge_all(list(parts)) == forward
    backward = nbn.ChannelStats.merge_all(parts[::-1])
    assert backward.count == forward.count
    np.testing.assert_allclose(backward.mean, forward.mean, rtol=1e-14)
    np.testing.assert_allclose(backward.m2, forward.m2, rtol=1e-13)


def test_empty_state_is_the_identity():
    stats = nbn.channel_stats(np.random.default_rng(0).normal(size=(4, 3)))
    empty = nbn.channel_stats(np.zeros((0, 3), np.float32))
    assert empty.count == 0 and empty == nbn.ChannelStats.empty(3)
    assert np.all(np.isnan(empty.mean)) and np.all(np.isnan(empty.var)) and np.all(np.isnan(empty.unbiased_var))
    assert stats.merge(empty) is stats and empty.merge(stats) is stats
    assert nbn.ChannelStats.merge_all([empty, stats, empty]) == stats


def test_variances_and_edge_counts():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [8.0, 5.0]])
    stats = nbn.channel_stats(x)
    np.testing.assert_allclose(stats.var, x.var(axis=0))
    np.testing.assert_allclose(stats.unbiased_var, x.var(axis=0, ddof=1))
    assert stats.m2[1] == 0.0  # a constant channel is exactly 0
    one = nbn.channel_stats(x[:1])
    assert one.count == 1 and np.array_equal(one.var, [0.0, 0.0]) and np.all(np.isnan(one.unbiased_var))


def test_nan_propagates_to_its_channel_only():
    x = np.random.default_rng(1).normal(size=(6, 3))
    x[2, 1] = np.nan
    stats = nbn.channel_stats(x).merge(nbn.channel_stats(x[:2]))
    assert np.isnan(stats.mean[1]) and np.isfinite(stats.mean[[0, 2]]).all()


def test_buffer_round_trip_and_pickle():
    stats = nbn.channel_stats(np.random.default_rng(2).normal(size=(5, 4, 3)))
    buffer = stats.to_buffer()
    assert buffer.dtype == np.float64 and buffer.shape == (9,) and buffer[0] == stats.count
    assert nbn.ChannelStats.from_buffer(buffer) == stats
    assert nbn.ChannelStats.from_buffer(list(buffer)) == stats
    assert pickle.loads(pickle.dumps(stats)) == stats


def test_immutable():
    stats = nbn.channel_stats(np.ones((3, 2)))
    with pytest.raises(ValueError):
        stats.mean[0] = 5.0
    with pytest.raises(AttributeError):
        stats.count = 7
    source = np.array([1.0, 2.0])
    copy = nbn.ChannelStats(4, source, source)
    source[0] = 9.0
    assert copy.mean[0] == 1.0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s: s.merge(nbn.ChannelStats.empty(3)), ValueError, "2 channels to merge with, got 3"),
        (lambda s: s.merge(s.to_buffer()), TypeError, "expected a ChannelStats to merge with, got numpy.ndarray"),
        (lambda s: nbn.ChannelStats.merge_all([]), ValueError, "one or more ChannelStats"),
        (lambda s: nbn.ChannelStats.merge_all([s, 3]), TypeError, "got int at position 1"),
        (lambda s: nbn.ChannelStats.from_buffer(np.zeros(4)), ValueError, "2C + 1 values"),
        (lambda s: nbn.ChannelStats.from_buffer(np.zeros((3, 1))), ValueError, "2C + 1 values"),
        (lambda s: nbn.ChannelStats.from_buffer([2.5, 0, 0]), ValueError, "a whole number >= 0"),
        (lambda s: nbn.ChannelStats(-1, [0.0], [0.0]), ValueError, "count >= 0"),
        (lambda s: nbn.ChannelStats(2.0, [0.0], [0.0]), TypeError, "count to be an int, got float"),
        (lambda s: nbn.ChannelStats(2, [0.0, 1.0], [0.0]), ValueError, "the same shape"),
        (lambda s: nbn.ChannelStats(2, [[0.0]], [[0.0]]), ValueError, "1-D"),
        (lambda s: nbn.channel_stats(np.ones(3)), ValueError, "2 or more dimensions"),
        (lambda s: nbn.channel_stats(np.ones((2, 3), np.int64)), TypeError, "float16, float32 or float64"),
        (lambda s: nbn.channel_stats([[1.0, 2.0]]), TypeError, "numpy.ndarray"),
        (lambda s: nbn.channel_stats(np.ones((2, 3)), channel_axis=2), ValueError, "channel_axis"),
    ],
)
def test_errors(call, error, message):
    stats = nbn.channel_stats(np.ones((3, 2)))
    with pytest.raises(error, match=re.escape(message)):
        call(stats)


def test_strided_read_only_and_byte_swapped_input():
    base = np.random.default_rng(4).normal(3.0, 1.0, (8, 6, 5))
    x = base[::2, ::2, 1:].astype(">f8")
    x.setflags(write=False)
    _assert_stats(nbn.channel_stats(x), x.astype(np.float64))


# ------------------------------------------------------- set_running_stats


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_set_running_stats_is_population_statistics(device, dtype):
    """PreciseBN: merged batch states give the population variance, not a mean of per-batch variances."""
    rng = np.random.default_rng(6)
    batches = [rng.normal(loc, 1.0 + loc, (n, 3, 4)).astype(dtype) for loc, n in ((0.0, 4), (3.0, 9), (1.0, 2))]
    bn = nbn.BatchNorm1d(3, dtype=dtype, device=device)
    bn.num_batches_tracked = 17
    running_mean = bn.running_mean
    bn.set_running_stats(nbn.ChannelStats.merge_all(nbn.channel_stats(to_device(b, device)) for b in batches))
    everything = np.concatenate(batches).astype(np.float64)
    mean = everything.mean(axis=(0, 2))
    var = everything.var(axis=(0, 2), ddof=1)
    state = bn.state_dict()
    assert state["running_mean"].dtype == dtype and bn.num_batches_tracked == 17
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(state["running_mean"], mean, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(state["running_var"], var, rtol=rtol)
    assert bn.running_mean is running_mean  # copied in place
    averaged = np.mean([b.astype(np.float64).var(axis=(0, 2), ddof=1) for b in batches], axis=0)
    assert not np.allclose(averaged, var, rtol=1e-2)  # the approximation this replaces is far off here


@pytest.mark.parametrize(
    "module, stats, error, message",
    [
        (lambda: nbn.BatchNorm1d(3, track_running_stats=False), np.ones((4, 3)), ValueError, "track_running_stats"),
        (lambda: nbn.BatchNorm1d(2), np.ones((4, 3)), ValueError, "2 channels, got 3"),
        (lambda: nbn.BatchNorm1d(3), np.ones((1, 3)), ValueError, "2 or more values per channel"),
        (lambda: nbn.BatchNorm1d(3), None, TypeError, "ChannelStats, got NoneType"),
    ],
)
def test_set_running_stats_errors_change_nothing(module, stats, error, message):
    bn = module()
    before = bn.state_dict()
    with pytest.raises(error, match=re.escape(message)):
        bn.set_running_stats(None if stats is None else nbn.channel_stats(stats))
    after = bn.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
