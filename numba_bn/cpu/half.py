"""Element load/store for the CPU kernels, including IEEE half precision.

Numba's CPU target has no float16 type, so float16 arrays reach the kernels
as their ``uint16`` bit patterns. ``load`` widens a stored element to the
compute type (half bits -> float32, anything else unchanged) and ``store``
narrows a computed value to an output array's element type (float32 -> half
bits with round-to-nearest-even). Kernels call these two on every element and
stay generic over the dtype.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


@intrinsic
def _float32_from_bits(typingctx, bits):
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_from_float32(typingctx, value):
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(value), codegen


@njit(cache=True)
def half_bits_to_float32(half_bits):
    """Exact float32 value of a float16 bit pattern."""
    h = np.int64(half_bits)
    magnitude = h & 0x7FFF
    if magnitude >= 0x7C00:  # Inf/NaN: keep the payload, saturate the exponent
        value = _float32_from_bits(np.uint32((magnitude << 13) | 0x7F800000))
    elif magnitude >= 0x0400:  # normal: re-bias the exponent from 15 to 127
        value = _float32_from_bits(np.uint32((magnitude << 13) + 0x38000000))
    else:  # subnormal or zero: an integer count of 2**-24
        value = np.float32(magnitude) * np.float32(2.0**-24)
    if h & 0x8000:
        return -value
    return value


@njit(cache=True)
def float32_to_half_bits(value):
    """float16 bit pattern nearest to a float32 (ties to even), as uint16."""
    bits = np.int64(_bits_from_float32(np.float32(value)))
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7FFFFFFF
    if magnitude >= 0x7F800000:  # Inf stays Inf, NaN becomes a quiet NaN
        if magnitude > 0x7F800000:
            return np.uint16(sign | 0x7E00)
        return np.uint16(sign | 0x7C00)
    if magnitude >= 0x477FF000:  # >= 65520 rounds past the largest half
        return np.uint16(sign | 0x7C00)
    exponent = magnitude >> 23
    if exponent < 113:  # below 2**-14: a half subnormal (or zero)
        if exponent < 102:  # below 2**-25: rounds to zero
            return np.uint16(sign)
        mantissa = (magnitude & 0x7FFFFF) | 0x800000
        shift = 126 - exponent
        half = mantissa >> shift
        rest = mantissa & ((1 << shift) - 1)
        halfway = 1 << (shift - 1)
    else:
        half = ((exponent - 112) << 10) | ((magnitude & 0x7FFFFF) >> 13)
        rest = magnitude & 0x1FFF
        halfway = 0x1000
    if rest > halfway or (rest == halfway and (half & 1)):
        half += 1  # a carry into the exponent is the correctly rounded result
    return np.uint16(sign | half)


def load(element):
    """Value of a stored element in its compute type (half bits -> float32)."""
    if isinstance(element, np.uint16):
        return np.float32(np.uint16(element).view(np.float16))
    return element


def store(value, out):
    """``value`` converted to the element type of array ``out``."""
    if out.dtype == np.uint16:
        return np.float16(value).view(np.uint16)
    return out.dtype.type(value)


@overload(load, jit_options={"cache": True})
def _load_overload(element):
    if element == types.uint16:
        return lambda element: half_bits_to_float32(element)
    return lambda element: element


@overload(store, jit_options={"cache": True})
def _store_overload(value, out):
    if out.dtype == types.uint16:
        return lambda value, out: float32_to_half_bits(value)
    element_type = out.dtype
    return lambda value, out: element_type(value)
