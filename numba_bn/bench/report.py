"""Results of a benchmark run as ratios: tables for the terminal and the README, JSON, a plot.

The figures compared are *speedups* (a peer's time divided by numba_bn's:
above 1 means numba_bn is faster), the speedup over the *best peer* (the
fastest of the peers measured on the same case in the same run: PyTorch, JAX,
NumPy; never the roofline) and the *fraction of the copy roofline*:
numba_bn's memory bandwidth over a parallel copy's, counting for numba_bn the
least memory traffic of its operation. A copy reads and writes the array
once; the least traffic of each operation, in copies, is in
:data:`MIN_COPIES`, so the fraction is the copy's time over numba_bn's times
``MIN_COPIES[operation]`` (100% = numba_bn moves data as fast as a copy).

The time compared is the median of interleaved samples for the command
line's runs, and pytest-benchmark's minimum for ``benchmarks/`` (which times
each implementation on its own, not interleaved). A comparison whose spread
is too wide to call (:meth:`CaseResult.too_wide_to_call`) is marked with
:data:`UNCERTAIN_MARK` in the terminal table.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .cases import ALL_OPERATIONS, OPERATIONS, Case
from .implementations import OURS, ROOFLINE
from .timing import Timing, quartiles

#: Least memory traffic of each operation, in input-sized arrays read or written:
#: eval forward reads x and writes y; train forward also reads x once for the
#: statistics; backward reads x and dy for the sums, then x and dy and writes dx.
#: The fused ``relu(bn(x) + z)`` adds z: its eval forward reads x and z and writes
#: y; its train forward reads x for the statistics, then x and z, and writes y;
#: its backward reads x and dy for the sums, then x and dy, and writes dx and
#: dz (the gradient of the residual). Not counted: the ReLU's mask from forward
#: to backward (1 bit per value, 1/32 of a float32 array each way), which could
#: be recomputed from x and z instead, and O(C) vectors.
MIN_ARRAYS: Mapping[str, int] = {
    "eval_forward": 2, "train_forward": 3, "train_backward": 5,
    "train_forward_add_relu": 4, "train_backward_add_relu": 6, "eval_out_add_relu": 3, "eval_out": 2,
}
#: The same traffic in copies of the input (a copy reads one array and writes one): the
#: copy roofline's time scaled by this is the time of the operation's bytes at copy speed.
MIN_COPIES: Mapping[str, float] = {operation: arrays / 2 for operation, arrays in MIN_ARRAYS.items()}

PEER_LABELS: Mapping[str, str] = {"torch": "PyTorch", "jax": "JAX", "numpy": "NumPy"}

#: A comparison is too wide to call when either side's interquartile range
#: exceeds this fraction of its median (a spread beyond ±10%), or when the
#: interquartile range of the speedup spans 1.0 (see CaseResult.too_wide_to_call).
MAX_RELATIVE_IQR = 0.20
#: What starts a ratio of the terminal table that is too wide to call.
UNCERTAIN_MARK = "~"

#: The statistics a :class:`CaseResult` can compare.
STATISTICS: tuple[str, ...] = ("median", "best")


@dataclass(frozen=True)
class CaseResult:
    """The timings of every implementation of one case on one device.

    ``statistic`` is the figure of each :class:`~numba_bn.bench.timing.Timing`
    that times and ratios use: ``"median"`` (the command line's interleaved
    samples) or ``"best"`` (pytest-benchmark's minimum).
    """

    case: Case
    device: str = "cpu"
    timings: Mapping[str, Timing] = field(default_factory=dict)
    statistic: str = "median"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"expected statistic in {list(STATISTICS)}, got {self.statistic!r}")

    def best(self, implementation: str) -> float | None:
        """Best seconds per call of ``implementation`` (None when it did not run)."""
        timing = self.timings.get(implementation)
        return None if timing is None else timing.best

    def time(self, implementation: str) -> float | None:
        """Seconds per call of ``implementation`` that ratios use: its median or best (None when it did not run)."""
        timing = self.timings.get(implementation)
        return None if timing is None else getattr(timing, self.statistic)

    def speedup(self, peer: str) -> float | None:
        """``peer``'s time over numba_bn's (None when either is missing)."""
        ours, theirs = self.time(OURS), self.time(peer)
        return None if ours is None or theirs is None else theirs / ours

    def peers(self) -> list[str]:
        """The implementations measured on this case other than numba_bn and the roofline, in table order."""
        return [name for name in self.timings if name not in (OURS, ROOFLINE)]

    def best_peer(self) -> str | None:
        """The fastest peer of this case, by the time ratios use (:meth:`time`); None when no peer ran.

        Of two peers equally fast, the first in table order.
        """
        peers = self.peers()
        return min(peers, key=self.time) if peers else None

    def best_peer_speedup(self) -> float | None:
        """The fastest peer's time over numba_bn's (None when no peer ran or numba_bn did not)."""
        best = self.best_peer()
        return None if best is None else self.speedup(best)

    def speedup_range(self, peer: str) -> tuple[float, float] | None:
        """The interquartile range of the speedup over ``peer``: ``(low, high)``.

        With samples taken in the same rounds (interleaved), the quartiles of
        the per-round ratios ``peer sample / numba_bn sample``: a slow drift
        of the machine's speed cancels out of each. Otherwise the widest
        range the two sides' quartiles allow. None when unknown.
        """
        ours, theirs = self.timings.get(OURS), self.timings.get(peer)
        if ours is None or theirs is None:
            return None
        if len(ours.samples) == len(theirs.samples) >= 2 and min(ours.samples) > 0:
            ratios = [their / our for their, our in zip(theirs.samples, ours.samples)]
            low, _, high = quartiles(ratios)
            return low, high
        if None in (ours.q1, ours.q3, theirs.q1, theirs.q3) or min(ours.q1, ours.q3) <= 0:
            return None
        return theirs.q1 / ours.q3, theirs.q3 / ours.q1

    def too_wide_to_call(self, name: str) -> bool:
        """Whether the comparison of numba_bn with ``name`` (a peer or the roofline) is too noisy to read.

        True when numba_bn's or ``name``'s interquartile range exceeds
        :data:`MAX_RELATIVE_IQR` of its median, or, for a peer, when the
        speedup's interquartile range (:meth:`speedup_range`) spans 1.0,
        so which one is faster is not settled.
        """
        for implementation in (OURS, name):
            timing = self.timings.get(implementation)
            spread = None if timing is None else timing.relative_iqr
            if spread is not None and spread > MAX_RELATIVE_IQR:
                return True
        if name == ROOFLINE:
            return False
        interval = self.speedup_range(name)
        return interval is not None and interval[0] < 1.0 < interval[1]

    def roofline_fraction(self) -> float | None:
        """numba_bn's memory bandwidth as a fraction of the copy's.

        The copy's time over numba_bn's, times the operation's least
        traffic in copies (:data:`MIN_COPIES`): 1 means numba_bn moves its
        least traffic as fast as the copy moves its own.
        """
        ratio = self.speedup(ROOFLINE)
        return None if ratio is None else ratio * MIN_COPIES[self.case.operation]

    def as_dict(self) -> dict[str, Any]:
        """The case, its timings, speedups (with their ranges) and roofline fraction, for JSON."""
        case = self.case
        peers = self.peers()
        compared = peers + ([ROOFLINE] if ROOFLINE in self.timings else [])
        ranges = {peer: self.speedup_range(peer) for peer in peers}
        return {
            "operation": case.operation, "shape": list(case.shape), "layout": case.layout,
            "dtype": case.dtype, "device": self.device, "bytes": case.nbytes,
            "statistic": self.statistic,
            "timings": {name: timing.as_dict() for name, timing in self.timings.items()},
            "speedups": {peer: self.speedup(peer) for peer in peers},
            "best_peer": self.best_peer(), "best_peer_speedup": self.best_peer_speedup(),
            "speedup_ranges": {peer: None if r is None else list(r) for peer, r in ranges.items()},
            "too_wide_to_call": {name: self.too_wide_to_call(name) for name in compared
                                 if OURS in self.timings},
            "roofline_fraction": self.roofline_fraction(),
        }


def peers_in(results: Iterable[CaseResult]) -> list[str]:
    """Implementations other than numba_bn and the roofline that appear in ``results``, in table order."""
    seen: dict[str, None] = {}
    for result in results:
        for name in result.peers():
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


def format_spread(timing: Timing | None) -> str:
    """Half the interquartile range over the median, as ``±4%``; empty when unknown."""
    spread = None if timing is None else timing.relative_iqr
    return "" if spread is None else f"±{50 * spread:.0f}%"


def _timed_cell(result: CaseResult, name: str) -> str:
    text = format_seconds(result.time(name))
    spread = format_spread(result.timings.get(name))
    return f"{text} {spread}" if spread else text


def _marked(text: str, uncertain: bool) -> str:
    return UNCERTAIN_MARK + text if uncertain and text != "-" else text


def best_peer_cell(result: CaseResult, label: Callable[[str], str] = str) -> str:
    """The speedup over the fastest peer and that peer's name, as ``1.25x torch``; ``-`` when no peer ran.

    ``label`` gives the name shown for an implementation's name (the
    README's tables show :data:`PEER_LABELS`).
    """
    best = result.best_peer()
    ratio = result.best_peer_speedup()
    return "-" if best is None or ratio is None else f"{format_ratio(ratio)} {label(best)}"


def _readme_label(name: str) -> str:
    return PEER_LABELS.get(name, name)


def _rows(results: Sequence[CaseResult], peers: Sequence[str], with_times: bool) -> list[list[str]]:
    rows = []
    for result in results:
        case = result.case
        row = [case.operation, case.shape_text, case.layout.replace("channels_", "ch-")]
        if with_times:
            row += [_timed_cell(result, name) for name in (OURS, *peers, ROOFLINE)]
            row += [_marked(format_ratio(result.speedup(peer)), result.too_wide_to_call(peer)) for peer in peers]
            best = result.best_peer()
            row.append(_marked(best_peer_cell(result), best is not None and result.too_wide_to_call(best)))
            row.append(_marked(format_percent(result.roofline_fraction()), result.too_wide_to_call(ROOFLINE)))
        else:
            row += [format_ratio(result.speedup(peer)) for peer in peers]
            row.append(best_peer_cell(result, _readme_label))
            row.append(format_percent(result.roofline_fraction()))
        rows.append(row)
    return rows


def any_too_wide_to_call(results: Iterable[CaseResult]) -> bool:
    """Whether some comparison in ``results`` is marked :data:`UNCERTAIN_MARK` in the terminal table."""
    return any(result.too_wide_to_call(name) for result in results for name in result.timings if name != OURS)


def format_text_table(results: Sequence[CaseResult]) -> str:
    """A fixed-width table for the terminal: times with their spread, speedups and % of the copy roofline.

    Times are each implementation's median (or best, see
    :attr:`CaseResult.statistic`) with ``±`` half its interquartile range
    as a percentage of it; ratios too noisy to call start with
    :data:`UNCERTAIN_MARK` (see :meth:`CaseResult.too_wide_to_call`).

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
    header += [f"vs {name}" for name in peers] + ["vs best peer", "% copy"]
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
    """The README's table: numba_bn's time, speedups over each peer and over the best one, % of the copy roofline.

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
    header += [f"vs {_readme_label(name)}" for name in peers] + ["vs best peer", "% of copy"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for result, row in zip(results, _rows(results, peers, with_times=False)):
        row = row[:3] + [format_seconds(result.time(OURS))] + row[3:]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def traffic_text(operations: Iterable[str] = ()) -> str:
    """The least traffic of each operation in copies, as ``eval forward 1, train forward 1.5, ...``.

    Parameters
    ----------
    operations : iterable of str
        The operations to name, in :data:`MIN_COPIES` order; none (the
        default) names the plain three of :data:`~.cases.OPERATIONS`.

    Returns
    -------
    str
    """
    named = set(operations) or set(OPERATIONS)
    return ", ".join(f"{name.replace('_', ' ')} {copies:g}" for name, copies in MIN_COPIES.items() if name in named)


def table_notes(results: Sequence[CaseResult], missing: Sequence[str] = ()) -> list[str]:
    """The lines printed under the terminal table: how to read it, and what is missing.

    Parameters
    ----------
    results : sequence of CaseResult
    missing : sequence of str
        Why each implementation left out could not run, and how to get it
        (see :meth:`~numba_bn.bench.implementations.Implementation.unavailable_reason`);
        one ``note:`` line each.

    Returns
    -------
    list of str
        One line per note.
    """
    statistic = results[0].statistic if results else "median"
    traffic = traffic_text(result.case.operation for result in results)
    lines = [(
        f"Times: {statistic} seconds per call over samples taken in turn with the other implementations', "
        "± half their interquartile range as % of the median. "
        "vs X: X's time / numba_bn's time (above 1: numba_bn is faster). "
        "vs best peer: the same for the fastest peer on that row (of those timed in this run; "
        "never the copy), which it names."
    )]
    if any_too_wide_to_call(results):
        lines.append(
            f"{UNCERTAIN_MARK}: spread too wide to call (a time beyond ±{50 * MAX_RELATIVE_IQR:.0f}%, i.e. an "
            f"interquartile range over {100 * MAX_RELATIVE_IQR:.0f}% of its median, or a speedup whose "
            "interquartile range spans 1.00x): rerun, or raise --budget."
        )
    lines.append(
        "% copy: numba_bn's effective bandwidth (the least memory traffic its operation needs, in copies of "
        f"the input: {traffic}; over its time) as a share of a parallel copy's of the input's size. "
        "Above 100% happens when the arrays are small enough to stay in the CPU cache, where a copy is not "
        "the limit: read it only for large arrays."
    )
    lines += [f"note: {reason}" for reason in missing]
    return lines


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
        ``numpy``, ``numba``, ``numba_bn``, ``torch`` and ``jax`` (None when
        missing) and ``threading_layer`` (None before any parallel kernel ran).
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
        "jax": _installed_version("jax"),
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


def _installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, read from its metadata (the package is not imported)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def footnote(machine: Mapping[str, Any], command: str, peers: Iterable[str] = ()) -> str:
    """One paragraph naming the machine, threads, versions and the exact command.

    Parameters
    ----------
    machine : mapping
        As returned by :func:`machine_info`.
    command : str
        The command line that produced the figures.
    peers : iterable of str
        The peers in the table (see :func:`peers_in`): JAX's version is named
        when it is one of them, with the thread pool it uses.

    Returns
    -------
    str
    """
    torch = machine.get("torch")
    versions = (
        f"Python {machine['python']}, NumPy {machine['numpy']}, Numba {machine['numba']}"
        + (f", PyTorch {torch}" if torch else ", PyTorch not installed")
    )
    threads = f"{machine['threads']} threads for every implementation"
    if "jax" in set(peers) and machine.get("jax"):
        versions += f", JAX {machine['jax']}"
        # XLA sizes its CPU thread pool when it starts; neither --threads nor NUMBA_NUM_THREADS reaches it.
        threads = f"{machine['threads']} threads for every implementation but JAX (XLA's own pool, every core)"
    return (
        f"Measured on {machine['cpu']} ({machine['logical_cpus']} logical CPUs), "
        f"{threads}; {versions}. "
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
    the time of each implementation is pytest-benchmark's ``min``
    (``statistic="best"``: each implementation was timed on its own, not
    interleaved, and the minimum is the figure least moved by what else ran
    at the time). Cases keep the order in which the file lists them.

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
        if info["operation"] not in ALL_OPERATIONS:
            continue
        key = (info["operation"], tuple(info["shape"]), info["layout"], info["dtype"], device)
        stats = entry["stats"]
        grouped.setdefault(key, {})[info["implementation"]] = Timing(
            best=stats["min"], median=stats["median"], repeats=stats["rounds"],
            q1=stats.get("q1"), q3=stats.get("q3"),
        )
    results = []
    for (operation, shape, layout, dtype, device), timings in grouped.items():
        results.append(CaseResult(Case(operation, shape, layout, dtype), device, timings, statistic="best"))
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
