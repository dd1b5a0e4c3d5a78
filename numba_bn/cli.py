"""``python -m numba_bn`` / ``numba-bn``: benchmark numba_bn against its peers, show the setup.

Sub-commands:

``bench`` (the default)
    Time numba_bn, PyTorch and JAX (each when installed), plain NumPy and a
    copy of the same size (the memory-bandwidth roofline) on a set of
    shapes, their samples interleaved, and print a table of median times
    with their spread, speedups (over each peer and over the fastest) and %
    of the roofline.
``info``
    Versions, threading layer and thread count, CUDA availability, cache dir.
``startup``
    Time ``import numba_bn`` plus the first calls in a fresh process, with a
    cold and with a warm kernel cache.
``precompile``
    Compile the CPU kernels into the on-disk cache ahead of their first use.
``bench-dask``
    Time ``numba_bn.dask.channel_stats`` against dask.array's mean and var
    and against the in-memory kernel (needs the ``dask`` extra).
``bench-sync``
    Time a SyncBatchNorm training step against the same step without
    communication, under ``mpiexec`` (needs the ``mpi`` extra).
``cuda-report``
    Compile every CUDA kernel variant the backend launches for a GPU
    architecture, without a GPU, and show its registers, spills, shared
    memory, block and theoretical occupancy (needs the ``cuda`` extra).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from typing import Sequence

from .bench import cases as bench_cases
from .bench.implementations import (
    DEVICES,
    IMPLEMENTATIONS,
    OURS,
    ROOFLINE,
    Implementation,
    cuda_available,
    implementations,
    unavailable,
)
from .bench.progress import ProgressBar
from .bench.report import (
    MissingDependencyError,
    command_line,
    format_text_table,
    machine_info,
    save_plot,
    table_notes,
    to_json,
)
from .bench.dask_stats import DEFAULT_BATCH_CHUNK as DASK_DEFAULT_BATCH_CHUNK
from .bench.dask_stats import DEFAULT_SHAPE as DASK_DEFAULT_SHAPE
from .bench.timing import MIN_REPEATS, max_threads
from ._precompile import DTYPES as PRECOMPILE_DTYPES
from ._precompile import LAYOUTS as PRECOMPILE_LAYOUTS
from ._precompile import RANKS as PRECOMPILE_RANKS

COMMANDS = ("bench", "info", "startup", "precompile", "bench-dask", "bench-sync", "cuda-report")
LAYOUT_CHOICES = ("both",) + bench_cases.LAYOUTS
#: Seconds of samples per implementation and case: default, and with --quick.
BUDGET, QUICK_BUDGET = 0.25, 0.05
#: Seconds of samples per implementation of ``bench-dask``.
DASK_BUDGET = 1.0
#: What numba_bn is compared with on some device, in table order (``--peers``).
PEERS: tuple[str, ...] = tuple(dict.fromkeys(
    name for table in IMPLEMENTATIONS.values() for name in table if name not in (OURS, ROOFLINE)))


# ------------------------------------------------------------ argument types


def _shapes_argument(text: str) -> tuple[tuple[int, ...], ...]:
    try:
        return bench_cases.parse_shapes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _threads_argument(text: str) -> int:
    limit = max_threads()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(
            f"expected an integer between 1 and {limit} (NUMBA_NUM_THREADS), got {text!r}"
        )
    return value


def _choices_argument(allowed, convert=str):
    """A parser of comma-separated values from ``allowed``."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(value.strip()) for value in text.split(",") if value.strip())
        except ValueError:
            values = ()
        if not values or any(value not in allowed for value in values):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(map(str, allowed))}, got {text!r}"
            )
        return values

    return parse


def _positive_integers(text: str, expected: str) -> tuple[int, ...]:
    """Comma-separated integers of 1 or more, or an ArgumentTypeError saying ``expected``."""
    try:
        values = tuple(int(value) for value in text.split(",") if value.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return values


def _batch_chunk_argument(text: str) -> int:
    values = _positive_integers(text, "a positive number of batch entries")
    if len(values) > 1:
        raise argparse.ArgumentTypeError(f"expected one number of batch entries, got {text!r}")
    return values[0]


def _process_counts_argument(text: str) -> tuple[int, ...]:
    return _positive_integers(text, "comma-separated process counts of 1 or more")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 60], got {text!r}")
    return value


def _arch_argument(text: str) -> str:
    from .cuda.occupancy import arch_limits

    try:
        arch_limits(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _block_threads_argument(text: str) -> int:
    from .cuda.limits import MAX_THREADS, check_threads

    try:
        return check_threads(int(text), "--threads")
    except ValueError:  # not an integer, or not a block size the kernels are built for
        raise argparse.ArgumentTypeError(
            f"expected a power of two from 32 to {MAX_THREADS}, got {text!r}"
        ) from None


def _output_path(suffix: str | None):
    def check(text: str) -> str:
        folder = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(folder):
            raise argparse.ArgumentTypeError(f"expected a file in an existing folder, got {text!r}")
        if suffix is not None and not text.lower().endswith(suffix):
            raise argparse.ArgumentTypeError(f"expected a {suffix} file name, got {text!r}")
        return text

    return check


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (also used to check the README's command lines)."""
    parser = argparse.ArgumentParser(
        prog="python -m numba_bn",
        description=textwrap.fill(
            "Benchmark numba_bn's BatchNorm against PyTorch, JAX, NumPy and a copy roofline, "
            "or show the setup. With no command, runs 'bench', so the bench options below "
            "work on their own: python -m numba_bn --quick.", width=_help_width()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"numba_bn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    bench = commands.add_parser(
        "bench", help="time numba_bn against its peers (default)",
        description="Time numba_bn, PyTorch and JAX (each if installed), plain NumPy and a parallel copy "
                    "of the same size on each case, taking their samples in turn after a warm-up call on "
                    "the case's own arrays, then print median times with their spread, speedups "
                    "(peer time / numba_bn time) over each peer and over the fastest one, and "
                    "numba_bn's % of the copy roofline.",
    )
    bench.add_argument("--quick", action="store_true",
                       help=f"a short run: a few shapes, a short timing budget ({QUICK_BUDGET:g} s, "
                            f"at least {MIN_REPEATS} samples of each implementation)")
    bench.add_argument("--shapes", type=_shapes_argument, metavar="NxCx...[,...]",
                       help="shapes in (N, C, ...) order, e.g. 32x64x56x56,64x128 "
                            "(default: the README's set; --quick: a small subset)")
    bench.add_argument("--dtype", choices=bench_cases.DTYPES, default="float32",
                       help="data type of the input (default float32; float16 keeps float32 parameters)")
    bench.add_argument("--threads", type=_threads_argument, default=None, metavar="N",
                       help=f"threads for every implementation but JAX, whose XLA pool takes every core "
                            f"(default: all, {max_threads()})")
    bench.add_argument("--device", choices=DEVICES, default="cpu",
                       help="cpu (default) or cuda (numba_bn device='cuda' vs PyTorch CUDA, CUDA events)")
    bench.add_argument("--layout", choices=LAYOUT_CHOICES, default="both",
                       help="memory layout of 3+-dimensional shapes (default both)")
    bench.add_argument("--operations", type=_choices_argument(bench_cases.ALL_OPERATIONS),
                       default=bench_cases.OPERATIONS, metavar="OP[,OP...]",
                       help=f"subset of {','.join(bench_cases.ALL_OPERATIONS)} (default "
                            f"{','.join(bench_cases.OPERATIONS)}; the others run on the CPU: fused "
                            "BN+add+ReLU and out=)")
    bench.add_argument("--peers", type=_choices_argument(PEERS), default=None, metavar="PEER[,PEER...]",
                       help=f"the peers to time numba_bn against, a subset of {','.join(PEERS)} (default: "
                            "every one installed for the device; cuda has torch only)")
    bench.add_argument("--budget", type=_positive_seconds, default=None, metavar="SECONDS",
                       help=f"seconds of samples per implementation and case (default {BUDGET:g}; "
                            f"--quick {QUICK_BUDGET:g}); at least {MIN_REPEATS} samples are taken whatever "
                            "the budget. Raise it when rows are marked ~ (too noisy to call)")
    bench.add_argument("--json", type=_output_path(None), metavar="FILE",
                       help="also write every timing, the machine and the settings as JSON")
    bench.add_argument("--plot", type=_output_path(".png"), metavar="FILE.png",
                       help="also save a bar chart of the speedups and %% of roofline (needs matplotlib)")
    bench.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    bench.set_defaults(usage_parser=bench)
    parser.epilog = "bench options (the default command):\n" + _options_help(bench)

    commands.add_parser("info", help="versions, threads, CUDA, cache directory",
                        description="Show versions, the threading layer and thread count, "
                                    "CUDA availability and device, and the kernel cache directory.")
    commands.add_parser("startup", help="time import + first call with a cold and a warm cache",
                        description="Time 'import numba_bn' plus a first training step in fresh "
                                    "processes: once on an empty kernel cache, once on the filled one.")
    precompile = commands.add_parser(
        "precompile", help="compile the CPU kernels ahead of their first use",
        description="Compile the CPU kernels for the chosen dtypes, layouts and ranks into Numba's "
                    "on-disk cache (NUMBA_CACHE_DIR), so that first calls in later processes are fast. "
                    "Takes about a minute for everything on a 2-core machine, once.",
    )
    precompile.add_argument("--dtypes", type=_choices_argument(PRECOMPILE_DTYPES), default=PRECOMPILE_DTYPES,
                            metavar="DTYPE[,DTYPE...]",
                            help=f"subset of {','.join(PRECOMPILE_DTYPES)} (default all)")
    precompile.add_argument("--layouts", type=_choices_argument(PRECOMPILE_LAYOUTS), default=PRECOMPILE_LAYOUTS,
                            metavar="LAYOUT[,LAYOUT...]",
                            help=f"subset of {','.join(PRECOMPILE_LAYOUTS)} (default both)")
    precompile.add_argument("--ranks", type=_choices_argument(PRECOMPILE_RANKS, int), default=PRECOMPILE_RANKS,
                            metavar="RANK[,RANK...]",
                            help=f"subset of {','.join(map(str, PRECOMPILE_RANKS))} (default all)")
    precompile.add_argument("--fused", action="store_true",
                            help="also the fused BN+ReLU and BN+add+ReLU passes (activation='relu')")
    precompile.add_argument("--family", action="store_true",
                            help="also GroupNorm, InstanceNorm and LayerNorm")
    precompile.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    bench_dask = commands.add_parser(
        "bench-dask", help="time numba_bn.dask.channel_stats against dask.array (needs the dask extra)",
        description="Time numba_bn.dask.channel_stats, dask.array's mean and var computed together, and "
                    "numba_bn.channel_stats on the same array in memory, their samples taken in turn on "
                    "dask's threaded scheduler, then print median times and the ratios.",
    )
    bench_dask.add_argument("--shape", type=_shapes_argument, default=None, metavar="NxCx...",
                            help="the float32 array's shape in (N, C, ...) order (default "
                                 f"{'x'.join(map(str, DASK_DEFAULT_SHAPE))})")
    bench_dask.add_argument("--batch-chunk", type=_batch_chunk_argument, default=DASK_DEFAULT_BATCH_CHUNK,
                            metavar="N", help=f"batch entries per chunk (default {DASK_DEFAULT_BATCH_CHUNK})")
    bench_dask.add_argument("--budget", type=_positive_seconds, default=DASK_BUDGET, metavar="SECONDS",
                            help=f"seconds of samples per implementation (default {DASK_BUDGET:g}); at least "
                                 f"{MIN_REPEATS} samples are taken whatever the budget")
    bench_dask.set_defaults(usage_parser=bench_dask)
    bench_sync = commands.add_parser(
        "bench-sync", help="time SyncBatchNorm against BatchNorm without communication (needs the mpi extra)",
        description="Start mpiexec with each process count and time, in turn on every process, a training "
                    "step (forward and backward) of SyncBatchNorm, of BatchNorm on the same share without "
                    "communication, and the exchanges alone; print the slowest process's median times, "
                    "the ratio sync/local and the exchanges' share of the synchronised step.",
    )
    bench_sync.add_argument("--ranks", type=_process_counts_argument, default=(2, 4),
                            metavar="K[,K...]", help="process counts (default 2,4)")
    bench_sync.add_argument("--shape", type=_shapes_argument, default=None, metavar="NxCx...[,...]",
                            help="float32 shapes of each process's share (default 32x64x56x56,8x64x8x8)")
    bench_sync.add_argument("--threads", type=_threads_argument, default=1,
                            help="kernel threads per process (default 1)")
    bench_sync.add_argument("--json", type=_output_path(".json"), default=None, metavar="FILE",
                            help="also write the results as JSON")
    from .cuda.occupancy import ARCHITECTURES

    cuda_report = commands.add_parser(
        "cuda-report", help="registers, spills, shared memory and occupancy of every CUDA kernel (no GPU needed)",
        description="Compile every CUDA kernel variant the backend launches (each kernel for each argument "
                    "signature: dtypes, layouts, fused passes) to PTX with NVVM and to a cubin with ptxas, "
                    "without a GPU, and print one row per variant: registers per thread, spill stores and "
                    "loads, shared memory (static + the dynamic shared memory of the launch), the block the "
                    "backend launches with and the theoretical occupancy at that block on the architecture. "
                    "Needs the cuda extra (numba-cuda with NVVM and ptxas); takes about a minute.",
    )
    cuda_report.add_argument("--arch", type=_arch_argument, default="sm_90", metavar="ARCH",
                             help=f"GPU architecture: one of {', '.join(ARCHITECTURES)} (default sm_90)")
    cuda_report.add_argument("--threads", type=_block_threads_argument, default=None, metavar="N",
                             help="threads per block (default numba_bn.config.CUDA_THREADS, what the backend "
                                  "launches with)")
    cuda_report.add_argument("--json", type=_output_path(None), default=None, metavar="FILE",
                             help="also write the rows as JSON")
    return parser


def _help_width() -> int:
    """The width argparse wraps help to (the terminal's, less a margin)."""
    import shutil

    return max(40, min(100, shutil.get_terminal_size().columns - 2))


def _options_help(parser: argparse.ArgumentParser) -> str:
    """The option lines of ``parser``'s help, without its usage and description."""
    text = parser.format_help()
    heading = re.search(r"^(options|optional arguments):$", text, flags=re.MULTILINE)
    if heading is None:
        return text
    lines = text[heading.end():].strip("\n").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("-h, --help"))


def _with_default_command(argv: Sequence[str]) -> list[str]:
    """``bench`` when no command is named (``python -m numba_bn --quick``)."""
    argv = list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return ["bench"] + argv
    return argv


# ----------------------------------------------------------------- commands


def _plot_support_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is None


def _cuda_simulated() -> bool:
    import numba

    return bool(numba.config.ENABLE_CUDASIM)


def _cuda_modules_unsupported() -> str | None:
    """Why ``BatchNorm1d(..., device="cuda")`` cannot be built here, or None when it can."""
    from . import BatchNorm1d

    try:
        BatchNorm1d(2, device="cuda")
    except (ValueError, TypeError) as error:
        return str(error)
    return None


#: Under the table when JAX runs with fewer threads than the others could use.
JAX_THREADS_NOTE = (
    "jax ignores --threads: XLA sizes its CPU thread pool to every core when it starts, and offers no "
    "way to change it in a running process."
)


def select_implementations(device: str, peers: Sequence[str], dtype: str,
                           threads: int) -> tuple[list[Implementation], list[str]]:
    """What ``bench`` times, and a ``note:`` line for each wanted implementation it leaves out.

    Parameters
    ----------
    device : {"cpu", "cuda"}
    peers : sequence of str
        The peers wanted (numba_bn and the roofline always are).
    dtype : str
        The cases' dtype: an implementation that does not run it is left out.
    threads : int
        The thread count set for the others: below :func:`max_threads`, a
        note says that JAX's thread pool is not limited by it.

    Returns
    -------
    (list of Implementation, list of str)
        The implementations to time, in table order, and the notes: why
        each wanted one cannot run here (and how to change that).
    """
    def wanted(impl: Implementation) -> bool:
        return impl.name in (OURS, ROOFLINE) or impl.name in peers

    chosen = [impl for impl in implementations(device) if wanted(impl)]
    notes = [impl.unavailable_reason() or impl.name for impl in unavailable(device) if wanted(impl)]
    notes += [f"{impl.name} is left out: it runs {', '.join(impl.dtypes)} only, not {dtype}. "
              f"{impl.dtypes_hint}".rstrip() for impl in chosen if dtype not in impl.dtypes]
    chosen = [impl for impl in chosen if dtype in impl.dtypes]
    if threads < max_threads() and any(impl.name == "jax" for impl in chosen):
        notes.append(JAX_THREADS_NOTE)
    return chosen, notes


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` command; returns the exit status."""
    from .bench.runner import run_cases
    from .bench.timing import set_threads

    parser = args.usage_parser

    if args.peers is not None:
        absent = [peer for peer in args.peers if peer not in IMPLEMENTATIONS[args.device]]
        if absent:
            parser.error(f"--peers: {','.join(absent)} has no {args.device} implementation; expected a subset "
                         f"of {','.join(name for name in PEERS if name in IMPLEMENTATIONS[args.device])}")
    unsupported = [op for op in args.operations if not IMPLEMENTATIONS[args.device][OURS].supports(op)]
    if unsupported:
        parser.error(f"--operations: {','.join(unsupported)} runs on the CPU only; with --device "
                     f"{args.device} expected a subset of {','.join(bench_cases.OPERATIONS)}")
    if args.plot and _plot_support_missing():
        parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib "
                     "(or pip install 'numba_bn[plot]')")
    if args.device == "cuda" and _cuda_simulated():
        print("--device cuda times real GPUs with CUDA events; the CUDA simulator "
              "(NUMBA_ENABLE_CUDASIM=1) cannot be timed. Unset NUMBA_ENABLE_CUDASIM.", file=sys.stderr)
        return 1
    if args.device == "cuda" and not cuda_available():
        print("CUDA is not available here (numba.cuda.is_available() is False: no NVIDIA GPU or "
              "driver found), so --device cuda cannot run. Run without --device for the CPU "
              "benchmark, or see 'python -m numba_bn info'.", file=sys.stderr)
        return 1
    if args.device == "cuda":
        reason = _cuda_modules_unsupported()
        if reason is not None:
            print(f"numba_bn's modules refuse device='cuda' here: {reason}", file=sys.stderr)
            return 1

    shapes = args.shapes or (bench_cases.QUICK_SHAPES if args.quick else bench_cases.DEFAULT_SHAPES)
    layouts = bench_cases.LAYOUTS if args.layout == "both" else (args.layout,)
    cases = bench_cases.build_cases(shapes, args.operations, layouts, args.dtype)
    if not cases:
        parser.error(f"no case to run: --layout {args.layout} applies only to shapes of 3 or more "
                     "dimensions (an (N, C) batch is the same in both layouts)")
    budget = args.budget or (QUICK_BUDGET if args.quick else BUDGET)
    threads = set_threads(args.threads or max_threads())
    chosen, missing = select_implementations(args.device, args.peers or PEERS, args.dtype, threads)

    # One step per case: "compiling/warming up <case>" (its first calls, untimed), then "timing <case>".
    progress = None if args.no_progress else ProgressBar(len(cases))
    results = run_cases(cases, args.device, chosen, progress, budget=budget, min_repeats=MIN_REPEATS)
    if progress is not None:
        progress.finish()

    machine = machine_info(threads if args.device == "cpu" else None)
    print(format_text_table(results))
    print()
    for line in table_notes(results, missing):
        print(line)
    print(f"{machine['cpu']}, {threads} threads, device {args.device}, {args.dtype}; "
          + ", ".join(f"{impl.name}: {impl.description}" for impl in chosen))
    if args.json:
        import json

        settings = {"command": command_line(), "device": args.device, "dtype": args.dtype,
                    "peers": [impl.name for impl in chosen if impl.name not in (OURS, ROOFLINE)],
                    "threads": threads, "budget_seconds": budget, "min_samples": MIN_REPEATS,
                    "statistic": "median", "left_out": missing}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(to_json(results, machine, settings), handle, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            save_plot(results, args.plot, title=f"numba_bn vs peers, {machine['cpu']}, {threads} threads")
        except MissingDependencyError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0


def info_lines() -> list[str]:
    """What ``info`` prints, one ``name: value`` per line."""
    from importlib import metadata

    import numba
    import numpy as np

    from . import __version__, batch_stats

    # The threading layer is chosen on the first parallel call.
    batch_stats(np.ones((2, 2), np.float32))
    machine = machine_info()

    def version(distribution: str) -> str:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return "not installed"

    cache_dir = numba.config.CACHE_DIR or "(NUMBA_CACHE_DIR unset: __pycache__ folders beside the package sources)"
    lines = [
        f"numba_bn: {__version__} ({os.path.dirname(os.path.abspath(__file__))})",
        f"python: {machine['python']} ({sys.executable})",
        f"numpy: {machine['numpy']}",
        f"numba: {machine['numba']}",
        f"numba-cuda: {version('numba-cuda')}",
        f"torch: {machine['torch'] or 'not installed'}",
        f"jax: {machine['jax'] or 'not installed'}",
        f"cpu: {machine['cpu']} ({machine['logical_cpus']} logical CPUs)",
        f"threading layer: {machine['threading_layer']}",
        f"threads: {numba.get_num_threads()} of NUMBA_NUM_THREADS={max_threads()}",
        f"kernel cache: {cache_dir}",
    ]
    lines += _cuda_lines()
    return lines


def _cuda_lines() -> list[str]:
    if not cuda_available():
        return ["cuda: not available (no NVIDIA GPU or driver found by numba.cuda)"]
    import numba
    from .cuda.numba_cuda import cuda

    if numba.config.ENABLE_CUDASIM:
        return ["cuda: the CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run on the CPU, no timings"]
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    capability = ".".join(map(str, device.compute_capability))
    return [f"cuda: available, device {device.id}: {name} (compute capability {capability})"]


def run_info() -> int:
    """The ``info`` command; returns the exit status."""
    print("\n".join(info_lines()))
    return 0


def run_startup() -> int:
    """The ``startup`` command; returns the exit status."""
    from .bench.startup import measure_cold_and_warm

    print("timing import + first training step in fresh processes (cold cache first)...", file=sys.stderr)
    cold, warm = measure_cold_and_warm()
    for label, timing in (("cold cache", cold), ("warm cache", warm)):
        print(f"{label}: import {timing.import_seconds:.2f} s + first call {timing.first_call_seconds:.2f} s "
              f"= {timing.total:.2f} s")
    return 0


def run_precompile(args: argparse.Namespace) -> int:
    """The ``precompile`` command; returns the exit status."""
    from . import precompile

    seconds = precompile(args.dtypes, args.layouts, args.ranks, fused=args.fused, family=args.family,
                         progress=not args.no_progress)
    total = sum(seconds.values())
    print(f"compiled numba_bn's CPU kernels for {len(seconds)} dtype/layout/rank combinations in {total:.1f} s; "
          f"cached in {_cache_directory()}")
    return 0


def run_bench_dask(args: argparse.Namespace) -> int:
    """The ``bench-dask`` command; returns the exit status."""
    import importlib.util

    if importlib.util.find_spec("dask") is None:
        print("bench-dask needs dask.array, which is not installed: pip install 'numba_bn[dask]'", file=sys.stderr)
        return 1
    from .bench.dask_stats import DaskStatsCase, compare, format_result

    shapes = args.shape or (DASK_DEFAULT_SHAPE,)
    if len(shapes) != 1:
        args.usage_parser.error(f"expected one shape, got {len(shapes)}")
    case = DaskStatsCase(tuple(shapes[0]), min(args.batch_chunk, shapes[0][0]) or 1)
    print(f"timing {case.name} with {max_threads()} threads...", file=sys.stderr)
    print(format_result(compare(case, budget=args.budget)))
    return 0


def run_bench_sync(args: argparse.Namespace) -> int:
    """The ``bench-sync`` command; returns the exit status."""
    import importlib.util

    from .bench import sync

    if importlib.util.find_spec("mpi4py") is None or sync.mpiexec() is None:
        print("bench-sync needs mpi4py and mpiexec: pip install 'numba_bn[mpi]'", file=sys.stderr)
        return 1
    rows = []
    for ranks in args.ranks:
        for shape in args.shape or sync.DEFAULT_SHAPES:
            print(f"timing {ranks} processes of {'x'.join(map(str, shape))} each...", file=sys.stderr)
            rows.append(sync.run(ranks, shape, threads=args.threads))
    print(sync.table(rows))
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine_info(args.threads), "results": rows}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def run_cuda_report(args: argparse.Namespace) -> int:
    """The ``cuda-report`` command; returns the exit status."""
    import json

    from .cuda.report import CudaToolchainError, cuda_report, format_table

    try:
        rows = cuda_report(args.arch, args.threads, progress=True)
    except CudaToolchainError as error:
        print(error, file=sys.stderr)
        return 1
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
            handle.write("\n")
        print(f"wrote {args.json}")
    return 0


def _cache_directory() -> str:
    import numba

    return numba.config.CACHE_DIR or "__pycache__ folders next to numba_bn's modules"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m numba_bn`` and ``numba-bn``.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; default ``sys.argv[1:]``. With
        no command, ``bench`` is run.

    Returns
    -------
    int
        The exit status: 0 on success, 1 when the run cannot proceed (no CUDA
        for ``--device cuda``, no CUDA compiler for ``cuda-report``), 130 when
        interrupted. Bad arguments exit with status 2 and the usage, through
        argparse.
    """
    parser = build_parser()
    args = parser.parse_args(_with_default_command(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "info":
            return run_info()
        if args.command == "startup":
            return run_startup()
        if args.command == "precompile":
            return run_precompile(args)
        if args.command == "bench-dask":
            return run_bench_dask(args)
        if args.command == "bench-sync":
            return run_bench_sync(args)
        if args.command == "cuda-report":
            return run_cuda_report(args)
        return run_bench(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
