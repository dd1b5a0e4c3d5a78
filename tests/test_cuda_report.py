"""``python -m numba_bn cuda-report``: every kernel variant the backend launches, compiled for sm_90
without a GPU, meets the project's targets: no spills, theoretical occupancy of 50% or more.

Runs the command as a user would (it records the launches in the CUDA
simulator and compiles them with NVVM and ptxas in processes of its own)
where the ``cuda`` extra brings ptxas and NVVM; skips otherwise.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cuda_support import CUDA_MISSING  # before the CUDA imports below

if CUDA_MISSING and "numba-cuda" in CUDA_MISSING:
    pytest.skip(f"the cuda extra is not installed: {CUDA_MISSING}", allow_module_level=True)

import numba_bn
from cuda_support import DEFAULT_CUDA_THREADS, needs_cuda
from numba_bn.cuda.limits import MAX_THREADS
from numba_bn.cuda.ptx_resources import find_ptxas, numba_type
from numba_bn.cuda.report import ROW_KEYS

pytestmark = [
    needs_cuda,
    pytest.mark.skipif(find_ptxas() is None, reason="needs ptxas (the nvidia-cuda-nvcc-cu12 wheel or a CUDA toolkit)"),
]

ROOT = Path(numba_bn.__file__).resolve().parents[1]
COMMITTED = ROOT / "benchmarks" / "results" / "cuda_report_sm90.json"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """``(rows, stdout)`` of ``python -m numba_bn cuda-report --arch sm_90 --json FILE``."""
    path = tmp_path_factory.mktemp("report") / "report.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run(
        [sys.executable, "-m", "numba_bn", "cuda-report", "--arch", "sm_90", "--json", str(path)],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    if result.returncode == 1 and "NVVM" in result.stderr:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(path.read_text()), result.stdout


def _variants_launched():
    """``{(kernel, signature)}`` of what the backend launches, recorded here with the kernels unrun."""
    from numba_bn.cuda.launch_record import recording
    from numba_bn.cuda.workload import exercise_backend

    with recording(run=False) as records:
        exercise_backend(np.random.default_rng(0))
    return {(r.kernel, ", ".join(str(numba_type(a)) for a in r.arguments)) for r in records}


def test_rows_have_the_documented_fields(report):
    rows, _ = report
    assert rows
    for row in rows:
        assert list(row) == list(ROW_KEYS)
        assert isinstance(row["kernel"], str) and isinstance(row["signature"], str)
        for key in ("registers", "spill_stores", "spill_loads", "shared_bytes", "block"):
            assert isinstance(row[key], int) and row[key] >= 0, (key, row)
        assert row["registers"] > 0
        assert isinstance(row["occupancy"], float) and 0.0 <= row["occupancy"] <= 1.0
        assert row["block"] == DEFAULT_CUDA_THREADS and row["arch"] == "sm_90"  # the report's own process


def test_every_launched_kernel_variant_is_reported(report):
    rows, _ = report
    assert {(row["kernel"], row["signature"]) for row in rows} == _variants_launched()


def test_no_kernel_spills(report):
    rows, _ = report
    assert [row for row in rows if row["spill_stores"] or row["spill_loads"]] == []


def test_every_kernel_reaches_half_occupancy(report):
    rows, _ = report
    assert [row for row in rows if row["occupancy"] < 0.5] == []


def test_every_kernel_fits_the_largest_block(report):
    """A block's threads share an SM's 65,536 registers: the largest block the kernels accept must fit."""
    rows, _ = report
    assert max(row["registers"] for row in rows) * MAX_THREADS <= 65536


def test_the_table_has_a_line_per_row_and_the_summary(report):
    rows, stdout = report
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["kernel", "regs"]
    assert sum(1 for line in lines if line.split() and line.split()[0] in {row["kernel"] for row in rows}) == len(rows)
    assert f"{len(rows)} kernel variants for sm_90; spills: none;" in stdout


def test_the_committed_report_covers_the_kernels_launched_now():
    """benchmarks/results/cuda_report_sm90.json was made by the command on the current kernels (its
    numbers depend on the ptxas version; the variants do not)."""
    rows = json.loads(COMMITTED.read_text())
    assert all(list(row) == list(ROW_KEYS) and row["arch"] == "sm_90" for row in rows)
    assert {(row["kernel"], row["signature"]) for row in rows} == _variants_launched()
