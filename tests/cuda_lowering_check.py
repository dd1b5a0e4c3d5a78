"""Type-check and lower every CUDA kernel for a real GPU target, without a GPU.

The CUDA simulator runs kernels as Python, so it cannot catch what only the
CUDA compiler rejects (an unsupported float16 operation, a ``None`` argument
that is indexed on a path the compiler keeps). This script runs numba-cuda's
front end (typing and lowering to LLVM IR, no PTX) on each kernel with the
argument types that ``cuda_backend`` and ``_cuda_core`` pass, for every dtype
combination. It must run with ``NUMBA_ENABLE_CUDASIM=0``; the device query
for the compute capability is answered with a fixed one, so no driver is
needed. Prints ``checked N`` and exits 0 when all lower, 1 otherwise.

With ``--ptx`` it compiles each kernel all the way to PTX instead, which
also runs NVVM: that needs libnvvm and libnvrtc (the CUDA toolkit, or the
``nvidia-cuda-nvcc-cu12`` and ``nvidia-cuda-nvrtc-cu12`` wheels on
``LD_LIBRARY_PATH``), but still no GPU.
"""

import os
import sys
import traceback

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0":
    sys.exit("run with NUMBA_ENABLE_CUDASIM=0")

import numba.cuda.dispatcher as cuda_dispatcher  # noqa: E402
from numba import types  # noqa: E402
from numba.cuda.compiler import compile_cuda  # noqa: E402

from numba_bn import cuda_kernels  # noqa: E402

COMPUTE_CAPABILITY = (8, 0)


class _AnyDevice:
    compute_capability = COMPUTE_CAPABILITY


# Device functions ask the current device for its compute capability.
cuda_dispatcher.get_current_device = _AnyDevice


def array(dtype, ndim, layout="A"):
    return types.Array(dtype, ndim, layout)


def kernel_signatures():
    f16, f32, f64, i64, none, flag = (
        types.float16, types.float32, types.float64, types.int64, types.none, types.boolean,
    )
    parts = array(f64, 2, "C")
    vector = lambda dtype: array(dtype, 1)  # noqa: E731
    for data in (f16, f32, f64):
        compute = f64 if data == f64 else f32
        x, c = array(data, 5), vector(compute)
        yield "channel_stats_runs", (x, parts, parts, parts, flag, i64)
        yield "channel_stats_rows", (x, parts, parts, parts, flag)
        yield "normalize_runs", (x, x, c, c, c, i64)
        yield "normalize_rows", (x, x, c, c, c)
        yield "grad_sums_runs", (x, x, vector(f64), parts, parts, flag, i64)
        yield "grad_sums_rows", (x, x, vector(f64), parts, parts, flag)
        yield "grad_input_runs", (x, x, x, c, c, c, c, i64)
        yield "grad_input_rows", (x, x, x, c, c, c, c)
        yield "copy_5d", (x, x)
    d = vector(f64)
    for parameter in (f32, f64):
        p = vector(parameter)
        for compute in (f32, f64):
            c = vector(compute)
            # forward_coefficients(mean, var, m2, count, eps, weight, bias, invstd, shift, scale, offset,
            #                      mean_out, weight_out): batch statistics, then running buffers
            yield "forward_coefficients", (d, none, d, f64, f64, p, p, d, c, c, c, none, d)
            yield "forward_coefficients", (d, none, d, f64, f64, none, none, d, c, c, c, none, none)
            yield "forward_coefficients", (p, p, none, f64, f64, p, none, d, c, c, c, d, d)
            yield "forward_coefficients", (p, p, none, f64, f64, none, none, d, c, c, c, d, none)
            # backward_coefficients(part_dy, part_dy_xmu, mean, invstd, weight, count, grad_weight,
            #                       grad_bias, shift, k_dy, k_x, k_const): train with and without
            # affine, eval with affine, eval without
            yield "backward_coefficients", (parts, parts, d, d, d, f64, p, p, c, c, c, c)
            yield "backward_coefficients", (parts, parts, d, d, none, f64, p, p, c, c, c, c)
            yield "backward_coefficients", (parts, parts, d, d, d, f64, p, p, none, c, none, none)
            yield "backward_coefficients", (none, none, d, d, none, f64, none, none, none, c, none, none)
            yield "biased_variance", (d, d, f64, c, c)
        yield "update_running", (p, p, d, d, f64, f64)
    yield "merge_stat_parts", (parts, parts, parts, d, d)


def main(ptx=False):
    from numba.cuda import compile_ptx

    failures = 0
    checked = 0
    for name, signature in kernel_signatures():
        checked += 1
        function = getattr(cuda_kernels, name).py_func
        try:
            if ptx:
                compile_ptx(function, signature, cc=COMPUTE_CAPABILITY)
            else:
                compile_cuda(function, types.void, signature, cc=COMPUTE_CAPABILITY)
        except Exception:  # report every failing kernel, not just the first
            failures += 1
            print(f"FAILED {name}{signature}\n{traceback.format_exc()}", file=sys.stderr)
    print(f"checked {checked}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(ptx="--ptx" in sys.argv[1:]))
