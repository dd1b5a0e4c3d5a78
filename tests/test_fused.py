"""Fused activation and residual: ``relu(bn(x) + residual)`` in one pass, on both devices.

Checks, for BatchNorm1d (``(N, C)`` and ``(N, C, L)``), 2d and 3d, channels
first and last, float32, float64 and float16-in-float32, the affine/tracking
flags, training and evaluation, ReLU with and without a residual and a
residual without ReLU:

* sequences of forwards and backward calls against the float64 reference
  (``reference.ref_fused_*``) and PyTorch autograd of ``relu(bn(x) + z)``:
  outputs, running buffers, ``num_batches_tracked``, ``grad_input``,
  ``grad_residual``, ``grad_weight`` and ``grad_bias``;
* any memory layout of the input and the residual, and ``out=`` (a strided
  buffer, the input, the residual);
* the ReLU's edge cases: ties at exactly 0 (gradient 0, as PyTorch), NaN and
  infinities in the input or the residual (where the ReLU's input is NaN the
  gradient passes, as with torch's ReLU);
* what is kept between forward and backward (a bit mask, no float copy);
* rejected arguments, which change nothing;
* the functional ``batch_norm`` with ``activation``/``residual``/``out``;
* inputs large and odd enough for the parallel CPU kernels, whose work units
  then do not start on a byte of the mask.

CUDA runs in the simulator on tiny inputs with tiny blocks (see conftest).
Random residuals are nudged away from ``bn(x) + residual == 0`` (the reference
knows ``bn(x)`` before the forward), so that rounding never decides the ReLU's
mask; the tie tests build exact zeros on purpose.
"""

import gc
import re
import tracemalloc

import numpy as np
import pytest

import numba_bn as nbn
from checks import make_pair
from cuda_support import needs_cuda
from devices import CPU, CUDA, DEVICES, host, is_contiguous, is_on, to_device
from inputs import layout_shape, memory_layout, random_input
from matrix import AXES, DTYPES, cases
from reference import (
    ref_batch_stats,
    ref_fused_backward_eval,
    ref_fused_backward_train,
    ref_fused_forward,
    ref_fused_pre_activation,
    ref_running_update,
)

# Tiny CUDA blocks for every test (the CPU ignores them): several blocks per channel, fast in the simulator.
pytestmark = pytest.mark.usefixtures("small_cuda_blocks")

#: IEEE specials on purpose (NaN, inf, eps=0): the CUDA simulator computes with NumPy scalars, which warn.
ieee_specials = pytest.mark.filterwarnings("ignore::RuntimeWarning")

#: (activation, with a residual?)
FUSIONS = [
    pytest.param("relu", True, id="relu+residual"),
    pytest.param("relu", False, id="relu"),
    pytest.param(None, True, id="residual"),
]

#: (module class, channels-first shape); channel_axis=-1 moves axis 1 last.
LAYOUTS = [
    pytest.param(nbn.BatchNorm1d, (7, 5), id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (6, 3, 11), id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 7), id="2d"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 3, 5, 6), id="3d"),
]
#: The CUDA simulator's: tiny.
CUDA_LAYOUTS = [
    pytest.param(nbn.BatchNorm1d, (9, 3), id="1d-NC"),
    pytest.param(nbn.BatchNorm2d, (3, 2, 3, 4), id="2d"),
    pytest.param(nbn.BatchNorm3d, (2, 2, 2, 3, 2), id="3d"),
]
FLAGS = [
    pytest.param({"affine": False}, id="noaffine"),
    pytest.param({"track_running_stats": False}, id="notrack"),
    pytest.param({"bias": False, "momentum": None}, id="nobias-cumavg"),
    pytest.param({"affine": False, "track_running_stats": False, "eps": 0.25}, id="noaffine-notrack-eps"),
]

#: Two training steps, then evaluation; a repeated backward must overwrite, not accumulate.
STEPS = ["train", "backward", "train", "backward", "backward", "eval", "backward"]
CUDA_STEPS = ["train", "backward", "eval", "backward"]

#: (rtol, atol / max(|expected|, 1)) per result dtype. Against the reference, float16
#: results are computed in float32 and rounded once; PyTorch rounds float16 after every
#: operation (batch norm, add, relu), so against it float16 gets half precision's tolerance.
REFERENCE_TOL = {np.dtype(np.float64): (1e-10, 1e-10), np.dtype(np.float32): (1e-5, 1e-5),
                 np.dtype(np.float16): (2.0**-11 * 1.001, 1e-5)}
TORCH_TOL = {np.dtype(np.float64): (1e-10, 1e-10), np.dtype(np.float32): (1e-5, 1e-5),
             np.dtype(np.float16): (2e-3, 2e-3)}

#: How far from 0 random pre-activations are kept (see the module docstring).
TIE_MARGIN = 0.01


# ------------------------------------------------------------------ helpers


def assert_matches(actual, expected, dtype, tol, what):
    """``actual`` (host or device) close to ``expected``, NaN where it is NaN, with ``tol[dtype]``."""
    expected = np.asarray(expected, dtype=np.float64)
    rtol, atol = tol[np.dtype(dtype)]
    finite = expected[np.isfinite(expected)]
    scale = max(float(np.max(np.abs(finite), initial=0.0)), 1.0)
    np.testing.assert_allclose(host(actual).astype(np.float64), expected, rtol=rtol, atol=atol * scale,
                               err_msg=what)


def assert_fresh(actual, like, device, what, *others):
    """A new C-contiguous array of ``device`` with ``like``'s shape and dtype, sharing memory with
    none of ``others`` (host arrays)."""
    assert is_on(actual, device), (what, type(actual))
    assert tuple(actual.shape) == like.shape and actual.dtype == like.dtype, (what, actual.shape, actual.dtype)
    assert is_contiguous(actual), what
    if device == "cpu":
        for other in (like, *others):
            assert other is None or not np.shares_memory(actual, other), what


def split_gradients(result, with_residual, what):
    """``(grad_input, grad_residual or None)`` from what ``backward`` returned."""
    if with_residual:
        assert isinstance(result, tuple) and len(result) == 2, (what, type(result))
        return result
    assert not isinstance(result, tuple), (what, type(result))
    return result, None


class FusedReference:
    """The float64 oracle for a module: parameters, running buffers, counter and mode as
    ``torch.nn.BatchNorm*d``, with the fused residual and activation on top."""

    tol = REFERENCE_TOL

    def __init__(self, ref, activation):
        self.ref, self.relu = ref, activation == "relu"
        self._last = None

    def train(self, mode):
        self.ref.train(mode)

    def _statistics(self, x):
        ref = self.ref
        if ref.training or not ref.track_running_stats:
            return True, ref_batch_stats(x, ref.channel_axis)[:2]
        return False, (ref.running_mean, ref.running_var)

    def pre_activation(self, x, residual):
        """``bn(x) + residual`` as the next forward will compute it (before any buffer update)."""
        _, (mean, var) = self._statistics(x)
        ref = self.ref
        return ref_fused_pre_activation(x, mean, var, ref.weight, ref.bias, ref.eps, ref.channel_axis, residual)

    def forward(self, x, residual):
        ref = self.ref
        batch, (mean, var) = self._statistics(x)
        self._last = (x, residual, batch, mean, var, ref.weight, ref.bias)
        ref.forward(x)  # buffers and counter
        return ref_fused_forward(x, mean, var, ref.weight, ref.bias, ref.eps, ref.channel_axis, residual, self.relu)

    def backward(self, dy):
        ref = self.ref
        x, residual, batch, mean, var, weight, bias = self._last
        if batch:
            grads = ref_fused_backward_train(x, dy, weight, ref.eps, ref.channel_axis, residual, self.relu, bias=bias)
        else:
            grads = ref_fused_backward_eval(x, dy, mean, var, weight, ref.eps, ref.channel_axis, residual, self.relu,
                                            bias=bias)
        dx, dz, dw, db = grads
        if ref.affine:
            ref.grad_weight, ref.grad_bias = dw, (db if ref.bias is not None else None)
        return dx, dz

    def state(self):
        ref = self.ref
        return {"running_mean": ref.running_mean, "running_var": ref.running_var,
                "num_batches_tracked": ref.num_batches_tracked, "grad_weight": ref.grad_weight,
                "grad_bias": ref.grad_bias}


class TorchFused:
    """PyTorch autograd of ``relu(bn(x) + z)`` on our layout's data (channels-last data is given
    to torch as its channels-first view)."""

    tol = TORCH_TOL

    def __init__(self, torch, module, channel_axis, activation):
        self.torch, self.module, self.relu = torch, module, activation == "relu"
        self.channels_last = channel_axis == -1
        self._graph = None

    def _view(self, tensor):
        return tensor.movedim(-1, 1) if self.channels_last and tensor.dim() > 2 else tensor

    def _ours(self, tensor):
        array = tensor.detach().numpy()
        return np.moveaxis(array, 1, -1) if self.channels_last and array.ndim > 2 else array

    def train(self, mode):
        self.module.train(mode)

    def forward(self, x, residual):
        torch = self.torch
        leaf = torch.from_numpy(x.copy()).requires_grad_(True)
        z = None if residual is None else torch.from_numpy(residual.copy()).requires_grad_(True)
        pre = self.module(self._view(leaf))
        if z is not None:
            pre = pre + self._view(z)
        y = torch.relu(pre) if self.relu else pre
        self._graph = (y, leaf, z)
        return self._ours(y)

    def backward(self, dy):
        y, leaf, z = self._graph
        self.module.zero_grad(set_to_none=True)
        for tensor in (leaf, z):
            if tensor is not None:
                tensor.grad = None
        y.backward(self._view(self.torch.from_numpy(dy.copy())), retain_graph=True)
        return leaf.grad.numpy(), None if z is None else z.grad.numpy()

    def state(self):
        module = self.module
        as_array = lambda t: None if t is None else t.detach().numpy()
        counter = module.num_batches_tracked
        return {"running_mean": as_array(module.running_mean), "running_var": as_array(module.running_var),
                "num_batches_tracked": None if counter is None else int(counter),
                "grad_weight": None if module.weight is None else as_array(module.weight.grad),
                "grad_bias": None if module.bias is None else as_array(module.bias.grad)}


def torch_twin(torch, bn):
    """A ``torch.nn.BatchNorm*d`` with ``bn``'s flags and (CPU) values."""
    cls = {nbn.BatchNorm1d: torch.nn.BatchNorm1d, nbn.BatchNorm2d: torch.nn.BatchNorm2d,
           nbn.BatchNorm3d: torch.nn.BatchNorm3d}[type(bn)]
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[bn.dtype]
    twin = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
               track_running_stats=bn.track_running_stats, dtype=dtype)
    if bn.affine and bn.bias is None:
        twin.bias = None  # torch's modules have no bias=False: a constant 0 shift instead
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(bn, name)
            if value is not None:
                getattr(twin, name).copy_(torch.from_numpy(host(value)))
    return twin


def nudged_residual(rng, oracle, x, dtype):
    """A random residual of ``x``'s shape, moved where ``bn(x) + residual`` would be within
    ``TIE_MARGIN`` of 0."""
    residual = rng.standard_normal(x.shape).astype(dtype)
    pre = oracle.pre_activation(x, residual)
    return (residual + np.where(np.abs(pre) < TIE_MARGIN, 3 * TIE_MARGIN, 0.0)).astype(dtype)


def check_state(bn, oracles, what):
    """Running buffers, counter and parameter gradients against every oracle."""
    for oracle in oracles:
        expected = oracle.state()
        assert bn.num_batches_tracked == expected.pop("num_batches_tracked"), what
        for name, value in expected.items():
            actual = getattr(bn, name)
            assert (actual is None) == (value is None), f"{what}: {name}"
            if value is not None:
                assert is_on(actual, bn.device) and actual.dtype == bn.dtype, f"{what}: {name}"
                assert_matches(actual, value, bn.dtype, oracle.tol, f"{what}: {name}")


def run_fused_sequence(bn, oracles, rng, shape, channel_axis, input_dtype, with_residual, steps=STEPS):
    """Run ``steps`` on the module and on every oracle (the first one is the reference, which
    also nudges the residuals), comparing after every step."""
    device = bn.device
    x = residual = None
    for i, step in enumerate(steps):
        what = f"step {i} ({step})"
        if step == "backward":
            dy = rng.standard_normal(x.shape).astype(input_dtype)
            dx, dz = split_gradients(bn.backward(to_device(dy, device)), with_residual, what)
            assert_fresh(dx, x, device, f"{what}: grad_input", dy, residual)
            if with_residual:
                assert_fresh(dz, x, device, f"{what}: grad_residual", dy, residual)
            for oracle in oracles:
                dx_expected, dz_expected = oracle.backward(dy)
                assert_matches(dx, dx_expected, input_dtype, oracle.tol, f"{what}: grad_input")
                if with_residual:
                    assert_matches(dz, dz_expected, input_dtype, oracle.tol, f"{what}: grad_residual")
        else:
            bn.train(step == "train")
            for oracle in oracles:
                oracle.train(step == "train")
            x = random_input(rng, shape, channel_axis, input_dtype)
            residual = nudged_residual(rng, oracles[0], x, input_dtype) if with_residual else None
            y = bn(to_device(x, device), None if residual is None else to_device(residual, device))
            assert_fresh(y, x, device, f"{what}: output", residual)
            for oracle in oracles:
                assert_matches(y, oracle.forward(x, residual), input_dtype, oracle.tol, f"{what}: output")
        check_state(bn, oracles, what)


def fused_pair(cls, shape, channel_axis, module_dtype, activation, rng, device="cpu", **flags):
    """A module with ``activation`` and random parameters/buffers on ``device``, and its reference."""
    bn, ref = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng, device, activation=activation,
                        **flags)
    return bn, FusedReference(ref, activation)


# ---------------------------------------------------------------- sequences

SEQUENCE_CASES = (
    cases([CPU], LAYOUTS, AXES, DTYPES[:1], FUSIONS, [pytest.param({}, id="default")])
    + cases([CPU], LAYOUTS[2:3], AXES, DTYPES[1:], FUSIONS, [pytest.param({}, id="default")])
    + cases([CPU], LAYOUTS[1::2], AXES, DTYPES[:1], FUSIONS[:1], FLAGS)
    + cases([CPU], LAYOUTS[2:3], AXES[:1], DTYPES[1:], FUSIONS[:1], FLAGS[:2])
    + cases([CUDA], CUDA_LAYOUTS[1:2], AXES, DTYPES[:1], FUSIONS, [pytest.param({}, id="default")])
    + cases([CUDA], CUDA_LAYOUTS[::2], AXES[1:], DTYPES[1:], FUSIONS[:1], FLAGS[1:2])
)


@pytest.mark.parametrize("device, cls, shape_cf, channel_axis, module_dtype, input_dtype, activation, "
                         "with_residual, flags", SEQUENCE_CASES)
def test_sequence_matches_reference(device, cls, shape_cf, channel_axis, module_dtype, input_dtype, activation,
                                    with_residual, flags):
    rng = np.random.default_rng([*shape_cf, channel_axis + 1])
    shape = layout_shape(shape_cf, channel_axis)
    bn, ref = fused_pair(cls, shape, channel_axis, module_dtype, activation, rng, device, **flags)
    run_fused_sequence(bn, [ref], rng, shape, channel_axis, input_dtype, with_residual,
                       STEPS if device == "cpu" else CUDA_STEPS)


TORCH_CASES = (
    cases(LAYOUTS[:2] + LAYOUTS[3:], AXES, DTYPES[:1], FUSIONS[:1], [pytest.param({}, id="default")])
    + cases(LAYOUTS[2:3], AXES, DTYPES, FUSIONS, [pytest.param({}, id="default")])
    + cases(LAYOUTS[1:2], AXES[1:], DTYPES[:1], FUSIONS[:1], FLAGS)
)


@pytest.mark.parametrize("cls, shape_cf, channel_axis, module_dtype, input_dtype, activation, with_residual, flags",
                         TORCH_CASES)
def test_sequence_matches_torch(cls, shape_cf, channel_axis, module_dtype, input_dtype, activation, with_residual,
                                flags):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng([*shape_cf, channel_axis + 2])
    shape = layout_shape(shape_cf, channel_axis)
    bn, ref = fused_pair(cls, shape, channel_axis, module_dtype, activation, rng, **flags)
    theirs = TorchFused(torch, torch_twin(torch, bn), channel_axis, activation)
    run_fused_sequence(bn, [ref, theirs], rng, shape, channel_axis, input_dtype, with_residual)


def test_reference_matches_torch_autograd():
    """The fused reference itself, against torch autograd in float64: train and eval, with and
    without the residual and the ReLU, affine or not, channels first and last."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(31)
    for channel_axis, relu, with_residual, affine, training in [
        (1, True, True, True, True), (-1, True, True, True, False), (1, True, False, False, True),
        (-1, False, True, True, True), (1, True, True, False, False),
    ]:
        shape = layout_shape((4, 3, 5, 6), channel_axis)
        x = random_input(rng, shape, channel_axis, np.float64)
        z = rng.standard_normal(shape) if with_residual else None
        dy = rng.standard_normal(shape)
        weight, bias = (rng.uniform(0.5, 2, 3), rng.standard_normal(3)) if affine else (None, None)
        running_mean, running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
        eps = 1e-3
        view = (lambda t: t.movedim(-1, 1)) if channel_axis == -1 else (lambda t: t)
        tensor = lambda a: None if a is None else torch.from_numpy(a.copy())
        leaves = [tensor(a) for a in (x, z, weight, bias)]
        for leaf in leaves:
            if leaf is not None:
                leaf.requires_grad_(True)
        x_t, z_t, w_t, b_t = leaves
        pre = F.batch_norm(view(x_t), tensor(running_mean), tensor(running_var), w_t, b_t, training=training,
                           eps=eps)
        if z_t is not None:
            pre = pre + view(z_t)
        y_t = torch.relu(pre) if relu else pre
        y_t.backward(view(torch.from_numpy(dy)))

        mean, var = ref_batch_stats(x, channel_axis)[:2] if training else (running_mean, running_var)
        y = ref_fused_forward(x, mean, var, weight, bias, eps, channel_axis, z, relu)
        if training:
            grads = ref_fused_backward_train(x, dy, weight, eps, channel_axis, z, relu, bias=bias)
        else:
            grads = ref_fused_backward_eval(x, dy, running_mean, running_var, weight, eps, channel_axis, z, relu,
                                            bias=bias)
        what = f"channel_axis={channel_axis} relu={relu} residual={with_residual} affine={affine} train={training}"
        y_expected = y_t.detach().numpy()
        y_expected = np.moveaxis(y_expected, 1, -1) if channel_axis == -1 else y_expected
        np.testing.assert_allclose(y, y_expected, rtol=1e-12, atol=1e-12, err_msg=what)
        expected = [x_t.grad.numpy(), None if z_t is None else z_t.grad.numpy(),
                    None if w_t is None else w_t.grad.numpy(), None if b_t is None else b_t.grad.numpy()]
        for name, actual, wanted in zip(("dx", "dz", "dw", "db"), grads, expected):
            if wanted is None:
                assert name in ("dw", "db") or actual is None, (what, name)
                continue
            np.testing.assert_allclose(actual, wanted, rtol=1e-10, atol=1e-10, err_msg=f"{what}: {name}")
        assert not relu or np.any(y == 0), what  # the ReLU really cut something


@pytest.mark.parametrize("device", DEVICES)
def test_residual_then_none_then_residual(device):
    """What backward returns follows the most recent forward: a tuple only after a residual."""
    rng = np.random.default_rng(32)
    shape = (3, 2, 3, 4)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, 1, np.float32, "relu", rng, device)
    for with_residual in (True, False, True):
        x = random_input(rng, shape, 1, np.float32)
        residual = nudged_residual(rng, ref, x, np.float32) if with_residual else None
        y = bn.forward(to_device(x, device), residual=None if residual is None else to_device(residual, device))
        assert_matches(y, ref.forward(x, residual), np.float32, REFERENCE_TOL, "output")
        dy = rng.standard_normal(shape).astype(np.float32)
        dx, dz = split_gradients(bn.backward(to_device(dy, device)), with_residual, "backward")
        dx_expected, dz_expected = ref.backward(dy)
        assert_matches(dx, dx_expected, np.float32, REFERENCE_TOL, "grad_input")
        if with_residual:
            assert_matches(dz, dz_expected, np.float32, REFERENCE_TOL, "grad_residual")


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_forward_keeps_nothing(device):
    rng = np.random.default_rng(33)
    shape = (3, 2, 3, 4)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, 1, np.float32, "relu", rng, device)
    x = random_input(rng, shape, 1, np.float32)
    residual = nudged_residual(rng, ref, x, np.float32)
    with nbn.no_grad():
        y = bn(to_device(x, device), to_device(residual, device))
    assert_matches(y, ref.forward(x, residual), np.float32, REFERENCE_TOL, "output")
    with pytest.raises(RuntimeError, match=r"numba_bn\.no_grad\(\)"):
        bn.backward(to_device(np.ones(shape, np.float32), device))


def test_activation_in_repr():
    assert "activation='relu'" in repr(nbn.BatchNorm2d(3, activation="relu"))
    assert "activation=" not in repr(nbn.BatchNorm2d(3))  # as torch's repr


# ----------------------------------------------- grad_residual, exactly


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device", DEVICES)
def test_grad_residual_is_dy_masked_by_the_output(device, training, dtype):
    """With ReLU: dy where the output is positive, exactly, else 0. Without: a copy of dy."""
    rng = np.random.default_rng(34)
    shape = (3, 2, 3, 4)
    x = random_input(rng, shape, 1, dtype)
    residual = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    for activation in ("relu", None):
        bn = nbn.BatchNorm2d(2, dtype=dtype, activation=activation, device=device).train(training)
        y = host(bn(to_device(x, device), to_device(residual, device)))
        dy_in = to_device(dy, device)
        _, grad_residual = bn.backward(dy_in)
        assert grad_residual is not dy_in
        if activation == "relu":
            assert 0 < np.count_nonzero(y > 0) < y.size
            np.testing.assert_array_equal(host(grad_residual), np.where(y > 0, dy, 0))
        else:
            np.testing.assert_array_equal(host(grad_residual), dy)
            if device == "cpu":
                assert not np.shares_memory(grad_residual, dy)
                grad_residual[...] = 0
                assert np.count_nonzero(dy) == dy.size  # a new array: dy untouched


# ------------------------------------------------------------- layouts

#: (x's layout, the residual's layout): see inputs.memory_layout.
LAYOUT_PAIRS = [
    pytest.param("fortran", "c", id="fortran-c"),
    pytest.param("c", "fortran", id="c-fortran"),
    pytest.param("negative-strided", "sliced", id="negative-strided-sliced"),
    pytest.param("sliced", "negative", id="sliced-negative"),
    pytest.param("transposed", "strided", id="transposed-strided"),
    pytest.param("readonly", "readonly", id="readonly-readonly"),
]


@pytest.mark.parametrize(
    "device, x_kind, residual_kind, channel_axis",
    cases([CPU], LAYOUT_PAIRS, AXES) + cases([CUDA], LAYOUT_PAIRS[2:3], AXES[:1]),
)
def test_any_layout_of_input_and_residual(device, x_kind, residual_kind, channel_axis):
    rng = np.random.default_rng(35)
    shape = layout_shape((3, 3, 4, 5), channel_axis)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, channel_axis, np.float64, "relu", rng, device)
    for training in (True, False):
        bn.train(training)
        ref.train(training)
        values = random_input(rng, shape, channel_axis, np.float64)
        residual_values = nudged_residual(rng, ref, values, np.float64)
        x, residual = memory_layout(x_kind, values), memory_layout(residual_kind, residual_values, seed=1)
        y = bn(to_device(x, device), to_device(residual, device))
        assert_fresh(y, values, device, "output", x, residual)
        assert_matches(y, ref.forward(values, residual_values), np.float64, REFERENCE_TOL, "output")
        dy = memory_layout("negative", rng.standard_normal(shape))
        dx, dz = bn.backward(to_device(dy, device))
        dx_expected, dz_expected = ref.backward(dy)
        assert_matches(dx, dx_expected, np.float64, REFERENCE_TOL, "grad_input")
        assert_matches(dz, dz_expected, np.float64, REFERENCE_TOL, "grad_residual")
        np.testing.assert_array_equal(x, values)  # neither input was written
        np.testing.assert_array_equal(residual, residual_values)


# ------------------------------------------------------------------ out=


def _strided_buffer(shape, dtype, kind):
    if kind == "every other":
        return np.zeros(tuple(2 * n for n in shape), dtype)[tuple(slice(None, None, 2) for _ in shape)]
    if kind == "reversed":
        return np.zeros(shape, dtype)[::-1, :, ::-1]
    assert kind == "fortran", kind
    return np.zeros(shape, dtype, order="F")


@pytest.mark.parametrize(
    "device, kind",
    cases([CPU], [pytest.param(k, id=k) for k in ("every other", "reversed", "fortran")])
    + cases([CUDA], [pytest.param("reversed", id="reversed")]),
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_out_strided_buffer(device, kind, training):
    rng = np.random.default_rng(36)
    shape = (3, 2, 3, 4)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, 1, np.float32, "relu", rng, device)
    bn.train(training)
    ref.train(training)
    x = random_input(rng, shape, 1, np.float32)
    residual = nudged_residual(rng, ref, x, np.float32)
    out = to_device(_strided_buffer(shape, np.float32, kind), device)
    assert bn(to_device(x, device), to_device(residual, device), out=out) is out
    assert_matches(out, ref.forward(x, residual), np.float32, REFERENCE_TOL, "out")
    check_state(bn, [ref], "after the forward")
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dz = bn.backward(to_device(dy, device))
    dx_expected, dz_expected = ref.backward(dy)
    assert_matches(dx, dx_expected, np.float32, REFERENCE_TOL, "grad_input")
    assert_matches(dz, dz_expected, np.float32, REFERENCE_TOL, "grad_residual")


@pytest.mark.parametrize("activation", ["relu", None])
@pytest.mark.parametrize("device", DEVICES)
def test_out_is_the_input_then_backward_raises(device, activation):
    rng = np.random.default_rng(37)
    shape = (3, 2, 3, 4)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, 1, np.float32, activation, rng, device)
    x = random_input(rng, shape, 1, np.float32)
    residual = nudged_residual(rng, ref, x, np.float32)
    data = to_device(x.copy(), device)
    assert bn(data, to_device(residual, device), out=data) is data
    assert_matches(data, ref.forward(x, residual), np.float32, REFERENCE_TOL, "in place")
    check_state(bn, [ref], "after the in-place forward")
    with pytest.raises(ValueError, match=re.escape("out=x")):
        bn.backward(to_device(np.ones(shape, np.float32), device))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device", DEVICES)
def test_out_is_the_residual_then_backward_works(device, training):
    rng = np.random.default_rng(38)
    shape = (3, 2, 3, 4)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, 1, np.float32, "relu", rng, device)
    bn.train(training)
    ref.train(training)
    x = random_input(rng, shape, 1, np.float32)
    residual = nudged_residual(rng, ref, x, np.float32)
    target = to_device(residual.copy(), device)
    x_in = to_device(x, device)
    assert bn(x_in, target, out=target) is target
    assert_matches(target, ref.forward(x, residual), np.float32, REFERENCE_TOL, "in place")
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dz = bn.backward(to_device(dy, device))
    dx_expected, dz_expected = ref.backward(dy)
    assert_matches(dx, dx_expected, np.float32, REFERENCE_TOL, "grad_input")
    assert_matches(dz, dz_expected, np.float32, REFERENCE_TOL, "grad_residual")
    np.testing.assert_array_equal(host(x_in), x)


def test_out_is_a_strided_residual_in_place():
    """out= the residual when the residual is itself a negative-strided view."""
    rng = np.random.default_rng(39)
    shape = (4, 3, 5, 6)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, 1, np.float64, "relu", rng)
    x = random_input(rng, shape, 1, np.float64)
    values = nudged_residual(rng, ref, x, np.float64)
    residual = memory_layout("negative-strided", values)
    assert bn(x, residual, out=residual) is residual
    assert_matches(residual, ref.forward(x, values), np.float64, REFERENCE_TOL, "in place")
    dy = rng.standard_normal(shape)
    dx, dz = bn.backward(dy)
    dx_expected, dz_expected = ref.backward(dy)
    assert_matches(dx, dx_expected, np.float64, REFERENCE_TOL, "grad_input")
    assert_matches(dz, dz_expected, np.float64, REFERENCE_TOL, "grad_residual")


# ------------------------------------------------------------- edge cases


def _tie_module(device, training, eps):
    bn = nbn.BatchNorm2d(2, eps=eps, activation="relu", dtype=np.float64)
    bn.running_mean[...] = [3.0, -2.0]
    bn.running_var[...] = [1.0, 4.0]
    return bn.train(training).to(device)


def tie_data(training):
    """``(x, residual, eps, ties)``: ``bn(x) + residual`` is exactly 0 where ``ties`` (a quarter of
    channel 0), with weight 1 and bias 0: exact in any order of operations.

    Training: channel 0 is constant (mean exact, variance 0, eps=0.25 makes 1/sqrt(var+eps)
    exactly 2), so ``bn(x) == 0``. Eval: integers, running mean 3 and variance 1 with eps=0,
    so ``bn(x) == x - 3``. Channel 0's other places get a residual of +-1.5, away from 0.
    Channel 1 is ordinary integer data; in eval its ``bn(x) = (x + 2) / 2`` meets the residual's
    +-1.5 exactly at some places too: more exact ties, outside ``ties``.
    """
    rng = np.random.default_rng(40)
    shape = (4, 2, 3, 4)
    x = rng.integers(-5, 6, shape).astype(np.float64)
    if training:
        x[:, 0] = 1.5
        bn0 = np.zeros(shape[:1] + shape[2:])
    else:
        bn0 = x[:, 0] - 3.0
    residual = rng.choice([-1.5, 1.5], shape)
    ties = np.zeros(shape, bool)
    ties[:, 0] = rng.random(bn0.shape) < 0.25
    ties[0, 0, 0, 0] = True
    residual[:, 0] = np.where(ties[:, 0], -bn0, residual[:, 0])
    return x, residual, (0.25 if training else 0.0), ties


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device", DEVICES)
def test_ties_at_zero_get_no_gradient(device, training):
    x, residual, eps, ties = tie_data(training)
    bn = _tie_module(device, training, eps)
    y = host(bn(to_device(x, device), to_device(residual, device)))
    assert np.all(y[ties] == 0)  # the ties are exact
    dy = np.random.default_rng(41).uniform(1.0, 2.0, x.shape)  # positive: a tie's contribution cannot cancel
    dx, dz = bn.backward(to_device(dy, device))
    dz = host(dz)
    assert np.all(dz[ties] == 0)
    np.testing.assert_array_equal(dz, np.where(y > 0, dy, 0))
    # Everything else as the reference, whose mask is pre > 0 too.
    ref_bn = _tie_module("cpu", training, eps)
    mean, var = ref_batch_stats(x, 1)[:2] if training else (ref_bn.running_mean, ref_bn.running_var)
    if training:
        expected = ref_fused_backward_train(x, dy, ref_bn.weight, eps, 1, residual, True, bias=ref_bn.bias)
    else:
        expected = ref_fused_backward_eval(x, dy, mean, var, ref_bn.weight, eps, 1, residual, True, bias=ref_bn.bias)
    assert_matches(y, ref_fused_forward(x, mean, var, ref_bn.weight, ref_bn.bias, eps, 1, residual, True),
                   np.float64, REFERENCE_TOL, "output")
    for name, actual, wanted in zip(("grad_input", "grad_residual", "grad_weight", "grad_bias"),
                                    (dx, dz, bn.grad_weight, bn.grad_bias), expected):
        assert_matches(actual, wanted, np.float64, REFERENCE_TOL, name)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_ties_at_zero_match_torch(training):
    torch = pytest.importorskip("torch")
    x, residual, eps, ties = tie_data(training)
    bn = _tie_module("cpu", training, eps)
    theirs = TorchFused(torch, torch_twin(torch, bn), 1, "relu")
    theirs.train(training)
    y_expected = theirs.forward(x, residual)
    assert np.all(y_expected[ties] == 0)  # torch's ties are exact too
    y = bn(x, residual)
    np.testing.assert_array_equal(y == 0, y_expected == 0)
    dy = np.random.default_rng(41).uniform(1.0, 2.0, x.shape)
    dx, dz = bn.backward(dy)
    dx_expected, dz_expected = theirs.backward(dy)
    assert np.all(dz_expected[ties] == 0)
    np.testing.assert_array_equal(dz, dz_expected)
    assert_matches(dx, dx_expected, np.float64, TORCH_TOL, "grad_input")
    check_state(bn, [theirs], "after backward")


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_positive_float64_results_pass_the_gradient(device):
    """The mask is the float64 result's sign: 1e-300 > 0 (it would round to 0 in float32)."""
    bn = nbn.BatchNorm1d(2, eps=0.0, dtype=np.float64, activation="relu").eval().to(device)
    x = np.array([[1e-300, -1e-300], [1e-50, 2.0], [-3.0, 1e-310], [0.0, -0.0]])  # bn(x) == x: mean 0, var 1
    residual = np.array([[0.0, 0.0], [0.0, -2.0], [3.0 + 1e-15, 0.0], [1e-200, 0.0]])
    y = host(bn(to_device(x, device), to_device(residual, device)))
    pre = x + residual
    np.testing.assert_array_equal(y, np.maximum(pre, 0.0))
    dy = np.arange(1.0, 1.0 + x.size).reshape(x.shape)
    dx, dz = bn.backward(to_device(dy, device))
    np.testing.assert_array_equal(host(dz), np.where(pre > 0, dy, 0.0))
    np.testing.assert_array_equal(host(dx), np.where(pre > 0, dy, 0.0))  # eval: dy * weight / sqrt(1 + 0)


def _special_case(where, value, training, device):
    """A module and data with ``value`` (NaN or +-inf) at a few places of ``where`` ("x" or "residual")."""
    rng = np.random.default_rng(42)
    shape = (3, 2, 3, 4)
    bn, ref = fused_pair(nbn.BatchNorm2d, shape, 1, np.float64, "relu", rng, device)
    bn.train(training)
    ref.train(training)
    x = random_input(rng, shape, 1, np.float64)
    residual = nudged_residual(rng, ref, x, np.float64)
    places = (np.array([0, 2, 1]), np.array([0, 1, 1]), np.array([1, 2, 0]), np.array([3, 0, 2]))
    (x if where == "x" else residual)[places] = value
    return bn, ref, x, residual, places


SPECIALS = [
    pytest.param("residual", np.nan, True, id="nan-residual-train"),
    pytest.param("residual", np.nan, False, id="nan-residual-eval"),
    pytest.param("x", np.nan, True, id="nan-x-train"),
    pytest.param("x", np.nan, False, id="nan-x-eval"),
    pytest.param("residual", np.inf, True, id="inf-residual-train"),
    pytest.param("residual", -np.inf, False, id="minus-inf-residual-eval"),
    pytest.param("x", np.inf, False, id="inf-x-eval"),
    pytest.param("x", -np.inf, False, id="minus-inf-x-eval"),
]


@ieee_specials
@pytest.mark.parametrize(
    "device, where, value, training",
    cases([CPU], SPECIALS) + cases([CUDA], [SPECIALS[0], SPECIALS[3]]),
)
def test_nan_and_inf(device, where, value, training):
    """relu(NaN) is NaN; the gradient passes where the pre-activation is NaN and is 0 where it is -inf,
    as in torch."""
    bn, ref, x, residual, places = _special_case(where, value, training, device)
    y = host(bn(to_device(x, device), to_device(residual, device)))
    y_expected = ref.forward(x, residual)
    assert_matches(y, y_expected, np.float64, REFERENCE_TOL, "output")
    if np.isnan(value):
        assert np.all(np.isnan(y[places]))
    dy = np.random.default_rng(43).standard_normal(x.shape)
    dx, dz = bn.backward(to_device(dy, device))
    dx_expected, dz_expected = ref.backward(dy)
    dz = host(dz)
    assert_matches(dz, dz_expected, np.float64, REFERENCE_TOL, "grad_residual")
    if value < 0:
        assert np.all(dz[places] == 0)
    if np.isnan(value):
        np.testing.assert_array_equal(dz[places], dy[places])
    assert_matches(dx, dx_expected, np.float64, REFERENCE_TOL, "grad_input")
    if where == "residual" or not training:
        # One bad element: the other elements' gradients stay finite (a NaN batch statistic would not).
        finite_elsewhere = np.ones(x.shape, bool)
        finite_elsewhere[places] = False
        assert np.all(np.isfinite(host(dx)[finite_elsewhere]))
    if where == "residual":
        assert_matches(bn.grad_bias, ref.ref.grad_bias, np.float64, REFERENCE_TOL, "grad_bias")
        assert_matches(bn.grad_weight, ref.ref.grad_weight, np.float64, REFERENCE_TOL, "grad_weight")


@ieee_specials
@pytest.mark.parametrize("where, value, training", SPECIALS)
def test_nan_and_inf_match_torch(where, value, training):
    """The same values as torch's, whose ReLU passes the gradient where its input is NaN (its
    backward zeroes only where ``input <= 0``)."""
    torch = pytest.importorskip("torch")
    bn, ref, x, residual, _ = _special_case(where, value, training, "cpu")
    theirs = TorchFused(torch, torch_twin(torch, bn), 1, "relu")
    theirs.train(training)
    y_expected = theirs.forward(x, residual)
    assert_matches(bn(x, residual), y_expected, np.float64, TORCH_TOL, "output")
    dy = np.random.default_rng(43).standard_normal(x.shape)
    dx, dz = bn.backward(dy)
    dx_expected, dz_expected = theirs.backward(dy)
    assert_matches(dz, dz_expected, np.float64, TORCH_TOL, "grad_residual")
    assert_matches(dx, dx_expected, np.float64, TORCH_TOL, "grad_input")
    if where == "residual":  # parameter gradients are well defined there (x is finite)
        check_state(bn, [theirs], "after backward")


# ---------------------------------------------------------------- memory

#: Per-call bookkeeping: O(C) vectors, views, small objects.
FIXED_ALLOWANCE = 64 * 1024


def kept_bytes(call):
    """Traced bytes still allocated after ``call()`` (its result dropped) above those before it."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        call()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "no-residual"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_forward_keeps_at_most_an_eighth_of_the_input(dtype, with_residual, training):
    """Between forward and backward a ReLU module keeps a mask (1 bit per value), no float copy."""
    rng = np.random.default_rng(44)
    x = rng.standard_normal((8, 16, 64, 64)).astype(dtype)
    residual = rng.standard_normal(x.shape).astype(dtype) if with_residual else None
    bn = nbn.BatchNorm2d(16, activation="relu").train(training)
    bn.backward(bn(x, residual))  # compile, and settle any lazily created state

    def forward_and_drop_output():
        bn(x, residual)

    kept = kept_bytes(forward_and_drop_output)
    assert kept <= x.nbytes // 8 + FIXED_ALLOWANCE, f"{kept / x.nbytes:.3f}x the input"
    result = bn.backward(np.ones_like(x))  # what was kept is enough
    grad_input = result[0] if with_residual else result
    assert grad_input.shape == x.shape


# ---------------------------------------------------------------- errors


def public_state(bn):
    """Everything observable about a module, as host copies."""
    state = {key: host(value) for key, value in bn.state_dict().items()}
    state.update(grad_weight=host(bn.grad_weight), grad_bias=host(bn.grad_bias), training=bn.training,
                 num_batches_tracked=bn.num_batches_tracked)
    return state


def assert_same_state(bn, before):
    after = public_state(bn)
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert after[key] == value, key


def _trained_pair(device, training):
    """Two identical modules that have run the same fused forward (with a residual) and backward."""
    rng = np.random.default_rng(45)
    shape = (3, 2, 3, 4)
    x = random_input(rng, shape, 1, np.float32)
    residual = rng.standard_normal(shape).astype(np.float32)
    modules = []
    for _ in range(2):
        bn = nbn.BatchNorm2d(2, activation="relu", device=device)
        bn(to_device(x, device), to_device(residual, device))
        bn.backward(to_device(np.ones(shape, np.float32), device))
        bn.train(training)
        bn(to_device(x, device), to_device(residual, device))
        modules.append(bn)
    return modules, x


def _bad_residuals(x, device):
    """(residual, exception, message fragment) for every kind of wrong residual."""
    wrong_shape = np.zeros((x.shape[0] + 1, *x.shape[1:]), np.float32)
    return [
        (to_device(wrong_shape, device), ValueError, "shape"),
        (to_device(np.zeros(x.shape), device), TypeError, "float64"),
        (to_device(np.zeros(x.shape, np.float16), device), TypeError, "float16"),
        (np.zeros(x.shape, np.float32).tolist(), TypeError, "list"),
    ]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device", DEVICES)
def test_bad_residual_changes_nothing(device, training):
    """The error comes before any state change: buffers, counter, gradients and the recorded
    forward (backward afterwards gives what the untouched twin gives)."""
    (bn, twin), x = _trained_pair(device, training)
    dy = np.random.default_rng(46).standard_normal(x.shape).astype(np.float32)
    for residual, error, fragment in _bad_residuals(x, device):
        before = public_state(bn)
        with pytest.raises(error, match=re.escape(fragment)):
            bn(to_device(x + 1, device), residual)
        assert_same_state(bn, before)
    got, expected = bn.backward(to_device(dy, device)), twin.backward(to_device(dy, device))
    for name, a, b in zip(("grad_input", "grad_residual"), got, expected):
        np.testing.assert_array_equal(host(a), host(b), err_msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_float16_input_needs_a_float16_residual(device):
    bn = nbn.BatchNorm2d(2, activation="relu", device=device)
    x = np.random.default_rng(47).standard_normal((3, 2, 3, 4)).astype(np.float16)
    before = public_state(bn)
    with pytest.raises(TypeError, match="float32"):
        bn(to_device(x, device), to_device(x.astype(np.float32), device))
    assert_same_state(bn, before)


@needs_cuda
def test_cuda_residual_on_the_other_device_changes_nothing():
    from numba import cuda

    (bn, _), x = _trained_pair("cpu", True)
    before = public_state(bn)
    with pytest.raises(TypeError):
        bn(x, cuda.to_device(x))
    assert_same_state(bn, before)
    (bn, _), x = _trained_pair("cuda", True)
    before = public_state(bn)
    with pytest.raises(TypeError):
        bn(cuda.to_device(x), x)
    assert_same_state(bn, before)
    rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    with pytest.raises(TypeError):
        nbn.batch_norm(x, rm, rv, training=True, residual=cuda.to_device(x))
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


@pytest.mark.parametrize(
    "activation, error",
    [("gelu", ValueError), ("relu6", ValueError), (1, TypeError), (True, TypeError)],
)
def test_bad_activation(activation, error):
    with pytest.raises(error, match="activation"):
        nbn.BatchNorm2d(3, activation=activation)
    x = np.random.default_rng(48).standard_normal((4, 3, 2, 2)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.full(x.shape, 7.0, np.float32)
    with pytest.raises(error, match="activation"):
        nbn.batch_norm(x, rm, rv, training=True, activation=activation, out=out)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    np.testing.assert_array_equal(out, 7.0)


@pytest.mark.parametrize("device", DEVICES)
def test_functional_bad_residual_changes_nothing(device):
    x = np.random.default_rng(49).standard_normal((3, 2, 3, 4)).astype(np.float32)
    for residual, error, fragment in _bad_residuals(x, device):
        rm, rv = to_device(np.zeros(2, np.float32), device), to_device(np.ones(2, np.float32), device)
        out = to_device(np.full(x.shape, 7.0, np.float32), device)
        with pytest.raises(error, match=re.escape(fragment)):
            nbn.batch_norm(to_device(x, device), rm, rv, training=True, activation="relu", residual=residual,
                           out=out)
        np.testing.assert_array_equal(host(rm), 0)
        np.testing.assert_array_equal(host(rv), 1)
        np.testing.assert_array_equal(host(out), 7.0)


# ------------------------------------------------------------ functional

FUNCTIONAL_CASES = (
    cases([CPU], [pytest.param((3, 4, 5, 7), 1, id="NCHW"), pytest.param((3, 5, 7, 4), -1, id="NHWC"),
                  pytest.param((7, 5), 1, id="NC")],
          [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64"), pytest.param(np.float16, id="f16")])
    + cases([CUDA], [pytest.param((3, 2, 3, 4), 1, id="NCHW")], [pytest.param(np.float32, id="f32")])
)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device, shape, channel_axis, dtype", FUNCTIONAL_CASES)
def test_functional(device, shape, channel_axis, dtype, training):
    rng = np.random.default_rng(50)
    channels = shape[channel_axis]
    param_dtype = np.float64 if dtype == np.float64 else np.float32
    x = random_input(rng, shape, channel_axis, dtype)
    weight = rng.uniform(0.5, 2, channels).astype(param_dtype)
    bias = rng.standard_normal(channels).astype(param_dtype)
    running_mean = rng.standard_normal(channels).astype(param_dtype)
    running_var = rng.uniform(0.5, 2, channels).astype(param_dtype)
    eps, momentum = 1e-3, 0.3
    mean, var, count = ref_batch_stats(x, channel_axis) if training else (running_mean, running_var, None)
    pre = ref_fused_pre_activation(x, mean, var, weight, bias, eps, channel_axis)
    residual = rng.standard_normal(shape)
    residual = (residual + np.where(np.abs(pre + residual) < TIE_MARGIN, 3 * TIE_MARGIN, 0)).astype(dtype)
    tol = REFERENCE_TOL

    def call(activation, residual_arg, out=None):
        rm, rv = to_device(running_mean.copy(), device), to_device(running_var.copy(), device)
        y = nbn.batch_norm(to_device(x, device), rm, rv, to_device(weight, device), to_device(bias, device),
                           training, momentum, eps, channel_axis=channel_axis, activation=activation,
                           residual=None if residual_arg is None else to_device(residual_arg, device), out=out)
        return y, host(rm), host(rv)

    expected_buffers = (ref_running_update(running_mean, running_var, mean, var, count, momentum) if training
                        else (running_mean, running_var))
    for activation, with_residual in (("relu", True), ("relu", False), (None, True)):
        what = f"activation={activation} residual={with_residual}"
        z = residual if with_residual else None
        y, rm, rv = call(activation, z)
        assert_fresh(y, x, device, what, z)
        expected = ref_fused_forward(x, mean, var, weight, bias, eps, channel_axis, z, activation == "relu")
        assert_matches(y, expected, dtype, tol, what)
        assert_matches(rm, expected_buffers[0], param_dtype, tol, f"{what}: running_mean")
        assert_matches(rv, expected_buffers[1], param_dtype, tol, f"{what}: running_var")
    # out= a buffer, the input and the residual: the same values.
    expected = ref_fused_forward(x, mean, var, weight, bias, eps, channel_axis, residual, True)
    buffer = to_device(np.zeros(shape, dtype), device)
    assert call("relu", residual, out=buffer)[0] is buffer
    assert_matches(buffer, expected, dtype, tol, "out=buffer")
    if device == "cpu":
        in_place = x.copy()
        y = nbn.batch_norm(in_place, running_mean.copy(), running_var.copy(), weight, bias, training, momentum, eps,
                           channel_axis=channel_axis, activation="relu", residual=residual, out=in_place)
        assert y is in_place
        assert_matches(in_place, expected, dtype, tol, "out=x")
        z = residual.copy()
        y = nbn.batch_norm(x, running_mean.copy(), running_var.copy(), weight, bias, training, momentum, eps,
                           channel_axis=channel_axis, activation="relu", residual=z, out=z)
        assert y is z
        assert_matches(z, expected, dtype, tol, "out=residual")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("channel_axis", [1, -1], ids=["cfirst", "clast"])
def test_functional_matches_torch(channel_axis, dtype, training):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(51)
    shape = layout_shape((3, 4, 5, 7), channel_axis)
    param_dtype = np.float64 if dtype == np.float64 else np.float32
    x = random_input(rng, shape, channel_axis, dtype)
    weight, bias = rng.uniform(0.5, 2, 4).astype(param_dtype), rng.standard_normal(4).astype(param_dtype)
    running_mean, running_var = rng.standard_normal(4).astype(param_dtype), rng.uniform(0.5, 2, 4).astype(param_dtype)
    mean, var = ref_batch_stats(x, channel_axis)[:2] if training else (running_mean, running_var)
    pre = ref_fused_pre_activation(x, mean, var, weight, bias, 1e-5, channel_axis)
    residual = rng.standard_normal(shape)
    residual = (residual + np.where(np.abs(pre + residual) < TIE_MARGIN, 3 * TIE_MARGIN, 0)).astype(dtype)

    rm, rv = running_mean.copy(), running_var.copy()
    y = nbn.batch_norm(x, rm, rv, weight, bias, training, 0.1, 1e-5, channel_axis=channel_axis, activation="relu",
                       residual=residual)
    view = (lambda t: t.movedim(-1, 1)) if channel_axis == -1 else (lambda t: t)
    rm_t, rv_t = torch.from_numpy(running_mean.copy()), torch.from_numpy(running_var.copy())
    y_t = torch.relu(F.batch_norm(view(torch.from_numpy(x)), rm_t, rv_t, torch.from_numpy(weight),
                                  torch.from_numpy(bias), training, 0.1, 1e-5) + view(torch.from_numpy(residual)))
    expected = y_t.numpy()
    expected = np.moveaxis(expected, 1, -1) if channel_axis == -1 else expected
    assert_matches(y, expected, dtype, TORCH_TOL, "output")
    assert_matches(rm, rm_t.numpy(), param_dtype, TORCH_TOL, "running_mean")
    assert_matches(rv, rv_t.numpy(), param_dtype, TORCH_TOL, "running_var")


# ----------------------------------------------- parallel kernels, odd sizes

LARGE = [
    pytest.param(nbn.BatchNorm2d, (8, 16, 32, 32), 1, id="2d-8x16x32x32"),
    pytest.param(nbn.BatchNorm2d, (8, 32, 32, 16), -1, id="2d-clast-8x32x32x16"),
    pytest.param(nbn.BatchNorm2d, (7, 3, 61, 67), 1, id="2d-odd-7x3x61x67"),
    pytest.param(nbn.BatchNorm2d, (9, 23, 29, 5), -1, id="2d-clast-odd-9x23x29x5"),
    pytest.param(nbn.BatchNorm1d, (40001, 3), 1, id="1d-40001x3"),
    pytest.param(nbn.BatchNorm3d, (3, 5, 7, 11, 13), 1, id="3d-odd-3x5x7x11x13"),
]


@pytest.mark.parametrize("activation, with_residual", FUSIONS[:2])
@pytest.mark.parametrize("cls, shape, channel_axis", LARGE)
def test_parallel_kernels_and_odd_sizes(cls, shape, channel_axis, activation, with_residual):
    """Inputs above the serial threshold (the thread pool's kernels), with runs and channel counts
    that are not multiples of 8: a mask bit read from the wrong byte changes grad_input."""
    rng = np.random.default_rng(52)
    bn, ref = fused_pair(cls, shape, channel_axis, np.float32, activation, rng, momentum=None)
    run_fused_sequence(bn, [ref], rng, shape, channel_axis, np.float32, with_residual,
                       ["train", "backward", "eval", "backward"])


ODD_SMALL = [
    pytest.param(nbn.BatchNorm2d, (3, 3, 7, 7), 1, id="2d-3x3x7x7"),
    pytest.param(nbn.BatchNorm2d, (3, 7, 7, 3), -1, id="2d-clast-3x7x7x3"),
    pytest.param(nbn.BatchNorm1d, (13, 5), 1, id="1d-13x5"),
    pytest.param(nbn.BatchNorm1d, (5, 3, 9), 1, id="1d-5x3x9"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 3, 1, 5), -1, id="3d-clast-2x3x3x1x5"),
]


@pytest.mark.parametrize("input_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("cls, shape, channel_axis", ODD_SMALL)
def test_tiny_work_units_and_odd_sizes(cls, shape, channel_axis, input_dtype, small_work_units):
    """Work units of 7 values on the thread pool: mask bytes are shared by two units."""
    rng = np.random.default_rng(53)
    bn, ref = fused_pair(cls, shape, channel_axis, np.float32, "relu", rng)
    run_fused_sequence(bn, [ref], rng, shape, channel_axis, input_dtype, True,
                       ["train", "backward", "eval", "backward"])
