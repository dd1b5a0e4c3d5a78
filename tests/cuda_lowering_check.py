"""Type and lower CUDA kernels for a real GPU target, without a GPU, for the signatures given.

The CUDA simulator runs kernels as Python, so it cannot catch what only the
CUDA compiler rejects (an unsupported float16 operation, an argument type the
kernel does not handle). This script runs numba-cuda's front end (typing and
lowering to LLVM IR; no NVVM needed) on each kernel for each argument
signature listed in a JSON file - ``[[module, kernel, [argument description,
...]], ...]`` as ``numba_bn.cuda.launch_record`` describes the launches the
backend really makes. It must run with ``NUMBA_ENABLE_CUDASIM=0``; the
device query for the compute capability is answered with sm_90's, so no
driver is needed. Prints ``checked N`` and exits 0 when all lower, 1
otherwise. (``python -m numba_bn cuda-report`` goes on to PTX and ptxas.)

    python tests/cuda_lowering_check.py SIGNATURES.json
"""

import importlib
import json
import os
import sys
import traceback

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0":
    sys.exit("run with NUMBA_ENABLE_CUDASIM=0")

from numba import types  # noqa: E402
from numba.cuda.compiler import compile_cuda  # noqa: E402

from numba_bn.cuda.ptx_resources import compute_capability_without_a_device, numba_type  # noqa: E402

COMPUTE_CAPABILITY = (9, 0)


def main(path):
    with open(path) as file:
        entries = json.load(file)
    failures = 0
    with compute_capability_without_a_device(COMPUTE_CAPABILITY):
        for module, kernel, arguments in entries:
            function = getattr(importlib.import_module(module), kernel).py_func
            signature = tuple(numba_type(a) for a in arguments)
            try:
                compile_cuda(function, types.void, signature, cc=COMPUTE_CAPABILITY)
            except Exception:  # report every failing kernel, not just the first
                failures += 1
                print(f"FAILED {module}.{kernel}{signature}\n{traceback.format_exc()}", file=sys.stderr)
    print(f"checked {len(entries)}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
