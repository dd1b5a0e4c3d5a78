"""Canonical 5-D views that let two kernel shapes serve every input layout.

A BatchNorm reduction only cares which axis holds the channels; the order of
the other axes is free. So each operand is re-viewed (never copied) as

* ``RUNS``: ``(C, A, B, D, M)`` - used when the channel axis is not the
  fastest-varying one; the innermost ``M`` is the longest contiguous run;
* ``ROWS``: ``(A, B, D, R, C)`` - used when channels vary fastest (channels-last
  data, and the ``(N, C)`` input of BatchNorm1d), so kernels vectorise along C.

The non-channel axes are ordered by decreasing stride of the first operand,
negative strides are flipped, and adjacent axes are merged wherever every
operand allows it, then padded with size-1 axes to exactly four. The same
permutation is applied to all operands, so element ``i`` of one view lines up
with element ``i`` of the others.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

RUNS = "runs"
ROWS = "rows"

_OTHER_AXES = 4


def kernel_views(channel_axis, inputs, outputs=()):
    """Return ``(layout, input_views, output_views)`` for arrays of one shape.

    ``inputs`` come back read-only (one compiled kernel serves writeable and
    read-only arrays alike); ``outputs`` stay writeable. The first input picks
    the axis order, so its memory is walked in address order.
    """
    arrays = list(inputs) + list(outputs)
    primary = arrays[0]
    shape = primary.shape
    axis = channel_axis % primary.ndim
    others = [i for i in range(primary.ndim) if i != axis and shape[i] != 1]

    flips = tuple(
        slice(None, None, -1) if i in others and primary.strides[i] < 0 else slice(None)
        for i in range(primary.ndim)
    )
    arrays = [a[flips] for a in arrays]
    others.sort(key=lambda i: -abs(arrays[0].strides[i]))

    # Each group is [size, strides of every array]; an axis joins the group
    # before it when that group steps over it exactly, in every array.
    groups = []
    for i in others:
        strides = [a.strides[i] for a in arrays]
        if groups and all(
            outer == inner * shape[i] for outer, inner in zip(groups[-1][1], strides)
        ):
            groups[-1] = [groups[-1][0] * shape[i], strides]
        else:
            groups.append([shape[i], strides])
    if len(groups) > _OTHER_AXES:  # unreachable for the 2-D..5-D inputs served
        raise ValueError(f"at most {_OTHER_AXES + 1} dimensions are supported, got {len(shape)}")
    groups = [[1, [0] * len(arrays)]] * (_OTHER_AXES - len(groups)) + groups

    channel_strides = [a.strides[axis] for a in arrays]
    innermost = abs(groups[-1][1][0])
    layout = ROWS if abs(channel_strides[0]) <= innermost or groups[-1][0] == 1 else RUNS

    views = []
    for k, a in enumerate(arrays):
        sizes = [g[0] for g in groups]
        strides = [g[1][k] for g in groups]
        if layout == ROWS:
            view_shape = (*sizes, shape[axis])
            view_strides = (*strides, channel_strides[k])
        else:
            view_shape = (shape[axis], *sizes)
            view_strides = (channel_strides[k], *strides)
        views.append(as_strided(a, view_shape, view_strides, writeable=k >= len(inputs)))
    return layout, views[: len(inputs)], views[len(inputs) :]
