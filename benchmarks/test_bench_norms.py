"""CPU benchmarks of the normalisation family: GroupNorm and LayerNorm against PyTorch, JAX, NumPy and a copy.

The rows and implementations are ``numba_bn.bench.norm_table``'s, whose
correctness is tested in ``tests/test_bench_norm_table.py``. For each case
the implementations run one after another in the same session, with the same
thread count. Only these rows, three times over::

    python -m pytest benchmarks/test_bench_norms.py --benchmark-enable --benchmark-json=norms.json

``numba_bn.bench.norm_table.summarize`` turns such a file into the ratios.
"""

import pytest

from numba_bn.bench.norm_table import NORM_CASES, NORM_IMPLEMENTATIONS, make_norm_data

PAIRS = [(case, name) for case in NORM_CASES for name in NORM_IMPLEMENTATIONS]


@pytest.mark.parametrize("case, implementation", PAIRS,
                         ids=[f"{case.name.replace(' ', '-')}-{name}" for case, name in PAIRS])
def test_norms(benchmark, case, implementation):
    impl = NORM_IMPLEMENTATIONS[implementation]
    if not impl.is_available():
        pytest.skip(f"{implementation} is not installed")
    if benchmark.disabled:
        case = case.smaller()
    prepared = impl.prepare(case, make_norm_data(case))
    prepared.run()  # compilation and first-touch page faults stay out of the timings
    benchmark.group = case.name
    benchmark.extra_info.update(
        family="norms", operation=case.operation, direction=case.direction, shape=list(case.shape),
        implementation=implementation, device="cpu", bytes=case.nbytes, minimum_passes=case.minimum_passes,
    )
    benchmark(prepared.run)
