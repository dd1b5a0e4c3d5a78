"""What the GPU compilers make of a kernel, without a GPU: PTX from NVVM, then ``ptxas -v``.

numba-cuda compiles a kernel for the argument types it is launched with, to
PTX with NVVM; the driver then assembles that PTX for the GPU, which is when
registers, spills and static shared memory are decided. ``ptxas`` (the same
assembler, from the ``nvidia-cuda-nvcc-cu12`` wheel or a CUDA toolkit) does
that step on any machine and says what it decided with ``-v``. Each kernel
is compiled with the options its dispatcher was declared with, so the code
is what a GPU would run. Needs ``numba.cuda`` without the simulator
(``NUMBA_ENABLE_CUDASIM=0``): the CUDA report runs this in a process of its
own.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

import numpy as np

#: How to get ptxas and NVVM.
TOOLCHAIN_HINT = (
    "pip install 'numba_bn[cuda]' (numba-cuda[cu12], which brings the nvidia-cuda-nvcc-cu12 wheel "
    "with ptxas and NVVM), or install a CUDA toolkit and put its ptxas on the PATH"
)


class KernelResources(NamedTuple):
    """What ``ptxas -v`` reports of one kernel (bytes, except registers per thread)."""

    registers: int
    spill_stores: int
    spill_loads: int
    static_shared_bytes: int


def find_ptxas():
    """The path of ``ptxas``: from the ``nvidia-cuda-nvcc-cu12`` wheel, else on the PATH; None when neither."""
    name = "ptxas.exe" if sys.platform == "win32" else "ptxas"
    try:
        import nvidia.cuda_nvcc as wheel
    except ImportError:
        wheel = None
    for folder in getattr(wheel, "__path__", []):  # a namespace package: no __file__
        candidate = os.path.join(folder, "bin", name)
        if os.path.isfile(candidate):
            return candidate
    return shutil.which("ptxas")


def compute_capability(arch):
    """``(9, 0)`` for ``"sm_90"``."""
    digits = arch.removeprefix("sm_")
    return int(digits[:-1]), int(digits[-1])


_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILL_STORES = re.compile(r"(\d+) bytes spill stores")
_SPILL_LOADS = re.compile(r"(\d+) bytes spill loads")
_SHARED = re.compile(r"(\d+) bytes smem")


def parse_ptxas_verbose(text):
    """:class:`KernelResources` from ``ptxas -v`` output for a module with one kernel.

    Spills are summed over the kernel and any function it calls (each has
    its own ``Function properties`` line); a kernel without static shared
    memory has no ``smem`` entry.
    """
    registers = [int(n) for n in _REGISTERS.findall(text)]
    if not registers:
        raise ValueError(f"expected 'Used N registers' in the output of ptxas -v, got:\n{text}")
    return KernelResources(
        max(registers),
        sum(int(n) for n in _SPILL_STORES.findall(text)),
        sum(int(n) for n in _SPILL_LOADS.findall(text)),
        max((int(n) for n in _SHARED.findall(text)), default=0),
    )


def assemble(ptx, ptxas, arch, max_registers=None):
    """:class:`KernelResources` of ``ptx`` assembled for ``arch`` (e.g. ``"sm_90"``) by ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w", encoding="utf-8") as file:
            file.write(ptx)
        command = [ptxas, f"-arch={arch}", "-v", source, "-o", os.path.join(folder, "kernel.cubin")]
        if max_registers:  # the dispatcher passes it to the linker, which hands it to ptxas
            command.insert(1, f"-maxrregcount={int(max_registers)}")
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch} (status {result.returncode}):\n{result.stderr}")
    return parse_ptxas_verbose(result.stdout + result.stderr)


def numba_type(description):
    """The numba type of an argument described by ``launch_record.describe_arguments``."""
    from numba import from_dtype, types

    kind = description[0]
    if kind == "array":
        _, dtype, ndim, layout = description
        return types.Array(from_dtype(np.dtype(dtype)), ndim, layout)
    if kind == "tuple":
        return types.Tuple([numba_type(item) for item in description[1]])
    if kind == "boolean":
        return types.boolean
    if kind == "scalar":
        return from_dtype(np.dtype(description[1]))
    raise ValueError(f"expected an argument description of kind array, tuple, boolean or scalar, got {description!r}")


@contextlib.contextmanager
def compute_capability_without_a_device(capability):
    """Answer numba-cuda's device queries with ``capability``: typing a call to a device function
    asks the current device for its compute capability, and there is no device here."""
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = capability

    original = dispatcher.get_current_device
    dispatcher.get_current_device = _Device
    try:
        yield
    finally:
        dispatcher.get_current_device = original


def kernel_ptx(module, kernel, arguments, arch):
    """``(ptx, signature, max_registers)`` of kernel ``module.kernel`` compiled by NVVM for ``arch``.

    ``arguments``: ``launch_record.describe_arguments`` of a launch. The
    signature is numba's text of the argument types; ``max_registers`` is the
    dispatcher's register cap for ptxas (None without one).
    """
    from numba.cuda import compile_ptx

    dispatcher = getattr(importlib.import_module(module), kernel)
    options = dispatcher.targetoptions
    signature = tuple(numba_type(a) for a in arguments)
    capability = compute_capability(arch)
    with compute_capability_without_a_device(capability):
        ptx, _ = compile_ptx(
            dispatcher.py_func, signature, cc=capability, debug=options.get("debug"),
            lineinfo=bool(options.get("lineinfo")), fastmath=bool(options.get("fastmath")), opt=options.get("opt"),
            launch_bounds=options.get("launch_bounds"),
        )
    return ptx, ", ".join(str(t) for t in signature), options.get("max_registers")


def toolchain_missing(error):
    """Whether ``error`` says that NVVM (or another CUDA compiler library) is missing, not that a kernel is wrong."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    names = {type(e).__name__ for e in chain}
    return bool(names & {"DynamicLibNotFoundError", "NvvmSupportError", "CudaSupportError"}) or any(
        "Failure finding" in str(e) or "libnvvm" in str(e).lower() for e in chain
    )
