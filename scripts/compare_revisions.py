"""Time numba_bn at a git revision against the working tree, in one process, and print old/new ratios.

Usage::

    python scripts/compare_revisions.py                      # HEAD vs the working tree, default shapes
    python scripts/compare_revisions.py --quick --repeat 3   # three shapes; median of 3 runs
    python scripts/compare_revisions.py --rev HEAD~3 --new-rev HEAD --json cmp.json
    python scripts/compare_revisions.py --shapes 32x64x56x56,64x128 --operations train_backward \\
        --layouts channels_last

Method. ``git archive <rev> numba_bn`` is unpacked into
``$TMPDIR/numba_bn_compare/<commit>/numba_bn_base`` and imported under that
name (the package imports itself relatively; the few absolute ``numba_bn``
imports of its ``bench`` helpers are rewritten to the new name). The export is
kept between runs, so its Numba cache, written to ``__pycache__`` beside its
own sources (or under ``NUMBA_CACHE_DIR``, in a folder named after that source
path), stays warm and never mixes with the working tree's. ``--new-rev`` exports
the new side the same way instead of importing the working tree.

The cases are those of ``numba_bn.bench.cases`` (of the new side). Each is timed
through the public module API only, as a user calls it: ``BatchNorm1d/2d/3d``
built with the case's ``dtype`` and ``channel_axis`` and loaded with the same
parameters and buffers; ``train_forward`` calls the module in training mode,
``eval_forward`` in evaluation mode, ``train_backward`` calls
``module.backward(dy)`` after one training forward done beforehand. Both
versions read the very same input arrays.

For each case both versions are warmed up (compilation happens there), then
``--pairs`` pairs of samples are taken alternately, old-new then new-old
(ABBA...), each sample a batch of the same number of calls lasting at least
``--min-sample-ms``. Alternating spreads the machine's other load and a slow
drift evenly over both sides, so the ratio stays meaningful on a shared
machine where absolute times do not. The ratio is old time / new time of the
median samples (above 1: the new code is faster); ``best`` is the same for
the minima. ``--repeat R`` runs the whole comparison R times and reports the
median of the R per-run ratios. A row is flagged ``SLOWER`` when both its
ratios are below ``--threshold`` (0.9: 10 % slower), ``slower?`` when one is:
interference moves medians and minima differently, a real slow-down moves
both. The first outputs of both versions are also compared, and a relative
difference above 1e-4 is flagged ``DIFF``.

On a busy machine, where another process takes cores from Numba's thread
pool, a parallel call waits for its slowest thread and times jump by
scheduler time slices; ``--threads 1`` or a quiet machine gives steadier ratios.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OLD_NAME, NEW_NAME = "numba_bn_base", "numba_bn_new"
EPS, MOMENTUM = 1e-5, 0.1
# A refactor may reorder float32 arithmetic; anything beyond this is a real change of results.
OUTPUT_TOLERANCE = 1e-4


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def export_revision(rev: str, name: str) -> tuple[str, Path]:
    """Unpack ``numba_bn/`` of ``rev`` as package ``name``; returns the commit and the folder to put on sys.path."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    root = Path(tempfile.gettempdir()) / "numba_bn_compare" / commit[:12]
    package = root / name
    if package.is_dir():  # a commit never changes, and reusing the folder reuses its Numba cache
        return commit, root
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root))
    try:
        archive = subprocess.run(["git", "archive", commit, "numba_bn"], cwd=REPO, check=True,
                                 stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
        rename_absolute_imports(staging / "numba_bn", name)
        try:
            (staging / "numba_bn").rename(package)  # atomic: another run never sees half an export
        except OSError:
            if not package.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return commit, root


def rename_absolute_imports(package: Path, name: str) -> None:
    """Point ``import numba_bn`` / ``from numba_bn...`` in the exported copy at ``name``."""
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        renamed = re.sub(r"^(\s*)import numba_bn[ \t]*(#.*)?$", rf"\1import {name} as numba_bn", text, flags=re.M)
        renamed = re.sub(r"^(\s*)(import|from) numba_bn\b", rf"\1\2 {name}", renamed, flags=re.M)
        if renamed != text:  # leave untouched files with their archive mtime (Numba's cache checks it)
            path.write_text(renamed, encoding="utf-8")


def import_side(rev: str | None, name: str):
    """The package of one side and its description: an exported revision, or the working tree for None."""
    if rev is None:
        sys.path.insert(0, str(REPO))  # the working tree, whatever the environment has installed
        package = importlib.import_module("numba_bn")
        if Path(package.__file__).resolve().parent != REPO / "numba_bn":
            raise SystemExit(f"numba_bn was imported from {package.__file__}, not from {REPO}")
        changed = git("diff", "--name-only", "HEAD", "--", "numba_bn").splitlines()
        return package, f"working tree ({len(changed)} changed files in numba_bn/ vs HEAD)", None
    commit, root = export_revision(rev, name)
    sys.path.insert(0, str(root))
    return importlib.import_module(name), f"{rev} ({commit[:12]})", commit


def prepare(package, case, data):
    """``run`` (what is timed) and a copy of its first result, for one side."""
    module_class = {2: package.BatchNorm1d, 3: package.BatchNorm1d,
                    4: package.BatchNorm2d, 5: package.BatchNorm3d}[len(case.shape)]
    module = module_class(case.channels, eps=EPS, momentum=MOMENTUM, dtype=data.weight.dtype,
                          channel_axis=case.channel_axis)
    # Copies: a module may keep the arrays it is given, and the other side must not see its updates.
    module.load_state_dict({"weight": data.weight.copy(), "bias": data.bias.copy(),
                            "running_mean": data.running_mean.copy(), "running_var": data.running_var.copy()})
    x, grad_output = data.x, data.grad_output
    if case.operation == "train_forward":
        def run():
            return module(x)
    elif case.operation == "eval_forward":
        module.eval()

        def run():
            return module(x)
    else:
        module(x)

        def run():
            return module.backward(grad_output)
    return run, np.array(run())


def time_interleaved(runs: dict, pairs: int, min_sample_seconds: float, timing) -> dict:
    """Median and best seconds per call of each of two callables, sampled alternately.

    Written here rather than with ``timing.time_host_interleaved``: that helper batches
    only to ~50 µs and lets each side pick its own batch, while a revision
    comparison wants long samples of equal batches in ABBA order.
    """
    single = {}
    for name, run in runs.items():
        run()  # compiles or loads kernels, allocates first-touch memory
        start = time.perf_counter()
        run()
        single[name] = time.perf_counter() - start
    calls = max(1, math.ceil(min_sample_seconds / max(min(single.values()), 1e-9)))
    first, second = runs
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for pair in range(pairs):
        for name in (first, second) if pair % 2 == 0 else (second, first):
            run = runs[name]
            start = time.perf_counter()
            for _ in range(calls):
                run()
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: timing.Timing(best=min(values), median=statistics.median(values), repeats=len(values))
            for name, values in samples.items()}


def compare_case(old, new, case, cases_module, timing, args) -> dict:
    """One run of one case: timings of both sides, their ratios and whether their outputs agree."""
    data = cases_module.make_case_data(case)
    run_old, out_old = prepare(old, case, data)
    run_new, out_new = prepare(new, case, data)
    scale = max(1.0, float(np.max(np.abs(out_old))))
    difference = float(np.max(np.abs(out_old.astype(np.float64) - out_new))) / scale
    times = time_interleaved({"old": run_old, "new": run_new}, args.pairs, args.min_sample_ms / 1e3, timing)
    return {"old": times["old"].as_dict(), "new": times["new"].as_dict(),
            "ratio": times["old"].median / times["new"].median,
            "ratio_best": times["old"].best / times["new"].best,
            "output_difference": difference}


def format_seconds(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slowness(row: dict, threshold: float) -> str:
    """``SLOWER`` when both ratios are below ``threshold``, ``slower?`` when one is, else ``""``.

    Interference on a busy machine moves the medians and the minima differently;
    a real slow-down moves both.
    """
    below = (row["ratio"] < threshold) + (row["ratio_best"] < threshold)
    return ("", "slower?", "SLOWER")[below]


def print_table(rows: list[dict], repeat: int) -> None:
    header = ["case", "old", "new", "old/new", "best", "runs" if repeat > 1 else "", ""]
    lines = []
    for row in rows:
        ratios = [run["ratio"] for run in row["runs"]]
        flags = [row["slowness"]] + (["DIFF"] if row["output_difference"] > OUTPUT_TOLERANCE else [])
        lines.append([row["case"], format_seconds(row["old_median"]), format_seconds(row["new_median"]),
                      f"{row['ratio']:.3f}", f"{row['ratio_best']:.3f}",
                      f"{min(ratios):.2f}-{max(ratios):.2f}" if repeat > 1 else "", " ".join(flags).strip()])
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print("  ".join(cell.ljust(width) if i in (0, len(line) - 1) else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths))).rstrip())


def comma_list(allowed):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        unknown = [item for item in items if item not in allowed]
        if not items or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
        return items
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="old side: a git revision (default HEAD)")
    parser.add_argument("--new-rev", help="new side: a git revision instead of the working tree")
    parser.add_argument("--quick", action="store_true", help="the few shapes of numba_bn.bench.cases.QUICK_SHAPES")
    parser.add_argument("--shapes", help="comma-separated shapes like 32x64x56x56,64x128 (N, C, ...)")
    parser.add_argument("--operations", help="comma-separated subset of train_forward,eval_forward,train_backward")
    parser.add_argument("--layouts", help="comma-separated subset of channels_first,channels_last")
    parser.add_argument("--dtype", default="float32", help="data type of the input (default float32)")
    parser.add_argument("--repeat", type=int, default=1, help="whole comparisons to run; rows show the median ratio")
    parser.add_argument("--pairs", type=int, default=10, help="old/new sample pairs per case and run (default 10)")
    parser.add_argument("--min-sample-ms", type=float, default=2.0, help="least duration of one sample (default 2)")
    parser.add_argument("--threads", type=int, help="Numba threads (default: all, NUMBA_NUM_THREADS)")
    parser.add_argument("--threshold", type=float, default=0.9, help="flag rows with old/new below this (default 0.9)")
    parser.add_argument("--json", type=Path, help="also write the settings, every run and the rows to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.pairs < 1:
        parser.error("--repeat and --pairs must be 1 or more")

    new, new_description, new_commit = import_side(args.new_rev, NEW_NAME)
    old, old_description, old_commit = import_side(args.rev, OLD_NAME)
    # The case definitions and thread helpers of the new side (exported with --new-rev).
    cases_module = importlib.import_module(f"{new.__name__}.bench.cases")
    timing = importlib.import_module(f"{new.__name__}.bench.timing")
    try:
        operations = (comma_list(cases_module.OPERATIONS)(args.operations) if args.operations
                      else cases_module.OPERATIONS)
        layouts = comma_list(cases_module.LAYOUTS)(args.layouts) if args.layouts else cases_module.LAYOUTS
        shapes = (cases_module.parse_shapes(args.shapes) if args.shapes
                  else cases_module.QUICK_SHAPES if args.quick else cases_module.DEFAULT_SHAPES)
        cases = cases_module.build_cases(shapes, operations, layouts, args.dtype)
        threads = timing.set_threads(args.threads or timing.max_threads())
    except (ValueError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))
    if not cases:
        parser.error("no case: channels_last needs shapes of 3 or more dimensions")

    import numba

    print(f"old: {old_description}  ->  new: {new_description}")
    print(f"CPU: {cpu_model()}; {threads} of {timing.max_threads()} Numba threads; numba {numba.__version__}, "
          f"numpy {np.__version__}, Python {platform.python_version()}")
    load = os.getloadavg()[0]
    if load > 0.5:  # other work on the machine takes cores from both sides unevenly, sample by sample
        print(f"load average {load:.1f} on {os.cpu_count()} CPUs before the run: expect noisy ratios")
    print(f"{len(cases)} cases x {args.repeat} runs; {args.pairs} ABBA sample pairs of >= {args.min_sample_ms:g} ms "
          "per case and run; old/new = ratio of median times (above 1: new is faster)\n")

    runs_by_case: dict[str, list[dict]] = {case.name: [] for case in cases}
    progress = sys.stderr.isatty()
    for run_index in range(args.repeat):
        for case_index, case in enumerate(cases):
            if progress:
                print(f"\rrun {run_index + 1}/{args.repeat}, case {case_index + 1}/{len(cases)}: {case.name}"
                      .ljust(100), end="", file=sys.stderr, flush=True)
            runs_by_case[case.name].append(compare_case(old, new, case, cases_module, timing, args))
    if progress:
        print("\r".ljust(101), end="\r", file=sys.stderr, flush=True)

    rows = []
    for case in cases:
        runs = runs_by_case[case.name]
        rows.append({
            "case": case.name, "operation": case.operation, "shape": list(case.shape),
            "layout": case.layout, "dtype": case.dtype,
            "old_median": statistics.median(run["old"]["median"] for run in runs),
            "new_median": statistics.median(run["new"]["median"] for run in runs),
            "ratio": statistics.median(run["ratio"] for run in runs),
            "ratio_best": statistics.median(run["ratio_best"] for run in runs),
            "output_difference": max(run["output_difference"] for run in runs),
            "runs": runs,
        })
        rows[-1]["slowness"] = slowness(rows[-1], args.threshold)
    print_table(rows, args.repeat)
    flags = [row["slowness"] for row in rows]
    geometric_mean = math.exp(statistics.fmean(math.log(row["ratio"]) for row in rows))
    print(f"\ngeometric mean old/new: {geometric_mean:.3f}; of {len(rows)} rows, "
          f"{flags.count('SLOWER')} SLOWER (median and best ratios below {args.threshold:g}), "
          f"{flags.count('slower?')} slower? (one of them below)"
          + ("; DIFF: outputs differ by more than a relative " f"{OUTPUT_TOLERANCE:g}"
             if any(row["output_difference"] > OUTPUT_TOLERANCE for row in rows) else ""))

    if args.json:
        report = {"old": {"rev": args.rev, "commit": old_commit},
                  "new": {"rev": args.new_rev, "commit": new_commit, "description": new_description},
                  "cpu": cpu_model(), "threads": threads, "numba": numba.__version__, "numpy": np.__version__,
                  "python": platform.python_version(), "repeat": args.repeat, "pairs": args.pairs,
                  "min_sample_ms": args.min_sample_ms, "threshold": args.threshold,
                  "geometric_mean_ratio": geometric_mean, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
