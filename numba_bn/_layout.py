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

``kernel_operands`` hands those views to the kernels as flat 1-D buffers with
an element origin and element strides (a unit stride lets the innermost loop
vectorise); C-contiguous arrays, the common case, skip the view building.
"""

import functools
import math

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


def _flat_operand(view):
    """``(buffer, origin, strides)``: a 1-D buffer over ``view``'s memory and element offsets.

    ``buffer[origin + sum(i * s)]`` is ``view[i...]``; the buffer starts at the
    lowest address the view touches, so negative strides work too.
    """
    itemsize = view.itemsize
    strides = tuple(s // itemsize if n > 1 or s % itemsize == 0 else 0 for n, s in zip(view.shape, view.strides))
    origin = sum((n - 1) * -s for n, s in zip(view.shape, strides) if s < 0)
    span = 1 + sum((n - 1) * abs(s) for n, s in zip(view.shape, strides))
    lowest = view[tuple(slice(n - 1, n) if s < 0 else slice(0, 1) for n, s in zip(view.shape, strides))]
    buffer = as_strided(lowest, (span,), (itemsize,), writeable=view.flags.writeable)
    return buffer, origin, strides


def _memory_order(shape, strides):
    """The four outer axes of a runs shape, outermost first, by decreasing ``strides`` (size-1 axes first)."""
    return [i for i in range(4) if shape[i] == 1] + sorted(
        (i for i in range(4) if shape[i] > 1), key=lambda i: -abs(strides[i])
    )


def walk_positions(layout, shape, strides):
    """Strides, in values, of each axis of a kernel view in the walk that elementwise passes take.

    That walk goes through the first operand's memory in address order, so a
    value's position in it does not depend on the other operands: a ReLU mask
    recorded at those positions by a forward can be read by any later pass
    over the same input. ``strides`` are that input's element strides in the
    view ``(layout, shape)``.
    """
    positions = [0] * 5
    step = 1
    axes = range(4, -1, -1) if layout == ROWS else [4, *reversed(_memory_order(shape, strides))]
    for i in axes:
        positions[i] = step
        step *= shape[i]
    return tuple(positions)


def _in_memory_order(shape, strides_per_operand):
    """Reorder the four outer axes of a runs shape by decreasing stride of the first operand.

    Returns ``(shape, strides_per_operand, channel_position)`` with the
    channel axis (axis 0 before) at ``channel_position``.
    """
    order = _memory_order(shape, strides_per_operand[0])
    new_shape = tuple(shape[i] for i in order) + (shape[4],)
    new_strides = [tuple(s[i] for i in order) + (s[4],) for s in strides_per_operand]
    return new_shape, new_strides, order.index(0)


def kernel_operands(channel_axis, inputs, outputs=(), memory_order=False):
    """Flat operands for the kernels: ``(layout, shape, operands, channel_position)``.

    ``operands`` holds one ``(buffer, origin, strides)`` per array (inputs,
    then outputs), with element strides for the 5-D ``shape`` of ``layout``
    (see ``kernel_views``). With ``memory_order`` a runs shape has its four
    outer axes ordered by memory instead of channel-first, and
    ``channel_position`` says where the channel axis went (elementwise
    kernels walk memory in address order that way); it is 0 otherwise.
    Every element stride must be a whole number of elements.
    """
    arrays = (*inputs, *outputs)
    for a in arrays:
        if not a.flags.c_contiguous:
            break
    else:
        layout, shape, strides, position = _contiguous_layout(arrays[0].shape, channel_axis, memory_order)
        buffers = [a.reshape(-1) for a in arrays]
        for b in buffers[: len(inputs)]:
            b.flags.writeable = False  # one compiled kernel for writeable and read-only input
        return layout, shape, [(b, 0, strides) for b in buffers], position

    layout, input_views, output_views = kernel_views(channel_axis, inputs, outputs)
    operands = [_flat_operand(v) for v in (*input_views, *output_views)]
    shape = input_views[0].shape
    if layout == RUNS and memory_order:
        shape, strides, position = _in_memory_order(shape, [op[2] for op in operands])
        return layout, shape, [(op[0], op[1], s) for op, s in zip(operands, strides)], position
    return layout, shape, operands, 0


@functools.lru_cache(maxsize=256)
def _contiguous_layout(shape, channel_axis, memory_order):
    """``(layout, shape, strides, channel_position)`` of C-contiguous arrays: (outer, C, inner) in memory."""
    axis = channel_axis % len(shape)
    channels = shape[axis]
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1 :])
    if inner == 1:
        return ROWS, (1, 1, 1, outer, channels), (0, 0, 0, channels, 1), 0
    if memory_order:
        return RUNS, (1, 1, outer, channels, inner), (0, 0, channels * inner, inner, 1), 3
    return RUNS, (channels, 1, 1, outer, inner), (inner, 0, 0, channels * inner, 1), 0
