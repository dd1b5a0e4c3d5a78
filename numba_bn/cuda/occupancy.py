"""Theoretical occupancy of a kernel on a GPU architecture, from its registers and shared memory.

The calculation of NVIDIA's CUDA Occupancy Calculator: the resident blocks
per SM are the fewest allowed by the warps, the registers and the shared
memory a block needs, each rounded to the SM's allocation units, and the
occupancy is the resident warps over the SM's maximum. No GPU needed.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class ArchLimits(NamedTuple):
    """Per-SM resources of one compute capability (shared memory in bytes)."""

    max_threads_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int
    max_registers_per_block: int
    shared_per_sm: int  # the largest shared memory carve-out
    max_shared_per_block: int  # opt-in maximum for one block
    reserved_shared_per_block: int  # taken by the system from every block's shared memory
    register_unit: int = 256  # registers are allocated per warp, in units of this many
    warp_granularity: int = 4  # warps are allocated to register files in groups of this many
    shared_unit: int = 128  # shared memory is allocated in units of this many bytes
    max_threads_per_block: int = 1024


_KIB = 1024

#: From the CUDA C++ Programming Guide, "Compute Capabilities", table "Technical Specifications
#: per Compute Capability" (resident threads, warps and blocks per SM, registers per SM and per
#: block, shared memory per SM and per block, 1 KiB of shared memory reserved per block from
#: compute capability 8.0 on), and the allocation units of NVIDIA's CUDA Occupancy Calculator
#: (registers: 256 per warp; warps: groups of 4; shared memory: 128 bytes):
#:   sm_70 (V100):        2048 threads, 64 warps, 32 blocks, 64K registers, 96 KiB shared per SM and block
#:   sm_75 (Turing):      1024 threads, 32 warps, 16 blocks, 64K registers, 64 KiB shared per SM and block
#:   sm_80 (A100):        2048 threads, 64 warps, 32 blocks, 64K registers, 164 KiB per SM, 163 KiB per block
#:   sm_86 (GA10x):       1536 threads, 48 warps, 16 blocks, 64K registers, 100 KiB per SM, 99 KiB per block
#:   sm_89 (Ada):         1536 threads, 48 warps, 24 blocks, 64K registers, 100 KiB per SM, 99 KiB per block
#:   sm_90 (H100/H200):   2048 threads, 64 warps, 32 blocks, 64K registers, 228 KiB per SM, 227 KiB per block
ARCHITECTURES = {
    "sm_70": ArchLimits(2048, 64, 32, 65536, 65536, 96 * _KIB, 96 * _KIB, 0),
    "sm_75": ArchLimits(1024, 32, 16, 65536, 65536, 64 * _KIB, 64 * _KIB, 0),
    "sm_80": ArchLimits(2048, 64, 32, 65536, 65536, 164 * _KIB, 163 * _KIB, _KIB),
    "sm_86": ArchLimits(1536, 48, 16, 65536, 65536, 100 * _KIB, 99 * _KIB, _KIB),
    "sm_89": ArchLimits(1536, 48, 24, 65536, 65536, 100 * _KIB, 99 * _KIB, _KIB),
    "sm_90": ArchLimits(2048, 64, 32, 65536, 65536, 228 * _KIB, 227 * _KIB, _KIB),
}


def arch_limits(arch):
    """The :class:`ArchLimits` of ``arch`` (``"sm_90"``), or a ValueError naming the supported ones."""
    limits = ARCHITECTURES.get(arch)
    if limits is None:
        raise ValueError(f"expected an arch among {', '.join(ARCHITECTURES)}, got {arch!r}")
    return limits


def _round_up(value, unit):
    return -(-value // unit) * unit


def resident_blocks(arch, threads, registers, shared_bytes):
    """Blocks of ``threads`` threads that fit on one SM at once (0: such a block cannot launch).

    ``registers`` per thread; ``shared_bytes``: static plus dynamic shared memory per block.
    """
    limits = arch_limits(arch)
    if not 1 <= threads <= limits.max_threads_per_block or shared_bytes > limits.max_shared_per_block:
        return 0
    warps = math.ceil(threads / 32)
    by_warps = min(limits.max_blocks_per_sm, limits.max_warps_per_sm // warps)
    by_registers = limits.max_blocks_per_sm
    if registers > 0:
        registers_per_warp = _round_up(registers * 32, limits.register_unit)
        if registers_per_warp * warps > limits.max_registers_per_block:
            return 0
        warps_for_registers = limits.registers_per_sm // registers_per_warp
        warps_for_registers -= warps_for_registers % limits.warp_granularity
        by_registers = warps_for_registers // warps
    shared_per_block = _round_up(shared_bytes + limits.reserved_shared_per_block, limits.shared_unit)
    by_shared = limits.shared_per_sm // shared_per_block if shared_per_block else limits.max_blocks_per_sm
    return min(by_warps, by_registers, by_shared)


def occupancy(arch, threads, registers, shared_bytes):
    """Resident warps over the SM's maximum (0-1) for blocks of ``threads`` threads on ``arch``."""
    limits = arch_limits(arch)
    return resident_blocks(arch, threads, registers, shared_bytes) * math.ceil(threads / 32) / limits.max_warps_per_sm
