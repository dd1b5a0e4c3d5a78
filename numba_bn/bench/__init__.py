"""Benchmark harness: cases, the table of implementations, timing and reports.

Used by ``python -m numba_bn bench``, by the pytest-benchmark suite in
``benchmarks/`` and by ``scripts/bench_table.py``. Nothing here is imported by
``import numba_bn``.
"""

from .cases import DEFAULT_SHAPES, LAYOUTS, OPERATIONS, QUICK_SHAPES, Case, build_cases, parse_shapes
from .implementations import IMPLEMENTATIONS, OURS, ROOFLINE, implementations
from .report import CaseResult, format_text_table, markdown_table
from .runner import run_cases
from .timing import Timing, set_threads

__all__ = [
    "DEFAULT_SHAPES", "LAYOUTS", "OPERATIONS", "QUICK_SHAPES", "Case", "build_cases", "parse_shapes",
    "IMPLEMENTATIONS", "OURS", "ROOFLINE", "implementations",
    "CaseResult", "format_text_table", "markdown_table",
    "run_cases", "Timing", "set_threads",
]
