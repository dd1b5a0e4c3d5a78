"""BatchNorm on the GPU with CuPy arrays and numba_bn's ``device="cuda"`` modules.

``nbn.BatchNorm2d(C, device="cuda")`` keeps its parameters and buffers on the
GPU and accepts anything with ``__cuda_array_interface__`` (CuPy arrays,
PyTorch CUDA tensors, numba device arrays) without a copy. It returns
``numba.cuda`` device arrays; ``cupy.asarray(y)`` wraps one as a CuPy array,
again without a copy. The example checks the GPU results against the CPU
modules on the same data.

Needs an NVIDIA GPU and CuPy (``pip install cupy-cuda12x``); anywhere else it
explains what is missing and exits without doing anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Sequence

import numpy as np

import numba_bn as nbn


def missing_requirement() -> str | None:
    """Why this example cannot run here, or None when it can."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install cupy-cuda12x, for CUDA 12)"
    from numba import cuda

    try:
        available = cuda.is_available()
    except Exception as error:  # a broken driver reports here
        return f"numba.cuda cannot use the GPU: {error}"
    if not available:
        return "no CUDA GPU is available (numba.cuda.is_available() is False)"
    return None


def run(shape: Sequence[int] = (32, 64, 28, 28), steps: int = 3) -> float:
    """Train-mode steps and an eval forward on the GPU; returns the largest difference from the CPU."""
    import cupy

    rng = np.random.default_rng(0)
    channels = shape[1]
    gpu = nbn.BatchNorm2d(channels, device="cuda")
    cpu = nbn.BatchNorm2d(channels)
    worst = 0.0
    for _ in range(steps):
        host = rng.standard_normal(shape, dtype=np.float32) * 3 + 1
        x = cupy.asarray(host)                       # a CuPy array, read in place by numba_bn
        y = gpu(x)                                   # a numba.cuda device array
        y_cupy = cupy.asarray(y)                     # the same memory, as a CuPy array
        grad = gpu.backward(cupy.ones_like(y_cupy))  # gradients stay on the GPU too
        worst = max(worst, float(np.abs(y_cupy.get() - cpu(host)).max()))
        cpu_grad = cpu.backward(np.ones(shape, np.float32))
        worst = max(worst, float(np.abs(cupy.asarray(grad).get() - cpu_grad).max()))
    gpu.eval(), cpu.eval()
    host = rng.standard_normal(shape, dtype=np.float32)
    worst = max(worst, float(np.abs(cupy.asarray(gpu(cupy.asarray(host))).get() - cpu(host)).max()))
    running_mean = gpu.running_mean.copy_to_host()
    worst = max(worst, float(np.abs(running_mean - cpu.running_mean).max()))
    print(f"{gpu}: {steps} training steps and one eval forward on {tuple(shape)} float32 CuPy arrays")
    print(f"largest difference from the CPU modules: {worst:.2e}")
    return worst


def build_parser() -> argparse.ArgumentParser:
    """The example's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example where possible; returns the exit status (0 also when skipped)."""
    args = build_parser().parse_args(argv)
    reason = missing_requirement()
    if reason is not None:
        print(f"gpu_cupy.py needs an NVIDIA GPU and CuPy: {reason}. Nothing to do here.")
        return 0
    worst = run(steps=args.steps)
    if worst > 1e-3:
        print(f"the GPU results differ from the CPU's by {worst:.2e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
