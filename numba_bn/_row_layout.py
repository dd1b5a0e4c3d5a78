"""How GroupNorm, InstanceNorm and LayerNorm see their input: rows, on every device.

The kernels of both devices read a C-contiguous input as ``(N, G, A, B)``:
row ``n * G + g`` starts at element ``n * sN + g * sG`` and consists of ``A``
segments of ``B`` contiguous values, ``sA`` elements apart. The affine's index
of value ``(g, a, b)`` is ``g * wg + a * wa + b * wb``. :func:`group_rows`
and :func:`layer_rows` give that description for an input shape; the work
split (:func:`row_parts`, :func:`row_blocks`) depends on the shape alone, so
results never depend on the thread count.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from . import config


class RowGeometry(NamedTuple):
    shape: tuple[int, int, int, int]  # (N, G, A, B)
    strides: tuple[int, int, int]  # (sN, sG, sA) in elements; B is contiguous
    weight_strides: tuple[int, int, int]  # (wg, wa, wb)
    weight_count: int  # length of the affine's vectors (channels, or normalised values)

    @property
    def rows(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def row_length(self) -> int:
        return self.shape[2] * self.shape[3]


@functools.lru_cache(maxsize=256)  # a training loop sees the same few shapes at every step
def group_rows(shape: tuple[int, ...], groups: int, channel_axis: int) -> RowGeometry:
    """Rows of ``groups`` channel groups per sample of a C-contiguous ``(N, C, *)`` (``channel_axis=1``)
    or ``(N, *, C)`` (``channel_axis=-1``) input."""
    samples = shape[0]
    if channel_axis == 1:
        channels = shape[1]
        spatial = math.prod(shape[2:])
    else:
        channels = shape[-1]
        spatial = math.prod(shape[1:-1])
    per_group = channels // groups
    if channel_axis == 1 and spatial > 1:
        # A group is per_group channels of `spatial` contiguous values: one affine entry per segment.
        return RowGeometry(
            (samples, groups, per_group, spatial), (channels * spatial, per_group * spatial, spatial),
            (per_group, 1, 0), channels,
        )
    # Channels-last (or no spatial axes): a group is `spatial` segments of its per_group channels.
    return RowGeometry(
        (samples, groups, spatial, per_group), (spatial * channels, per_group, channels), (per_group, 0, 1), channels
    )


@functools.lru_cache(maxsize=256)
def layer_rows(shape: tuple[int, ...], normalized_ndim: int) -> RowGeometry:
    """Rows of the trailing ``normalized_ndim`` axes of a C-contiguous input."""
    features = math.prod(shape[len(shape) - normalized_ndim :])
    rows = math.prod(shape[: len(shape) - normalized_ndim])
    return RowGeometry((rows, 1, 1, features), (features, 0, 0), (0, 0, 1), features)


def row_parts(geometry: RowGeometry) -> int:
    """Pieces per row: 1 (whole rows), or enough for ``config.NORM_PART_VALUES`` each when rows are few and long."""
    length = geometry.row_length
    if geometry.rows >= config.NORM_FEW_ROWS or length <= config.NORM_PART_VALUES:
        return 1
    return -(-length // config.NORM_PART_VALUES)


def row_blocks(geometry: RowGeometry) -> int:
    """Blocks of whole rows in a backward: at most ``config.NORM_ROW_BLOCKS``, and few enough that their
    float64 partial sums (two vectors of ``weight_count`` each) stay below the input's size in values."""
    rows = geometry.rows
    bound = max(1, rows * geometry.row_length // (4 * max(1, geometry.weight_count)))
    return max(1, min(config.NORM_ROW_BLOCKS, rows, bound))
