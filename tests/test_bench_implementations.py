"""Every implementation in the benchmark table computes BatchNorm correctly.

The benchmarks time exactly these prepared calls, so each benchmarked path is
checked here against the float64 reference (and so against each other).
"""

import numpy as np
import pytest

from numba_bn.bench.cases import OPERATIONS, Case, build_cases, make_case_data
from numba_bn.bench.implementations import EPS, IMPLEMENTATIONS, MOMENTUM, OUTPUTS, ROOFLINE, implementations

from reference import ref_backward_train, ref_batch_stats, ref_forward, ref_running_update

SHAPES = [(6, 3, 5, 7), (40, 5), (4, 3, 10), (2, 4, 3, 5, 6)]
TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-2}
CPU = [impl for impl in implementations("cpu") if impl.name != ROOFLINE]


def expected_outputs(case, data):
    axis = case.channel_axis
    x = data.x
    if case.operation == "eval_forward":
        return {"y": ref_forward(x, data.running_mean, data.running_var, data.weight, data.bias, EPS, axis)}
    if case.operation == "train_forward":
        mean, var, count = ref_batch_stats(x, axis)
        running_mean, running_var = ref_running_update(
            data.running_mean, data.running_var, mean, var, count, MOMENTUM)
        return {"y": ref_forward(x, mean, var, data.weight, data.bias, EPS, axis),
                "running_mean": running_mean, "running_var": running_var}
    grad_input, grad_weight, grad_bias = ref_backward_train(x, data.grad_output, data.weight, EPS, axis)
    return {"grad_input": grad_input, "grad_weight": grad_weight, "grad_bias": grad_bias}


@pytest.mark.parametrize("implementation", CPU, ids=lambda impl: impl.name)
@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
@pytest.mark.parametrize("case", build_cases(SHAPES), ids=lambda c: f"{c.operation}-{c.shape_text}-{c.layout}")
def test_matches_reference(case, dtype, implementation):
    case = Case(case.operation, case.shape, case.layout, dtype)
    data = make_case_data(case)
    x_before = data.x.copy()
    prepared = implementation.prepare(case, data)
    outputs = prepared.collect(prepared.run())
    expected = expected_outputs(case, data)
    assert set(outputs) == set(OUTPUTS[case.operation]) == set(expected)
    for name, value in outputs.items():
        reference = expected[name]
        assert value.shape == reference.shape, name
        if value.ndim == data.x.ndim:
            assert value.dtype == data.x.dtype, name
        # Errors scale with the size of what is summed: one value, or a whole channel.
        scale = np.abs(reference).max() + 1
        np.testing.assert_allclose(value.astype(np.float64), reference, rtol=0,
                                   atol=TOLERANCE[dtype] * scale, err_msg=f"{implementation.name} {name}")
    np.testing.assert_array_equal(data.x, x_before)


@pytest.mark.parametrize("implementation", CPU, ids=lambda impl: impl.name)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_float16_channels_longer_than_float16_sums(operation, implementation):
    """65536 values per channel: float16 accumulators would overflow (max 65504)."""
    case = Case(operation, (64, 2, 32, 32), dtype="float16")
    data = make_case_data(case)
    prepared = implementation.prepare(case, data)
    outputs = prepared.collect(prepared.run())
    for name, reference in expected_outputs(case, data).items():
        scale = np.abs(reference).max() + 1
        np.testing.assert_allclose(outputs[name].astype(np.float64), reference, rtol=0,
                                   atol=TOLERANCE["float16"] * scale, err_msg=f"{implementation.name} {name}")


def test_copy_roofline_copies():
    case = Case("eval_forward", (4, 3, 5, 5))
    data = make_case_data(case)
    prepared = IMPLEMENTATIONS["cpu"][ROOFLINE].prepare(case, data)
    prepared.run()
    assert prepared.collect(None) == {}


def test_table_covers_every_operation_on_every_device():
    for device, table in IMPLEMENTATIONS.items():
        assert "numba_bn" in table and ROOFLINE in table, device
        for impl in table.values():
            assert impl.device == device
    assert set(OUTPUTS) == set(OPERATIONS)
