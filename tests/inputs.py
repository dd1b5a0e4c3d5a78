"""Test inputs: shapes per channel axis, per-channel random data, memory layouts.

Everything here is host (NumPy) data; ``devices.to_device`` moves it to the
device under test, keeping its layout.
"""

import numpy as np

__all__ = ["KINDS", "layout_shape", "memory_layout", "random_input", "unaligned_copy"]


def layout_shape(shape_cf, channel_axis):
    """The input shape for ``channel_axis`` given the channels-first shape."""
    if channel_axis == 1 or len(shape_cf) == 2:
        return tuple(shape_cf)
    return (shape_cf[0], *shape_cf[2:], shape_cf[1])


def random_input(rng, shape, channel_axis, dtype):
    """Data with a different mean and spread in every channel."""
    channels = shape[channel_axis]
    bshape = [1] * len(shape)
    bshape[channel_axis] = channels
    loc = rng.uniform(-3, 3, channels).reshape(bshape)
    spread = rng.uniform(0.5, 3, channels).reshape(bshape)
    return (loc + spread * rng.standard_normal(shape)).astype(dtype)


def unaligned_copy(values):
    """A copy of ``values`` at an address that is not a multiple of its itemsize."""
    raw = np.zeros(values.nbytes + 1, np.uint8)[1:]
    out = raw.view(values.dtype).reshape(values.shape)
    out[...] = values
    assert not out.flags.aligned
    return out


def memory_layout(kind, values, seed=0):
    """An array equal to ``values`` (same shape and dtype) in the memory layout ``kind``.

    ``kind`` is one of :data:`KINDS` or ``"negative-strided"`` (every other
    element, backwards: negative strides wider than the itemsize).
    """
    reverse = tuple(range(values.ndim))[::-1]
    flip_all = (slice(None, None, -1),) * values.ndim
    every_other = (slice(None, None, 2),) * values.ndim
    if kind == "c":
        return values.copy()
    if kind == "fortran":
        return np.asfortranarray(values)
    if kind == "transposed":
        return np.ascontiguousarray(values.transpose(reverse)).transpose(reverse)
    if kind == "permuted":
        order = np.random.default_rng(seed).permutation(values.ndim)
        return np.ascontiguousarray(values.transpose(order)).transpose(np.argsort(order))
    if kind == "strided":
        padded = np.full(tuple(2 * n for n in values.shape), np.nan, values.dtype)
        padded[every_other] = values
        return padded[every_other]
    if kind == "negative":
        return np.ascontiguousarray(values[flip_all])[flip_all]
    if kind == "negative-strided":
        padded = np.full(tuple(2 * n for n in values.shape), np.nan, values.dtype)
        out = padded[(slice(None, None, -2),) * values.ndim]
        out[...] = values
        return out
    if kind == "sliced":  # an interior window: offset start, non-unit strides on axis 0
        padded = np.full((2 * values.shape[0] + 1, *values.shape[1:]), np.nan, values.dtype)
        padded[1::2] = values
        return padded[1::2]
    if kind == "readonly":
        out = values.copy()
        out.flags.writeable = False
        return out
    if kind == "unaligned":
        return unaligned_copy(values)
    raise ValueError(kind)


#: The host memory layouts every suite sweeps (``"negative-strided"`` aside).
KINDS = ["c", "fortran", "transposed", "permuted", "strided", "negative", "sliced", "readonly", "unaligned"]
