"""Results of a benchmark run as ratios: tables for the terminal and the README, JSON, a plot.

The figures compared are *speedups* (a peer's best time divided by
numba_bn's: above 1 means numba_bn is faster) and the *fraction of the copy
roofline*: numba_bn's memory bandwidth over a parallel copy's, counting for
numba_bn the least memory traffic of its operation. A copy reads and writes
the array once; the least traffic of each operation, in copies, is in
:data:`MIN_COPIES`, so the fraction is the copy's best time over numba_bn's
times ``MIN_COPIES[operation]`` (100% = numba_bn moves data as fast as a copy).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .cases import OPERATIONS, Case
from .implementations import OURS, ROOFLINE
from .timing import Timing

#: Least memory traffic of each operation, as copies of the input (read + write = 1 copy):
#: eval forward reads x and writes y; train forward also reads x once for the
#: statistics; backward reads x and dy for the sums, then x and dy and writes dx.
MIN_COPIES: Mapping[str, float] = {"eval_forward": 1.0, "train_forward": 1.5, "train_backward": 2.5}

PEER_LABELS: Mapping[str, str] = {"torch": "PyTorch", "numpy": "NumPy"}


@dataclass(frozen=True)
class CaseResult:
    """The timings of every implementation of one case on one device."""

    case: Case
    device: str = "cpu"
    timings: Mapping[str, Timing] = field(default_factory=dict)

    def best(self, implementation: str) -> float | None:
        """Best seconds per call of ``implementation`` (None when it did not run)."""
        timing = self.timings.get(implementation)
        return None if timing is None else timing.best

    def speedup(self, peer: str) -> float | None:
        """``peer``'s best time over numba_bn's (None when either is missing)."""
        ours, theirs = self.best(OURS), self.best(peer)
        return None if ours is None or theirs is None else theirs / ours

    def roofline_fraction(self) -> float | None:
        """numba_bn's memory bandwidth as a fraction of the copy's.

        The copy's best time over numba_bn's, times the operation's least
        traffic in copies (:data:`MIN_COPIES`): 1 means numba_bn moves its
        least traffic as fast as the copy moves its own.
        """
        ratio = self.speedup(ROOFLINE)
        return None if ratio is None else ratio * MIN_COPIES[self.case.operation]

    def as_dict(self) -> dict[str, Any]:
        """The case, its timings, speedups and roofline fraction, for JSON."""
        case = self.case
        return {
            "operation": case.operation, "shape": list(case.shape), "layout": case.layout,
            "dtype": case.dtype, "device": self.device, "bytes": case.nbytes,
            "timings": {name: timing.as_dict() for name, timing in self.timings.items()},
            "speedups": {peer: self.speedup(peer) for peer in self.timings if peer not in (OURS, ROOFLINE)},
            "roofline_fraction": self.roofline_fraction(),
        }


def peers_in(results: Iterable[CaseResult]) -> list[str]:
    """Implementations other than numba_bn and the roofline that appear in ``results``, in table order."""
    seen: dict[str, None] = {}
    for result in results:
        for name in result.timings:
            if name not in (OURS, ROOFLINE):
                seen[name] = None
    return list(seen)


def format_seconds(seconds: float | None) -> str:
    """``0.00123`` as ``1.23 ms``; ``-`` when missing."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(value: float | None) -> str:
    """``2.3456`` as ``2.35x``; ``-`` when missing."""
    return "-" if value is None else f"{value:.2f}x"


def format_percent(value: float | None) -> str:
    """``0.456`` as ``46%``; ``-`` when missing."""
    return "-" if value is None else f"{100 * value:.0f}%"


def _rows(results: Sequence[CaseResult], peers: Sequence[str], with_times: bool) -> list[list[str]]:
    rows = []
    for result in results:
        case = result.case
        row = [case.operation, case.shape_text, case.layout.replace("channels_", "ch-")]
        if with_times:
            row += [format_seconds(result.best(name)) for name in (OURS, *peers, ROOFLINE)]
        row += [format_ratio(result.speedup(peer)) for peer in peers]
        row.append(format_percent(result.roofline_fraction()))
        rows.append(row)
    return rows


def format_text_table(results: Sequence[CaseResult]) -> str:
    """A fixed-width table for the terminal: times, speedups and % of the copy roofline.

    Parameters
    ----------
    results : sequence of CaseResult

    Returns
    -------
    str
        A header, a rule and one line per result.
    """
    peers = peers_in(results)
    header = ["operation", "shape", "layout", OURS, *peers, ROOFLINE]
    header += [f"vs {name}" for name in peers] + ["% copy"]
    rows = [header] + _rows(results, peers, with_times=True)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) if column < 3 else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(results: Sequence[CaseResult]) -> str:
    """The README's table: numba_bn's time, speedups over each peer, % of the copy roofline.

    Parameters
    ----------
    results : sequence of CaseResult

    Returns
    -------
    str
        A Markdown table, one row per result.
    """
    peers = peers_in(results)
    header = ["operation", "shape (N, C, ...)", "layout", "numba_bn"]
    header += [f"vs {PEER_LABELS.get(name, name)}" for name in peers] + ["% of copy"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for result, row in zip(results, _rows(results, peers, with_times=False)):
        row = row[:3] + [format_seconds(result.best(OURS))] + row[3:]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU, core count, thread count and the versions that matter for the figures.

    Parameters
    ----------
    threads : int, optional
        The thread count the figures used; default Numba's current one.

    Returns
    -------
    dict
        Keys ``cpu``, ``logical_cpus``, ``threads``, ``platform``, ``python``,
        ``numpy``, ``numba``, ``numba_bn``, ``torch`` (None when missing) and
        ``threading_layer`` (None before any parallel kernel ran).
    """
    import numba
    import numpy

    import numba_bn

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads if threads is not None else numba.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "numba_bn": numba_bn.__version__,
        "torch": None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        info["threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        info["threading_layer"] = None
    return info


def footnote(machine: Mapping[str, Any], command: str) -> str:
    """One paragraph naming the machine, threads, versions and the exact command.

    Parameters
    ----------
    machine : mapping
        As returned by :func:`machine_info`.
    command : str
        The command line that produced the figures.

    Returns
    -------
    str
    """
    torch = machine.get("torch")
    versions = (
        f"Python {machine['python']}, NumPy {machine['numpy']}, Numba {machine['numba']}"
        + (f", PyTorch {torch}" if torch else ", PyTorch not installed")
    )
    return (
        f"Measured on {machine['cpu']} ({machine['logical_cpus']} logical CPUs), "
        f"{machine['threads']} threads for every implementation; {versions}. "
        f"Command: `{command}`."
    )


def to_json(results: Sequence[CaseResult], machine: Mapping[str, Any], settings: Mapping[str, Any]) -> dict:
    """Everything measured, as a JSON-ready dict."""
    return {"machine": dict(machine), "settings": dict(settings),
            "results": [result.as_dict() for result in results]}


class MissingDependencyError(ImportError):
    """An optional package needed for a requested output is not installed."""


def save_plot(results: Sequence[CaseResult], path: str, title: str = "numba_bn benchmark") -> None:
    """A bar chart of the speedups over each peer and of the % of the copy roofline.

    Parameters
    ----------
    results : sequence of CaseResult
    path : str
        Where to write the PNG.
    title : str
        The figure's title.

    Raises
    ------
    MissingDependencyError
        When matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError(
            "plotting needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'numba_bn[plot]')"
        ) from error
    import numpy as np

    peers = peers_in(results)
    labels = [f"{r.case.operation} {r.case.shape_text} {r.case.layout.replace('channels_', 'ch-')}"
              for r in results]
    positions = np.arange(len(results))
    height = 0.8 / max(1, len(peers))
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.35 * len(results) + 1.5), sharey=True, constrained_layout=True
    )
    for index, peer in enumerate(peers):
        values = [r.speedup(peer) or np.nan for r in results]
        left.barh(positions + index * height, values, height, label=f"vs {PEER_LABELS.get(peer, peer)}")
    left.axvline(1.0, color="black", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("speedup of numba_bn (peer time / numba_bn time)")
    left.set_yticks(positions + height * (len(peers) - 1) / 2, labels, fontsize=7)
    left.invert_yaxis()
    left.legend(loc="lower right", fontsize=8)
    fractions = [100 * (r.roofline_fraction() or np.nan) for r in results]
    right.barh(positions + height * (len(peers) - 1) / 2, fractions, 0.6, color="tab:green")
    right.axvline(100.0, color="black", linewidth=0.8)
    right.set_xlabel("% of the copy bandwidth (least traffic of each operation)")
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def command_line() -> str:
    """The command that started this process, as typed (``python -m ...`` for modules)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m numba_bn"
    return " ".join(argv)


_CASE_KEYS = ("operation", "shape", "layout", "dtype", "implementation")


def results_from_pytest_benchmark(data: Mapping[str, Any], device: str = "cpu") -> list[CaseResult]:
    """The :class:`CaseResult` rows of a ``--benchmark-json`` file from ``benchmarks/``.

    Benchmarks are matched by the case described in their ``extra_info``;
    the time of each implementation is pytest-benchmark's ``min``. Cases keep
    the order in which the file lists them.

    Parameters
    ----------
    data : mapping
        The parsed JSON file.
    device : str
        Keep the benchmarks of this device (``extra_info["device"]``, "cpu"
        when absent); other benchmarks, and those that do not describe a
        case of :mod:`numba_bn.bench.cases`, are left out.

    Returns
    -------
    list of CaseResult
    """
    grouped: dict[tuple, dict[str, Timing]] = {}
    for entry in data.get("benchmarks", []):
        info = entry.get("extra_info", {})
        if not all(key in info for key in _CASE_KEYS) or info.get("device", "cpu") != device:
            continue  # start-up, another device, or not one of the cases
        if info["operation"] not in OPERATIONS:
            continue
        key = (info["operation"], tuple(info["shape"]), info["layout"], info["dtype"], device)
        stats = entry["stats"]
        grouped.setdefault(key, {})[info["implementation"]] = Timing(
            best=stats["min"], median=stats["median"], repeats=stats["rounds"]
        )
    results = []
    for (operation, shape, layout, dtype, device), timings in grouped.items():
        results.append(CaseResult(Case(operation, shape, layout, dtype), device, timings))
    return results


def startup_from_pytest_benchmark(data: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{"cold": {...}, "warm": {...}}``: the start-up benchmarks' wall time and in-process figures."""
    figures = {}
    for entry in data.get("benchmarks", []):
        info = entry.get("extra_info", {})
        if "cache" in info and "import_seconds" in info:
            figures[info["cache"]] = {
                "process_seconds": entry["stats"]["min"],
                "import_seconds": info["import_seconds"],
                "first_call_seconds": info["first_call_seconds"],
            }
    return figures
