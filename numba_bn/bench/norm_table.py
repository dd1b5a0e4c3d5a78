"""The normalisation family's benchmark table: cases, and every way to run each of them.

Like BatchNorm's table (``cases``, ``implementations``), one table serves the
benchmarks (``benchmarks/test_bench_norms.py``) and the correctness test that
checks every benchmarked path against a float64 reference
(``tests/test_bench_norm_table.py``). Implementations: numba_bn's modules,
PyTorch's modules (autograd backward, the graph built once), JAX (``jax.jit``
of the formulas and ``jax.vjp``), plain NumPy (the two-pass formulas a NumPy
user writes) and the copy roofline (an input-sized copy into a preallocated
array). ``prepare`` does every set-up outside the timed region.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

import numba_bn as nbn

EPS = 1e-5

GROUP_NORM = "group_norm"
LAYER_NORM = "layer_norm"
FORWARD = "forward"
BACKWARD = "backward"

OURS = "numba_bn"
ROOFLINE = "copy"

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class NormCase:
    """One measurement: a GroupNorm (``groups``) or LayerNorm (``normalized``) pass on ``shape``, float32."""

    operation: str
    direction: str
    shape: tuple[int, ...]
    groups: int = 0  # GroupNorm
    normalized: tuple[int, ...] = ()  # LayerNorm

    @property
    def name(self) -> str:
        kind = f"GroupNorm({self.groups},{self.shape[1]})" if self.operation == GROUP_NORM else (
            f"LayerNorm({','.join(map(str, self.normalized))})"
        )
        return f"{kind} {self.direction} {'x'.join(map(str, self.shape))}"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 4

    @property
    def parameter_shape(self) -> tuple[int, ...]:
        return (self.shape[1],) if self.operation == GROUP_NORM else self.normalized

    @property
    def minimum_passes(self) -> int:
        """Input-sized arrays read or written at the least: x and y forward; x, dy and dx backward."""
        return 2 if self.direction == FORWARD else 3

    def smaller(self) -> "NormCase":
        """A small stand-in with the same kind of grouping, for plain pytest runs."""
        if self.operation == GROUP_NORM:
            shape = (2, self.shape[1]) + tuple(min(n, 3) for n in self.shape[2:])
            return NormCase(self.operation, self.direction, shape, groups=self.groups)
        return NormCase(self.operation, self.direction, (2,) + self.normalized, normalized=self.normalized)


def _pair(operation, shape, **grouping):
    return [NormCase(operation, direction, shape, **grouping) for direction in (FORWARD, BACKWARD)]


#: The README's rows: GroupNorm in a detection/segmentation network, a transformer's LayerNorm,
#: and a small LayerNorm call whose fixed per-call costs matter.
NORM_CASES: tuple[NormCase, ...] = tuple(
    _pair(GROUP_NORM, (16, 256, 28, 28), groups=32)
    + _pair(LAYER_NORM, (64, 128, 1024), normalized=(1024,))
    + _pair(LAYER_NORM, (8, 4096), normalized=(4096,))
)


@dataclass(frozen=True)
class NormData:
    x: np.ndarray
    grad_output: np.ndarray
    weight: np.ndarray
    bias: np.ndarray


def make_norm_data(case: NormCase, seed: int = 0) -> NormData:
    """The case's input, output gradient and affine parameters (float32, from ``seed``)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(case.shape, dtype=np.float32) * 2 + 1).astype(np.float32)
    grad_output = rng.standard_normal(case.shape, dtype=np.float32)
    weight = rng.uniform(0.5, 1.5, case.parameter_shape).astype(np.float32)
    bias = rng.standard_normal(case.parameter_shape, dtype=np.float32)
    return NormData(x, grad_output, weight, bias)


@dataclass(frozen=True)
class Prepared:
    run: Callable[[], Any]
    collect: Callable[[Any], Outputs]


@dataclass(frozen=True)
class NormImplementation:
    name: str
    description: str
    prepare: Callable[[NormCase, NormData], Prepared]
    requires: tuple[str, ...] = ()

    def is_available(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.requires)


def _outputs(names):
    def collect(result):
        return {name: np.asarray(value, dtype=np.float64) for name, value in zip(names, result)}

    return collect


_FORWARD_OUTPUTS = ("y",)
_BACKWARD_OUTPUTS = ("grad_input", "grad_weight", "grad_bias")


def _prepare_numba_bn(case: NormCase, data: NormData) -> Prepared:
    if case.operation == GROUP_NORM:
        module = nbn.GroupNorm(case.groups, case.shape[1], EPS)
    else:
        module = nbn.LayerNorm(case.normalized, EPS)
    module.load_state_dict({"weight": data.weight, "bias": data.bias})
    if case.direction == FORWARD:
        def forward():
            with nbn.no_grad():  # as PyTorch's side runs it: nothing is kept for a backward
                return (module(data.x),)

        return Prepared(forward, _outputs(_FORWARD_OUTPUTS))
    module(data.x)

    def run():
        grad_input = module.backward(data.grad_output)
        return grad_input, module.grad_weight, module.grad_bias

    return Prepared(run, _outputs(_BACKWARD_OUTPUTS))


def _prepare_torch(case: NormCase, data: NormData) -> Prepared:
    import torch

    if case.operation == GROUP_NORM:
        module = torch.nn.GroupNorm(case.groups, case.shape[1], EPS)
    else:
        module = torch.nn.LayerNorm(case.normalized, EPS)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(data.weight))
        module.bias.copy_(torch.from_numpy(data.bias))
    x = torch.from_numpy(data.x)
    if case.direction == FORWARD:
        def forward():
            with torch.no_grad():
                return (module(x),)

        return Prepared(forward, _outputs(_FORWARD_OUTPUTS))
    leaf = x.clone().requires_grad_()
    y = module(leaf)
    grad_output = torch.from_numpy(data.grad_output)
    inputs = (leaf, module.weight, module.bias)

    def run():
        return torch.autograd.grad(y, inputs, grad_output, retain_graph=True)

    return Prepared(run, lambda result: _outputs(_BACKWARD_OUTPUTS)([t.numpy() for t in result]))


def _numpy_rows(case: NormCase, x: np.ndarray) -> np.ndarray:
    if case.operation == GROUP_NORM:
        return x.reshape(case.shape[0] * case.groups, -1)
    return x.reshape(-1, math.prod(case.normalized))


def _numpy_affine(case: NormCase, vector: np.ndarray) -> np.ndarray:
    if case.operation == GROUP_NORM:
        return vector.reshape((1, -1) + (1,) * (len(case.shape) - 2))
    return vector


def _prepare_numpy(case: NormCase, data: NormData) -> Prepared:
    """The formulas as a NumPy user writes them: mean, then variance, in the data's float32."""
    weight, bias = _numpy_affine(case, data.weight), _numpy_affine(case, data.bias)

    def normalized(x):
        rows = _numpy_rows(case, x)
        mean = rows.mean(axis=1, keepdims=True)
        invstd = 1.0 / np.sqrt(rows.var(axis=1, keepdims=True) + np.float32(EPS))
        return ((rows - mean) * invstd).reshape(x.shape), invstd

    if case.direction == FORWARD:
        return Prepared(lambda: (normalized(data.x)[0] * weight + bias,), _outputs(_FORWARD_OUTPUTS))
    reduce_axes = (0,) + tuple(range(2, len(case.shape))) if case.operation == GROUP_NORM else tuple(
        range(len(case.shape) - len(case.normalized))
    )

    def run():
        xhat, invstd = normalized(data.x)
        dy = data.grad_output
        g = _numpy_rows(case, dy * weight)
        xr = _numpy_rows(case, xhat)
        grad_rows = invstd * (g - g.mean(axis=1, keepdims=True) - xr * (g * xr).mean(axis=1, keepdims=True))
        return grad_rows.reshape(case.shape), (dy * xhat).sum(axis=reduce_axes), dy.sum(axis=reduce_axes)

    return Prepared(run, _outputs(_BACKWARD_OUTPUTS))


def _prepare_jax(case: NormCase, data: NormData) -> Prepared:
    """``jax.jit`` of the formulas on JAX's CPU device; each timed call waits for its results."""
    import jax

    device = jax.devices("cpu")[0]
    shape = case.shape
    if case.operation == GROUP_NORM:
        row_shape = (shape[0], case.groups, -1)
        affine_shape = (1, -1) + (1,) * (len(shape) - 2)
    else:
        row_shape = (-1, math.prod(case.normalized))
        affine_shape = case.normalized

    def forward(x, weight, bias):
        rows = x.reshape(row_shape)
        mean = rows.mean(axis=-1, keepdims=True)
        var = ((rows - mean) ** 2).mean(axis=-1, keepdims=True)
        xhat = ((rows - mean) * jax.lax.rsqrt(var + EPS)).reshape(shape)
        return xhat * weight.reshape(affine_shape) + bias.reshape(affine_shape)

    x, dy, weight, bias = (jax.device_put(a, device) for a in (data.x, data.grad_output, data.weight, data.bias))
    if case.direction == FORWARD:
        compiled = jax.jit(forward)

        def run():
            return (compiled(x, weight, bias).block_until_ready(),)
    else:
        @jax.jit
        def backward(x, weight, bias, dy):
            _, vjp = jax.vjp(forward, x, weight, bias)
            return vjp(dy)

        def run():
            return jax.block_until_ready(backward(x, weight, bias, dy))

    run()  # compiled here, untimed
    return Prepared(run, lambda result: _outputs(
        _FORWARD_OUTPUTS if case.direction == FORWARD else _BACKWARD_OUTPUTS)([np.asarray(r) for r in result]))


def _prepare_copy(case: NormCase, data: NormData) -> Prepared:
    out = np.empty_like(data.x)
    return Prepared(lambda: np.copyto(out, data.x), lambda result: {})


NORM_IMPLEMENTATIONS: Mapping[str, NormImplementation] = {
    impl.name: impl
    for impl in (
        NormImplementation(OURS, "numba_bn's modules", _prepare_numba_bn),
        NormImplementation("torch", "PyTorch's modules (CPU, autograd backward)", _prepare_torch, ("torch",)),
        NormImplementation("jax", "jax.jit of the formulas (CPU)", _prepare_jax, ("jax",)),
        NormImplementation("numpy", "NumPy, two passes in float32", _prepare_numpy),
        NormImplementation(ROOFLINE, "an input-sized copy (the bandwidth roofline)", _prepare_copy),
    )
}


def summarize(benchmark_json: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per case of a pytest-benchmark JSON: each peer's median time over numba_bn's (speedup) and the
    fraction of the copy roofline numba_bn reaches (minimum traffic at the copy's bandwidth)."""
    medians: dict[str, dict[str, float]] = {}
    passes: dict[str, int] = {}
    for entry in benchmark_json["benchmarks"]:
        info = entry["extra_info"]
        if info.get("family") != "norms":
            continue
        medians.setdefault(entry["group"], {})[info["implementation"]] = entry["stats"]["median"]
        passes[entry["group"]] = info["minimum_passes"]
    summary = {}
    for group, times in medians.items():
        ours = times.get(OURS)
        if not ours:
            continue
        row = {f"vs_{name}": time / ours for name, time in times.items() if name not in (OURS, ROOFLINE)}
        if ROOFLINE in times:
            row["roofline_fraction"] = times[ROOFLINE] * passes[group] / 2 / ours
        summary[group] = row
    return summary
