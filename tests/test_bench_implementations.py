"""Every implementation in the benchmark table computes BatchNorm correctly.

The benchmarks time exactly these prepared calls, so each benchmarked path is
checked here against the float64 reference (and so against each other): the
plain operations for every implementation, and the fused
``relu(bn(x) + z)`` and ``out=`` operations for those that run them.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numba_bn.bench.cases import (
    ALL_OPERATIONS,
    EXTRA_OPERATIONS,
    OPERATIONS,
    RESIDUAL_OPERATIONS,
    Case,
    build_cases,
    build_extra_cases,
    make_case_data,
)
from numba_bn.bench.implementations import EPS, IMPLEMENTATIONS, MOMENTUM, OUTPUTS, ROOFLINE, implementations

from reference import (
    ref_backward_train,
    ref_batch_stats,
    ref_fused_backward_train,
    ref_fused_forward,
    ref_fused_pre_activation,
    ref_running_update,
)

SHAPES = [(6, 3, 5, 7), (40, 5), (4, 3, 10), (2, 4, 3, 5, 6)]
TOLERANCE = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-2}
CPU = [impl for impl in implementations("cpu") if impl.name != ROOFLINE]
#: How far from 0 the ReLU's input is kept in the test data: within rounding of 0
#: (float16 rounds bn(x) and the sum, PyTorch each on its own) the ReLU's mask
#: may differ from the float64 reference's, and a whole gradient value with it.
RELU_MARGIN = {"float64": 1e-6, "float32": 1e-4, "float16": 2e-2}


def pairs(cases):
    """``(case, implementation)`` for every implementation that runs the case's operation and dtype."""
    return [(case, impl) for case in cases for impl in CPU if impl.runs(case)]


def pair_id(case, impl):
    return f"{case.operation}-{case.shape_text}-{case.layout}-{case.dtype}-{impl.name}"


def normalising_stats(case, data):
    """``(mean, var)`` the forward normalises with: the batch's in training, the running ones in evaluation."""
    if case.operation.startswith("train"):
        mean, var, _ = ref_batch_stats(data.x, case.channel_axis)
        return mean, var
    return data.running_mean, data.running_var


def keep_relu_input_off_zero(case, data):
    """``data`` with ``residual`` nudged where ``bn(x) + residual`` lies within the margin of 0.

    Such values are pushed above the margin (bn(x) does not depend on the
    residual, so nothing else moves).
    """
    if data.residual is None:
        return data
    margin = RELU_MARGIN[case.dtype]
    mean, var = normalising_stats(case, data)
    pre = ref_fused_pre_activation(data.x, mean, var, data.weight, data.bias, EPS, case.channel_axis,
                                   data.residual)
    near_zero = np.abs(pre) < margin
    residual = np.where(near_zero, data.residual.astype(np.float64) + 2 * margin, data.residual)
    return dataclasses.replace(data, residual=residual.astype(data.residual.dtype))


def case_data(case):
    return keep_relu_input_off_zero(case, make_case_data(case))


def expected_outputs(case, data):
    axis = case.channel_axis
    x = data.x
    relu = case.operation in RESIDUAL_OPERATIONS
    if case.operation in ("eval_forward", "eval_out", "eval_out_add_relu"):
        return {"y": ref_fused_forward(x, data.running_mean, data.running_var, data.weight, data.bias, EPS, axis,
                                       data.residual, relu)}
    if case.operation in ("train_forward", "train_forward_add_relu"):
        mean, var, count = ref_batch_stats(x, axis)
        running_mean, running_var = ref_running_update(
            data.running_mean, data.running_var, mean, var, count, MOMENTUM)
        return {"y": ref_fused_forward(x, mean, var, data.weight, data.bias, EPS, axis, data.residual, relu),
                "running_mean": running_mean, "running_var": running_var}
    if case.operation == "train_backward_add_relu":
        grad_input, grad_residual, grad_weight, grad_bias = ref_fused_backward_train(
            x, data.grad_output, data.weight, EPS, axis, data.residual, relu=True, bias=data.bias)
        return {"grad_input": grad_input, "grad_residual": grad_residual,
                "grad_weight": grad_weight, "grad_bias": grad_bias}
    grad_input, grad_weight, grad_bias = ref_backward_train(x, data.grad_output, data.weight, EPS, axis)
    return {"grad_input": grad_input, "grad_weight": grad_weight, "grad_bias": grad_bias}


def assert_matches_reference(case, data, outputs, implementation):
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
                                   atol=TOLERANCE[case.dtype] * scale, err_msg=f"{implementation.name} {name}")


ALL_CASES = [case for dtype in sorted(TOLERANCE) for case in build_cases(SHAPES, ALL_OPERATIONS, dtype=dtype)]


@pytest.mark.parametrize("case, implementation", pairs(ALL_CASES), ids=[pair_id(*p) for p in pairs(ALL_CASES)])
def test_matches_reference(case, implementation):
    data = case_data(case)
    inputs_before = [data.x.copy()] + ([] if data.residual is None else [data.residual.copy()])
    prepared = implementation.prepare(case, data)
    outputs = prepared.collect(prepared.run())
    assert_matches_reference(case, data, outputs, implementation)
    for before, after in zip(inputs_before, [data.x, data.residual]):
        np.testing.assert_array_equal(after, before)


FLOAT16_CASES = build_cases([(64, 2, 32, 32)], ALL_OPERATIONS, dtype="float16")


@pytest.mark.parametrize("case, implementation", pairs(FLOAT16_CASES),
                         ids=[pair_id(*p) for p in pairs(FLOAT16_CASES)])
def test_float16_channels_longer_than_float16_sums(case, implementation):
    """65536 values per channel: float16 accumulators would overflow (max 65504)."""
    data = case_data(case)
    prepared = implementation.prepare(case, data)
    outputs = prepared.collect(prepared.run())
    assert_matches_reference(case, data, outputs, implementation)


BACKWARD_CASES = build_cases([(6, 3, 5, 7)], ("train_backward", "train_backward_add_relu"))


@pytest.mark.parametrize("case, implementation", pairs(BACKWARD_CASES),
                         ids=[pair_id(*p) for p in pairs(BACKWARD_CASES)])
def test_backward_can_be_timed_again_and_again(case, implementation):
    """A benchmark calls the prepared backward many times after one forward: every call gives the same."""
    data = case_data(case)
    prepared = implementation.prepare(case, data)
    first = prepared.collect(prepared.run())
    for _ in range(2):
        again = prepared.collect(prepared.run())
        for name, value in first.items():
            np.testing.assert_array_equal(again[name], value, err_msg=f"{implementation.name} {name}")


OUT_CASES = build_cases([(6, 3, 5, 7)], ("eval_out", "eval_out_add_relu"))


@pytest.mark.parametrize("case", OUT_CASES, ids=lambda case: case.operation)
def test_numba_bn_out_operations_write_into_one_buffer(case):
    """What ``eval_out`` times is the kernel writing into a buffer it is given, not a new array."""
    prepared = IMPLEMENTATIONS["cpu"]["numba_bn"].prepare(case, case_data(case))
    buffer = prepared.run()["y"]
    assert prepared.run()["y"] is buffer


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
            assert set(OPERATIONS) <= set(impl.operations) <= set(ALL_OPERATIONS), impl.name
    cpu = IMPLEMENTATIONS["cpu"]
    for name in ("numba_bn", "torch", ROOFLINE):
        assert all(cpu[name].supports(operation) for operation in EXTRA_OPERATIONS), name
    assert not any(cpu["numpy"].supports(operation) for operation in EXTRA_OPERATIONS)
    # JAX arrays are immutable: JAX runs the fused training operations, none into an out= buffer.
    assert [operation for operation in EXTRA_OPERATIONS if cpu["jax"].supports(operation)] == [
        "train_forward_add_relu", "train_backward_add_relu"]
    assert set(OUTPUTS) == set(ALL_OPERATIONS)


def test_jax_runs_float32_and_float16_and_refuses_the_rest():
    """JAX computes in float32: float64 cases are left to the others, and its prepare refuses them."""
    jax_cpu = IMPLEMENTATIONS["cpu"]["jax"]
    assert jax_cpu.requires == ("jax",) and "pip install" in jax_cpu.install_hint
    assert [dtype for dtype in sorted(TOLERANCE) if jax_cpu.runs(Case("train_forward", (4, 3), dtype=dtype))] == [
        "float16", "float32"]
    assert not jax_cpu.runs(Case("eval_out", (4, 3)))
    for case in (Case("train_forward", (4, 3), dtype="float64"), Case("eval_out", (4, 3))):
        with pytest.raises(ValueError, match="for JAX, got"):
            jax_cpu.prepare(case, make_case_data(case))


def test_jax_backward_is_the_gradient_of_its_forward():
    """The closed-form backward JAX is timed with equals jax.vjp of the JAX forward (float32, both layouts)."""
    jax = pytest.importorskip("jax")
    from numba_bn.bench import jax_batchnorm

    for case in build_cases([(6, 3, 5, 7)], ("train_backward_add_relu",)):
        data = case_data(case)
        channel = case.channel_axis % data.x.ndim
        axes = tuple(axis for axis in range(data.x.ndim) if axis != channel)

        def forward(x, weight, bias, residual):
            return jax_batchnorm.train_forward(x, weight, bias, data.running_mean, data.running_var, residual,
                                               axes=axes, eps=EPS, momentum=MOMENTUM)[0]

        y, pullback = jax.vjp(forward, data.x, data.weight, data.bias, data.residual)
        grad_x, grad_weight, grad_bias, grad_residual = pullback(jax.numpy.asarray(data.grad_output))
        prepared = IMPLEMENTATIONS["cpu"]["jax"].prepare(case, data)
        timed = prepared.collect(prepared.run())
        for name, value in (("grad_input", grad_x), ("grad_weight", grad_weight), ("grad_bias", grad_bias),
                            ("grad_residual", grad_residual)):
            np.testing.assert_allclose(timed[name], np.asarray(value), rtol=0, atol=1e-4, err_msg=case.layout)


def test_importing_the_harness_does_not_import_jax():
    """jax loads only when a JAX case is prepared: not with numba_bn, its benchmark table or its command line."""
    code = ("import sys\n"
            "import numba_bn, numba_bn.bench, numba_bn.bench.implementations, numba_bn.cli\n"
            "assert 'jax' not in sys.modules, 'jax was imported'\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                               cwd=Path(__file__).resolve().parent.parent)
    assert completed.returncode == 0, completed.stderr


def test_extra_cases_are_the_fused_shapes_and_every_eval_out_shape():
    extra = build_extra_cases([(8, 4, 6, 6), (16, 8)], fused_shapes=[(4, 3, 5, 5)])
    fused = [case for case in extra if case.operation != "eval_out"]
    assert [(case.operation, case.shape, case.layout) for case in fused] == [
        ("train_forward_add_relu", (4, 3, 5, 5), "channels_first"),
        ("train_backward_add_relu", (4, 3, 5, 5), "channels_first"),
        ("eval_out_add_relu", (4, 3, 5, 5), "channels_first"),
    ]
    assert [(case.shape, case.layout) for case in extra if case.operation == "eval_out"] == [
        ((8, 4, 6, 6), "channels_first"), ((8, 4, 6, 6), "channels_last"), ((16, 8), "channels_first"),
    ]
    # Only the fused operations have a residual.
    for case in extra:
        assert (make_case_data(case).residual is not None) == (case.operation in RESIDUAL_OPERATIONS)


def test_runner_times_only_the_implementations_that_run_an_operation():
    from numba_bn.bench.report import MIN_COPIES
    from numba_bn.bench.runner import run_cases

    cases = [Case("eval_out_add_relu", (8, 4, 6, 6)), Case("eval_forward", (8, 4, 6, 6))]
    fused, plain = run_cases(cases, min_repeats=2, budget=0.001, min_sample_seconds=1e-5)
    available = {impl.name for impl in implementations("cpu")}
    assert set(fused.timings) == available - {"numpy", "jax"}
    assert set(plain.timings) == available
    # JAX computes in float32: a float64 case times the others only.
    (double,) = run_cases([Case("eval_forward", (8, 4), dtype="float64")], min_repeats=2, budget=0.001,
                          min_sample_seconds=1e-5)
    assert set(double.timings) == available - {"jax"}
    # The roofline scales the copy by the operation's own traffic: x and z read, y written.
    assert MIN_COPIES["eval_out_add_relu"] == 1.5
    assert fused.roofline_fraction() == pytest.approx(1.5 * fused.time(ROOFLINE) / fused.time("numba_bn"))
