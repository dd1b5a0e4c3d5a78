"""Compile CUDA kernels for a real GPU target, without a GPU, for the signatures given.

The CUDA simulator runs kernels as Python, so it cannot catch what only the
CUDA compiler rejects (an unsupported float16 operation, an argument type the
kernel does not handle). This script runs numba-cuda's front end (typing and
lowering to LLVM IR) on each kernel for each argument signature listed in a
JSON file - ``[[module, kernel, [argument description, ...]], ...]`` as
``cuda_launches.signature`` writes them from the launches the backend really
makes. It must run with ``NUMBA_ENABLE_CUDASIM=0``; the device query for the
compute capability is answered with a fixed one, so no driver is needed.
Prints ``checked N`` and exits 0 when all lower, 1 otherwise.

With ``--ptx`` it compiles each kernel all the way to PTX instead, which
also runs NVVM, and with ``--ptxas PATH`` it assembles that PTX for sm_90
with ``ptxas -v`` and prints ``registers N spills M`` (the most registers a
thread of any kernel uses, and the bytes spilled in all): that needs libnvvm
and libnvrtc (the CUDA toolkit, or the ``nvidia-cuda-nvcc-cu12`` and
``nvidia-cuda-nvrtc-cu12`` wheels), but still no GPU. Without them it prints
``unavailable: ...`` and exits with status 3.

    python tests/cuda_lowering_check.py SIGNATURES.json [--ptx] [--ptxas PATH]
"""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0":
    sys.exit("run with NUMBA_ENABLE_CUDASIM=0")

import numba.cuda.dispatcher as cuda_dispatcher  # noqa: E402
import numpy as np  # noqa: E402
from numba import from_dtype, types  # noqa: E402
from numba.cuda.compiler import compile_cuda  # noqa: E402

COMPUTE_CAPABILITY = (9, 0)


class _AnyDevice:
    compute_capability = COMPUTE_CAPABILITY


# Device functions ask the current device for its compute capability.
cuda_dispatcher.get_current_device = _AnyDevice


def numba_type(description):
    """The numba type the launcher infers for an argument described by ``cuda_launches.signature``."""
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
    raise ValueError(f"unknown argument description {description!r}")


#: Exit status when NVVM or NVRTC (needed for ``--ptx``/``--ptxas``) cannot be loaded.
UNAVAILABLE = 3


def _toolchain_missing(error):
    """Whether ``error`` says a CUDA compiler library is missing (not that a kernel is wrong)."""
    names = {type(e).__name__ for e in (error, error.__cause__, error.__context__) if e is not None}
    return bool(names & {"DynamicLibNotFoundError", "NvvmSupportError", "CudaSupportError"}) or (
        "Failure finding" in str(error)
    )


def assemble(ptx, ptxas):
    """``(registers per thread, spilled bytes)`` of PTX assembled for sm_90 by ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as file:
            file.write(ptx)
        report = subprocess.run(
            [ptxas, "-arch=sm_90", "-v", source, "-o", os.path.join(folder, "kernel.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
    return registers, spills


def main(path, ptx=False, ptxas=None):
    from numba.cuda import compile_ptx

    with open(path) as file:
        entries = json.load(file)
    failures = 0
    most_registers = spilled = 0
    for module, kernel, arguments in entries:
        function = getattr(importlib.import_module(module), kernel).py_func
        signature = tuple(numba_type(a) for a in arguments)
        try:
            if ptx or ptxas:
                code, _ = compile_ptx(function, signature, cc=COMPUTE_CAPABILITY)
                if ptxas:
                    registers, spills = assemble(code, ptxas)
                    most_registers, spilled = max(most_registers, registers), spilled + spills
            else:
                compile_cuda(function, types.void, signature, cc=COMPUTE_CAPABILITY)
        except Exception as error:  # report every failing kernel, not just the first
            if (ptx or ptxas) and _toolchain_missing(error):
                print(f"unavailable: the CUDA toolchain for PTX is not installed ({error})")
                return UNAVAILABLE
            failures += 1
            print(f"FAILED {module}.{kernel}{signature}\n{traceback.format_exc()}", file=sys.stderr)
    print(f"checked {len(entries)}")
    if ptxas:
        print(f"registers {most_registers} spills {spilled}")
    return 1 if failures else 0


if __name__ == "__main__":
    options = sys.argv[1:]
    ptxas = None
    if "--ptxas" in options:
        at = options.index("--ptxas")
        ptxas = options[at + 1]
        del options[at : at + 2]
    arguments = [a for a in options if a != "--ptx"]
    if len(arguments) != 1:
        sys.exit(__doc__)
    sys.exit(main(arguments[0], ptx="--ptx" in options, ptxas=ptxas))
