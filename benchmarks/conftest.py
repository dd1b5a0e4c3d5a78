"""Benchmark settings shared by every file here: threads, and what the JSON records.

Plain ``pytest`` runs each benchmark once as a smoke test on a small stand-in
shape (``--benchmark-disable`` is in the default options); a real run is
``python -m pytest benchmarks --benchmark-enable --benchmark-json=FILE``, and
``scripts/bench_table.py FILE`` turns that file into the README's table.
"""

import sys

import pytest

from numba_bn.bench import report
from numba_bn.bench.timing import max_threads, set_threads


@pytest.fixture(scope="session", autouse=True)
def all_threads():
    """Every implementation gets the same thread count: all of Numba's pool."""
    return set_threads(max_threads())


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Add what the README's footnote names: CPU model, thread count, library versions."""
    machine_info["numba_bn"] = report.machine_info(threads=max_threads())


def pytest_benchmark_update_json(config, benchmarks, output_json: dict) -> None:
    """Record the exact command line of the run; keep the statistics, drop the raw samples.

    The raw per-round samples of ~160 benchmarks make a file of tens of MB;
    the statistics (min, median, ...) are what the tables use.
    """
    output_json["command"] = " ".join(["python -m pytest", *config.invocation_params.args])
    output_json["python_executable"] = sys.executable
    for entry in output_json.get("benchmarks", []):
        entry.get("stats", {}).pop("data", None)
