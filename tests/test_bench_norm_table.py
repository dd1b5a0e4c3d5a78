"""Every implementation in the normalisation family's benchmark table computes its case correctly.

The benchmarks time exactly these prepared calls, on larger shapes of the same kinds.
"""

import pytest

import norm_reference as ref
from numba_bn.bench.norm_table import BACKWARD, GROUP_NORM, NORM_CASES, NORM_IMPLEMENTATIONS, ROOFLINE, make_norm_data

CASES = [case.smaller() for case in NORM_CASES]
PAIRS = [(case, impl) for case in CASES for impl in NORM_IMPLEMENTATIONS.values() if impl.name != ROOFLINE]


def _expected(case, data):
    if case.operation == GROUP_NORM:
        if case.direction == BACKWARD:
            names = ("grad_input", "grad_weight", "grad_bias")
            return dict(zip(names, ref.group_norm_backward(data.x, data.grad_output, case.groups, data.weight, 1e-5)))
        return {"y": ref.group_norm(data.x, case.groups, data.weight, data.bias, 1e-5)[0]}
    if case.direction == BACKWARD:
        names = ("grad_input", "grad_weight", "grad_bias")
        return dict(zip(names, ref.layer_norm_backward(data.x, data.grad_output, case.normalized, data.weight)))
    return {"y": ref.layer_norm(data.x, case.normalized, data.weight, data.bias)[0]}


@pytest.mark.parametrize("case, impl", PAIRS, ids=[f"{c.name}-{i.name}".replace(" ", "-") for c, i in PAIRS])
def test_benchmarked_path_is_correct(case, impl):
    if not impl.is_available():
        pytest.skip(f"{impl.name} is not installed")
    data = make_norm_data(case)
    prepared = impl.prepare(case, data)
    outputs = prepared.collect(prepared.run())
    expected = _expected(case, data)
    assert outputs.keys() == expected.keys()
    for name, value in expected.items():
        tolerance = 1e-3 if name == "grad_weight" or name == "grad_bias" else 2e-4
        assert outputs[name].shape == value.shape, name
        assert abs(outputs[name] - value).max() <= tolerance * max(1.0, abs(value).max()), name


def test_roofline_copies():
    case = CASES[0]
    data = make_norm_data(case)
    prepared = NORM_IMPLEMENTATIONS[ROOFLINE].prepare(case, data)
    assert prepared.collect(prepared.run()) == {}
