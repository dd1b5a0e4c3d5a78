"""``python -m numba_bn cuda-report``: registers, spills, shared memory and occupancy of every kernel variant.

Without a GPU: the backend's launches are recorded in the CUDA simulator with
the kernels left unrun (``launch_record``, ``workload``): every kernel, the
argument types it is launched with, its block and its dynamic shared
memory. Each distinct kernel and signature is then compiled as a GPU would
compile it - NVVM to PTX, ``ptxas -v`` to a cubin (``ptx_resources``) - and
the theoretical occupancy follows from the registers, the shared memory and
the block (``occupancy``). The simulator switch is read once per process, so
the recording and the compilation each run in a process of their own
(``python -m numba_bn.cuda.report record|compile ...``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .occupancy import arch_limits, occupancy

#: The keys of each row, in the order the JSON output and the table use.
ROW_KEYS = (
    "kernel", "signature", "registers", "spill_stores", "spill_loads", "shared_bytes", "block", "occupancy", "arch",
)
#: Exit status of the compile step when NVVM cannot be loaded.
_TOOLCHAIN_MISSING = 3


class CudaToolchainError(RuntimeError):
    """numba-cuda, NVVM or ptxas is missing: the message names it and how to install it."""


def cuda_report(arch="sm_90", threads=None, progress=False):
    """One row (a dict with :data:`ROW_KEYS`) per kernel and signature the CUDA backend launches.

    Parameters
    ----------
    arch : str
        The GPU architecture to compile for and to compute occupancy on
        (a key of ``occupancy.ARCHITECTURES``: sm_70 to sm_90).
    threads : int, optional
        Threads per block, as ``numba_bn.config.CUDA_THREADS`` (its value by
        default, which is what the backend launches with).
    progress : bool
        Print what is being done on stderr.

    Raises
    ------
    ValueError
        An unknown ``arch``, or ``threads`` that the backend does not accept.
    CudaToolchainError
        numba-cuda, NVVM or ptxas is not installed.
    """
    from .. import config
    from .limits import check_threads
    from .ptx_resources import TOOLCHAIN_HINT, find_ptxas

    arch_limits(arch)
    threads = check_threads(config.CUDA_THREADS if threads is None else threads, "threads")
    if importlib.util.find_spec("numba_cuda") is None:
        raise CudaToolchainError(f"the CUDA report needs numba-cuda, which is not installed: {TOOLCHAIN_HINT}")
    ptxas = find_ptxas()
    if ptxas is None:
        raise CudaToolchainError(
            "the CUDA report needs ptxas, found neither in the nvidia-cuda-nvcc-cu12 wheel (nvidia.cuda_nvcc) "
            f"nor on the PATH: {TOOLCHAIN_HINT}"
        )
    with tempfile.TemporaryDirectory() as folder:
        launches_path, compiled_path = Path(folder, "launches.json"), Path(folder, "compiled.json")
        if progress:
            print("cuda-report: recording the backend's kernel launches (CUDA simulator, kernels not run)...",
                  file=sys.stderr)
        _run_step("1", ["record", str(threads), str(launches_path)])
        launches = json.loads(launches_path.read_text())
        variants = sorted({json.dumps([entry["module"], entry["kernel"], entry["arguments"]]) for entry in launches})
        if progress:
            print(f"cuda-report: compiling {len(variants)} kernel variants for {arch} with NVVM and ptxas...",
                  file=sys.stderr)
        _run_step("0", ["compile", arch, ptxas, str(launches_path), str(compiled_path)])
        compiled = json.loads(compiled_path.read_text())
    return _rows(launches, compiled, arch)


def _run_step(simulator, arguments):
    """Run a step of the report in a new process (the simulator switch set to ``simulator``)."""
    import numba_bn

    package_root = str(Path(numba_bn.__file__).resolve().parents[1])
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM=simulator, NUMBA_BN_COMPILE_NOTICE="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "numba_bn.cuda.report", *arguments], env=env, stdout=subprocess.PIPE, text=True
    )
    if result.returncode == _TOOLCHAIN_MISSING:
        raise CudaToolchainError(result.stdout.strip())
    if result.returncode != 0:
        raise RuntimeError(
            f"the CUDA report's {arguments[0]} step failed with status {result.returncode} (its error is above)"
        )


def _rows(launches, compiled, arch):
    """Rows from the recorded launches and the compiled variants, one per kernel, signature and block."""
    resources = {(c["module"], c["kernel"], json.dumps(c["arguments"])): c for c in compiled}
    rows = {}
    for entry in launches:
        variant = resources[(entry["module"], entry["kernel"], json.dumps(entry["arguments"]))]
        shared = variant["static_shared_bytes"] + entry["shared_bytes"]
        row = {
            "kernel": entry["kernel"],
            "signature": variant["signature"],
            "registers": variant["registers"],
            "spill_stores": variant["spill_stores"],
            "spill_loads": variant["spill_loads"],
            "shared_bytes": shared,
            "block": entry["threads"],
            "occupancy": occupancy(arch, entry["threads"], variant["registers"], shared),
            "arch": arch,
        }
        rows[tuple(row.values())] = row
    return sorted(rows.values(), key=lambda row: (row["kernel"], row["signature"], row["block"], row["shared_bytes"]))


def format_table(rows):
    """The rows as a text table, with a summary of the targets (no spills, occupancy >= 50%)."""
    headers = ("kernel", "regs", "spill st", "spill ld", "smem B", "block", "occupancy", "signature")
    lines = [
        (row["kernel"], str(row["registers"]), str(row["spill_stores"]), str(row["spill_loads"]),
         str(row["shared_bytes"]), str(row["block"]), f"{row['occupancy']:.1%}", row["signature"])
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [headers, *lines]) for i in range(len(headers) - 1)]

    def line(cells):
        numbers = [cells[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(cells[1:-1], widths[1:])]
        return "  ".join(numbers + [cells[-1]])

    text = [line(headers), line(tuple("-" * w for w in widths) + ("-" * 9,))] + [line(cells) for cells in lines]
    if rows:
        spilling = sorted({row["kernel"] for row in rows if row["spill_stores"] or row["spill_loads"]})
        lowest = min(rows, key=lambda row: row["occupancy"])
        below = sorted({row["kernel"] for row in rows if row["occupancy"] < 0.5})
        text += [
            "",
            f"{len(rows)} kernel variants for {rows[0]['arch']}; spills: {', '.join(spilling) or 'none'}; "
            f"lowest occupancy {lowest['occupancy']:.1%} ({lowest['kernel']}); "
            f"below 50%: {', '.join(below) or 'none'}",
            "Theoretical occupancy from ptxas's registers and the launch's block and shared memory "
            "(static + dynamic); compiled without a GPU, nothing timed.",
        ]
    return "\n".join(text)


# ----------------------------------------------------------- the steps


def _record(threads, path):
    """Record the backend's launches with kernels unrun; write ``[{module, kernel, arguments, threads,
    shared_bytes}, ...]`` (distinct entries) to ``path``. Runs in the CUDA simulator."""
    import numpy as np

    from .. import config
    from .launch_record import recording
    from .workload import exercise_backend

    config.CUDA_THREADS = threads
    with recording(run=False) as records:
        exercise_backend(np.random.default_rng(0))
    entries = {
        (r.module, r.kernel, json.dumps(r.arguments), r.threads, r.shared_bytes): {
            "module": r.module, "kernel": r.kernel, "arguments": r.arguments, "threads": r.threads,
            "shared_bytes": r.shared_bytes,
        }
        for r in records
    }
    Path(path).write_text(json.dumps(list(entries.values())))
    return 0


def _compile(arch, ptxas, launches_path, out_path):
    """Compile each distinct kernel and signature of the recorded launches for ``arch``; write their
    resources to ``out_path``. Runs without the simulator."""
    from .ptx_resources import TOOLCHAIN_HINT, assemble, kernel_ptx, toolchain_missing

    variants = {}
    for entry in json.loads(Path(launches_path).read_text()):
        variants.setdefault(json.dumps([entry["module"], entry["kernel"], entry["arguments"]]), entry)
    compiled = []
    for entry in variants.values():
        try:
            ptx, signature, max_registers = kernel_ptx(entry["module"], entry["kernel"], entry["arguments"], arch)
        except Exception as error:
            if toolchain_missing(error):
                print(f"the CUDA report needs NVVM, which could not be loaded ({error}): {TOOLCHAIN_HINT}")
                return _TOOLCHAIN_MISSING
            raise
        resources = assemble(ptx, ptxas, arch, max_registers)
        compiled.append(
            {"module": entry["module"], "kernel": entry["kernel"], "arguments": entry["arguments"],
             "signature": signature, **resources._asdict()}
        )
    Path(out_path).write_text(json.dumps(compiled))
    return 0


def _main(arguments):
    step, *rest = arguments
    if step == "record":
        return _record(int(rest[0]), rest[1])
    if step == "compile":
        return _compile(*rest)
    raise ValueError(f"expected the step 'record' or 'compile', got {step!r}")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
