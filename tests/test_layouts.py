"""Any strides, orders and byte orders reach the kernels as the right elements."""

import numpy as np
import pytest

import numba_bn as nbn
from numba_bn.cpu import backend as cpu_backend
from numba_bn._layout import ROWS, RUNS, kernel_views


def strided_variants(base):
    """Views of ``base``'s values in many memory layouts (same logical contents)."""
    yield "C", base
    yield "F", np.asfortranarray(base)
    flipped = np.ascontiguousarray(base[::-1, ..., ::-1])
    yield "negative", flipped[::-1, ..., ::-1]
    padded = np.zeros(tuple(2 * n for n in base.shape), base.dtype)
    padded[tuple(slice(None, None, 2) for _ in base.shape)] = base
    yield "every-other", padded[tuple(slice(None, None, 2) for _ in base.shape)]
    order = np.random.default_rng(0).permutation(base.ndim)
    yield "permuted-memory", np.ascontiguousarray(base.transpose(order)).transpose(np.argsort(order))
    yield "byteswapped", base.astype(base.dtype.newbyteorder())
    readonly = base.copy()
    readonly.flags.writeable = False
    yield "read-only", readonly


SHAPES = [((5, 3), 1), ((4, 3, 6), 1), ((4, 6, 3), -1), ((2, 3, 4, 5), 1), ((2, 4, 5, 3), -1), ((2, 3, 2, 3, 4), 1), ((2, 2, 3, 4, 3), -1)]


@pytest.mark.parametrize("shape, channel_axis", SHAPES, ids=str)
def test_identity_transform_copies_every_layout(shape, channel_axis, small_work_units):
    base = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    channels = shape[channel_axis]
    for name, x in strided_variants(base):
        identity = np.zeros((4, channels))
        identity[1] = 1.0  # shift 0, scale 1, offset 0
        y = cpu_backend.normalize(x, channel_axis % x.ndim, identity)
        assert y.flags.c_contiguous and y.dtype == x.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(y, base, err_msg=name)


@pytest.mark.parametrize("shape, channel_axis", SHAPES, ids=str)
def test_statistics_every_layout(shape, channel_axis, small_work_units):
    base = np.random.default_rng(1).standard_normal(shape) * 3 + 7
    axes = tuple(i for i in range(base.ndim) if i != channel_axis % base.ndim)
    for name, x in strided_variants(base):
        mean, var, count = nbn.batch_stats(x, channel_axis=channel_axis)
        assert count == base.size // base.shape[channel_axis]
        np.testing.assert_allclose(mean, base.mean(axis=axes), rtol=1e-13, err_msg=name)
        np.testing.assert_allclose(var, base.var(axis=axes), rtol=1e-12, err_msg=name)


def test_layout_choice_follows_memory():
    x = np.zeros((4, 3, 5, 6), np.float32)
    assert kernel_views(1, [x])[0] == RUNS
    assert kernel_views(-1, [np.zeros((4, 5, 6, 3))])[0] == ROWS
    channels_last_memory = np.zeros((4, 5, 6, 3)).transpose(0, 3, 1, 2)
    layout, (view,), _ = kernel_views(1, [channels_last_memory])
    assert layout == ROWS and view.shape[-1] == 3
    assert kernel_views(1, [np.zeros((7, 3))])[0] == ROWS
    assert kernel_views(1, [np.zeros((7, 3, 1, 1))])[0] == ROWS  # one value per (n, c): rows


def test_views_share_memory_and_inputs_are_read_only():
    x = np.zeros((4, 3, 5), np.float32)
    y = np.zeros_like(x)
    _, (xv,), (yv,) = kernel_views(1, [x], [y])
    assert np.shares_memory(xv, x) and np.shares_memory(yv, y)
    assert not xv.flags.writeable and yv.flags.writeable
