"""Turn a pytest-benchmark JSON file from ``benchmarks/`` into the README's tables.

Usage::

    python -m pytest benchmarks --benchmark-enable --benchmark-json=bench.json
    python scripts/bench_table.py bench.json                  # print Markdown
    python scripts/bench_table.py bench.json --readme README.md   # replace the README's table
    python scripts/bench_table.py bench.json --plot bench.png     # also a chart (needs matplotlib)

With ``--readme`` the text between the ``<!-- bench-table:start -->`` and
``<!-- bench-table:end -->`` markers is replaced.

Each peer in the file gets a ratio column (JAX's only where the file has JAX
rows), and every table a *vs best peer* column: the ratio over the fastest
peer of the row, named.

Given several JSON files (runs of the same benchmarks), each row is taken
whole from the run whose numba_bn-vs-PyTorch ratio is the median of the runs
(the median numba_bn time where PyTorch is absent), so a row's figures all
come from one run and its headline ratio is the median; ``--merged FILE``
saves that combination as one JSON file, which gives the same tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from numba_bn.bench.cases import OPERATIONS
from numba_bn.bench.report import (
    footnote,
    format_seconds,
    MissingDependencyError,
    markdown_table,
    peers_in,
    results_from_pytest_benchmark,
    save_plot,
    startup_from_pytest_benchmark,
    traffic_text,
)

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def startup_table(figures: dict) -> str:
    """Start-up cost rows (cold and warm kernel cache); empty when not measured."""
    if not figures:
        return ""
    lines = ["| kernel cache | import numba_bn | first training step | whole process |",
             "|---|---:|---:|---:|"]
    for cache in ("cold", "warm"):
        if cache in figures:
            f = figures[cache]
            lines.append(f"| {cache} | {format_seconds(f['import_seconds'])} | "
                         f"{format_seconds(f['first_call_seconds'])} | {format_seconds(f['process_seconds'])} |")
    return "\n".join(lines)


#: What the rows of the second table time, said under it.
EXTRA_ROWS_LEGEND = (
    "*add_relu*: `relu(bn(x) + z)`, the end of a ResNet block: numba_bn's `bn(x, residual=z)` with "
    "`activation=\"relu\"` (backward: `bn.backward(dy)`, which returns the gradients of x and z); PyTorch's "
    "`F.batch_norm` followed by in-place `add_(z).relu_()` (its fastest eager form here), and autograd's "
    "backward of `torch.relu(F.batch_norm(x, ...) + z)`. *eval_out*: into a preallocated output, numba_bn's "
    "`bn(x, out=y)` (with `residual=z`: PyTorch's `native_batch_norm.out` into a preallocated tensor, then "
    "`add_`/`relu_`; without: `F.batch_norm`). NumPy has no fused form and is left out."
)
#: Added to that legend when the table has JAX rows.
EXTRA_ROWS_JAX_LEGEND = (
    " JAX runs the fused training forward and backward (`jax.jit` of the same formulas, the backward in "
    "closed form with the ReLU's mask from the forward's output) and no *eval_out* row: its arrays are "
    "immutable, so there is no output buffer to write into."
)


def render(data: dict) -> str:
    """The Markdown block: ratio tables (plain operations, then fused and out=), start-up table and footnote."""
    results = results_from_pytest_benchmark(data)
    if not results:
        raise ValueError("no benchmark of benchmarks/test_bench_cpu.py in this file")
    machine = data.get("machine_info", {}).get("numba_bn")
    if machine is None:
        raise ValueError("the file lacks machine_info.numba_bn: was it written by benchmarks/ (its conftest)?")
    command = data.get("command", "python -m pytest benchmarks --benchmark-enable")
    plain = [result for result in results if result.case.operation in OPERATIONS]
    extra = [result for result in results if result.case.operation not in OPERATIONS]
    peers = peers_in(results)
    traffic = traffic_text(result.case.operation for result in results)
    parts = [markdown_table(plain), ""] if plain else []
    parts += [
        "*vs X*: X's time / numba_bn's time (above 1: numba_bn is faster). *vs best peer*: the same for "
        "the fastest peer of that row in the same run (named; the copy is not a peer). *% of copy*: numba_bn's "
        "memory bandwidth over that of a parallel copy of an array of the input's size (same threads), "
        "counting for numba_bn the least traffic of its operation, in copies of the input: "
        f"{traffic}. Times are pytest-benchmark minima."
        + (f" Each row comes from the run with the median PyTorch ratio of {len(data['merged_from'])} runs"
           " (`python scripts/bench_table.py RUN1.json RUN2.json ...`)."
           if len(data.get("merged_from", ())) > 1 else ""),
    ]
    if extra:
        legend = EXTRA_ROWS_LEGEND + (EXTRA_ROWS_JAX_LEGEND if "jax" in peers_in(extra) else "")
        parts += ["", markdown_table(extra), "", legend]
    startup = startup_table(startup_from_pytest_benchmark(data))
    if startup:
        parts += ["", startup]
    parts += ["", footnote(machine, command, peers) + f" Run date: {data.get('datetime', 'unknown')[:10]}."]
    return "\n".join(parts)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"the markers {START} ... {END} are not in the file")
    return pattern.sub(lambda _: f"{START}\n{block}\n{END}", text)


def _row_key(run: dict, benchmarks: list[dict]) -> float:
    """What a run is ranked by for one row: PyTorch's time over numba_bn's, else numba_bn's time."""
    times = {bench["extra_info"].get("implementation"): bench["stats"]["min"] for bench in benchmarks}
    ours = times.get("numba_bn", min(times.values()))
    return times["torch"] / ours if "torch" in times else ours


def merge_runs(runs: list[dict]) -> dict:
    """One pytest-benchmark document whose every group comes from the run with the median ratio."""
    if len(runs) == 1:
        return runs[0]
    groups = [{} for _ in runs]
    for run, by_group in zip(runs, groups):
        for bench in run["benchmarks"]:
            by_group.setdefault(bench["group"], []).append(bench)
    merged = dict(runs[0], benchmarks=[])
    for group in groups[0]:
        present = [(run, by_group[group]) for run, by_group in zip(runs, groups) if group in by_group]
        ranked = sorted(present, key=lambda item: _row_key(*item))
        merged["benchmarks"].extend(ranked[(len(ranked) - 1) // 2][1])
    merged["merged_from"] = [run.get("datetime") for run in runs]
    command = re.sub(r"--benchmark-json=\S+", "--benchmark-json=RUN.json", runs[0].get("command", ""))
    merged["command"] = command
    return merged


def build_parser() -> argparse.ArgumentParser:
    """The script's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json_files", type=Path, nargs="+", metavar="json_file",
                        help="output of --benchmark-json; several runs are merged row by row (median ratio)")
    parser.add_argument("--merged", type=Path, metavar="FILE.json", help="also save the merged runs as one file")
    parser.add_argument("--readme", type=Path, help="replace the table between the markers in this file")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also save a bar chart of the speedups and %% of roofline")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the tables, or write them into a README; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        data = merge_runs([json.loads(path.read_text(encoding="utf-8")) for path in args.json_files])
        if args.merged is not None:
            args.merged.write_text(json.dumps(data, indent=1), encoding="utf-8")
        block = render(data)
        if args.plot is not None:
            machine = data["machine_info"]["numba_bn"]
            save_plot(results_from_pytest_benchmark(data), str(args.plot),
                      title=f"numba_bn vs peers, {machine['cpu']}, {machine['threads']} threads")
            print(f"saved {args.plot}")
        if args.readme is None:
            print(block)
        else:
            args.readme.write_text(replace_block(args.readme.read_text(encoding="utf-8"), block), encoding="utf-8")
            print(f"updated {args.readme}")
    except (OSError, ValueError, KeyError, MissingDependencyError) as error:
        parser.exit(1, f"bench_table: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
