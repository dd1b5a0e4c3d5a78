"""CPU benchmarks: every operation, shape, layout and implementation of the shared table.

numba_bn, PyTorch and JAX (each when installed), plain NumPy and the copy
roofline run on the same arrays with the same thread count (JAX: XLA's own
thread pool, which takes every core); each benchmark group is one case, so
``--benchmark-enable`` prints them side by side. The plain operations run on
every default shape; then come the fused BatchNorm + residual add + ReLU rows
and the evaluation forwards into a preallocated output (``out=``), which NumPy
does not run, nor JAX the ``out=`` ones (see ``build_extra_cases``). Only
those, for example::

    python -m pytest benchmarks/test_bench_cpu.py -k "add_relu or eval_out" --benchmark-enable

The correctness of every implementation is tested in
``tests/test_bench_implementations.py``.
"""

import pytest

from numba_bn.bench.cases import DEFAULT_SHAPES, Case, build_cases, build_extra_cases, make_case_data
from numba_bn.bench.implementations import IMPLEMENTATIONS

CASES = build_cases(DEFAULT_SHAPES) + build_extra_cases()
CPU = IMPLEMENTATIONS["cpu"]
#: Every (case, implementation) pair that the implementation runs.
PAIRS = [(case, name) for case in CASES for name, impl in CPU.items() if impl.runs(case)]


def smoke_case(case: Case) -> Case:
    """A small stand-in with the same rank, channels, layout and operation (for plain pytest runs)."""
    shape = (min(case.shape[0], 4), case.channels) + tuple(min(n, 5) for n in case.shape[2:])
    return Case(case.operation, shape, case.layout, case.dtype)


@pytest.mark.parametrize("case, implementation", PAIRS,
                         ids=[f"{case.name.replace(' ', '-')}-{name}" for case, name in PAIRS])
def test_cpu(benchmark, case, implementation):
    impl = CPU[implementation]
    if not impl.is_available():
        pytest.skip(f"{implementation} is not installed")
    if benchmark.disabled:
        case = smoke_case(case)
    prepared = impl.prepare(case, make_case_data(case))
    prepared.run()  # compilation and first-touch page faults stay out of the timings
    benchmark.group = case.name
    benchmark.extra_info.update(
        operation=case.operation, shape=list(case.shape), layout=case.layout, dtype=case.dtype,
        implementation=implementation, device="cpu", bytes=case.nbytes,
    )
    benchmark(prepared.run)
