"""The CUDA path against the float64 NumPy reference, step by step.

Runs under the CUDA simulator on machines without a GPU (see conftest) and
for real on a GPU with NUMBA_ENABLE_CUDASIM=0. Blocks of 32 threads with two
values per thread make these small inputs span several blocks per channel,
so the thread-, block- and grid-level merges all run; the shapes are not
multiples of the block size. The shared-memory merge is what runs here; the
warp-shuffle merge is checked in ``test_cuda_gpu_only.py``.
"""

import numpy as np
import pytest
from numba import cuda

import numba_bn as nbn
from cuda_support import HostView, host, needs_cuda
from matrix import AXES
from numba_bn import config
from numba_bn._device import is_device_array
from reference import RefBatchNorm, ref_batch_stats, ref_forward, ref_running_update
from test_against_reference import (
    FLAGS,
    assert_close,
    check_grads,
    check_state,
    layout_shape,
    make_pair,
    random_input,
)

pytestmark = [needs_cuda, pytest.mark.usefixtures("small_cuda_blocks")]

#: Shorter than the CPU sequence (the simulator runs each CUDA thread as a
#: Python thread) but with every transition: train, backward after train,
#: an optimiser step, eval, backward after eval, train again.
SEQUENCE = ["train", "backward", "sgd", "train", "eval", "backward", "train", "backward"]

LAYOUTS = [
    pytest.param(nbn.BatchNorm1d, (37, 5), id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (6, 3, 11), id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 7), id="2d"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 3, 4, 5), id="3d"),
]
DTYPES = {
    "f32": (np.float32, np.float32),
    "f64": (np.float64, np.float64),
    "f16in": (np.float32, np.float16),
}


# ---------------------------------------------------------------- helpers


def check_device_result(actual, expected, like, what):
    """A new C-contiguous device array of ``like``'s shape and dtype, close to ``expected``."""
    assert is_device_array(actual), what
    assert tuple(actual.shape) == like.shape and actual.dtype == like.dtype, what
    assert actual.is_c_contiguous(), what
    assert_close(host(actual), expected, like.dtype, what)


def sgd_step(bn, ref):
    """Update weight/bias on the device, as an optimiser would."""
    for name in ("weight", "bias"):
        value = getattr(bn, name)
        if value is not None:
            stepped = host(value) - 0.5 * host(getattr(bn, "grad_" + name))
            value.copy_to_device(stepped.astype(value.dtype))
            setattr(ref, name, stepped.astype(value.dtype).astype(np.float64))


def run_device_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype, steps=SEQUENCE):
    x = None
    for i, step in enumerate(steps):
        what = f"step {i} ({step})"
        if step == "backward":
            dy = rng.standard_normal(x.shape).astype(input_dtype)
            dx = bn.backward(cuda.to_device(dy))
            check_device_result(dx, ref.backward(dy), x, f"{what}: grad_input")
            view = HostView(bn)
            check_grads(view, ref, module_dtype)
            check_state(view, ref)
            continue
        if step == "sgd":
            sgd_step(bn, ref)
            continue
        assert (bn.train() if step == "train" else bn.eval()) is bn
        ref.train(step == "train")
        x = random_input(rng, (shape[0] + i % 2, *shape[1:]), channel_axis, input_dtype)
        x_device = cuda.to_device(x)
        y = bn(x_device)
        check_device_result(y, ref(x), x, f"{what}: output")
        np.testing.assert_array_equal(host(x_device), x, err_msg=f"{what}: input modified")
        check_state(HostView(bn), ref)


def cuda_pair(cls, shape_cf, channel_axis, dtypes, rng, **flags):
    """A module moved to the GPU with ``.cuda()`` and its reference twin."""
    module_dtype, input_dtype = DTYPES[dtypes]
    shape = layout_shape(shape_cf, channel_axis)
    channels = shape_cf[1]
    bn, ref = make_pair(cls, channels, module_dtype, channel_axis, rng, **flags)
    assert bn.cuda() is bn and bn.device == "cuda"
    return bn, ref, shape, module_dtype, input_dtype


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("cls, shape_cf", LAYOUTS)
def test_sequence_every_layout(cls, shape_cf, channel_axis, rng):
    bn, ref, shape, mdt, idt = cuda_pair(cls, shape_cf, channel_axis, "f32", rng)
    run_device_sequence(bn, ref, rng, shape, channel_axis, mdt, idt)


@pytest.mark.parametrize("dtypes", ["f64", "f16in"])
@pytest.mark.parametrize("channel_axis", AXES)
def test_sequence_every_dtype(dtypes, channel_axis, rng):
    bn, ref, shape, mdt, idt = cuda_pair(nbn.BatchNorm2d, (3, 4, 5, 7), channel_axis, dtypes, rng)
    run_device_sequence(bn, ref, rng, shape, channel_axis, mdt, idt)


@pytest.mark.parametrize("flags", FLAGS[1:])
@pytest.mark.parametrize(
    "cls, shape_cf, channel_axis, dtypes",
    [
        pytest.param(nbn.BatchNorm1d, (6, 3, 11), 1, "f64", id="1d-cfirst-f64"),
        pytest.param(nbn.BatchNorm2d, (3, 4, 5, 7), -1, "f16in", id="2d-clast-f16in"),
    ],
)
def test_sequence_every_flag(cls, shape_cf, channel_axis, dtypes, flags, rng):
    bn, ref, shape, mdt, idt = cuda_pair(cls, shape_cf, channel_axis, dtypes, rng, **flags)
    run_device_sequence(bn, ref, rng, shape, channel_axis, mdt, idt)


def test_module_built_on_the_device(rng):
    bn = nbn.BatchNorm1d(5, device="cuda", momentum=None)
    ref = RefBatchNorm(5, momentum=None)
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert is_device_array(getattr(bn, name)), name
    assert type(bn.num_batches_tracked) is int
    run_device_sequence(bn, ref, rng, (37, 5), 1, np.float32, np.float32, ["train", "train", "backward"])


@pytest.mark.parametrize(
    "cls, shape, channel_axis",
    [
        pytest.param(nbn.BatchNorm1d, (300, 3), 1, id="1d-300x3"),
        pytest.param(nbn.BatchNorm2d, (2, 3, 7, 11), 1, id="2d-cfirst-C3"),
        pytest.param(nbn.BatchNorm2d, (2, 3, 5, 37), -1, id="2d-clast-C37"),
    ],
)
def test_inputs_spanning_many_blocks(cls, shape, channel_axis, monkeypatch, rng):
    """More blocks than the reduction target, channel tiles wider than a warp (C=37)."""
    monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 1)
    channels = shape[channel_axis]
    bn, ref = make_pair(cls, channels, np.float32, channel_axis, rng)
    bn.cuda()
    run_device_sequence(bn, ref, rng, shape, channel_axis, np.float32, np.float32, ["train", "backward"])


# ------------------------------------------------------------- layouts


def _device_view(base, target):
    """A device array with ``target``'s shape and strides over a device copy of ``base``.

    ``target`` is a view of the C-contiguous host array ``base``.
    """
    from numba_bn.cuda_backend import _view

    device = cuda.to_device(base)
    offset = target.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    flat = _view(device, (base.size,), (base.itemsize,))
    return _view(flat[offset // base.itemsize :], target.shape, target.strides)


#: (host base shape, view of it) per layout kind, channels-first; the
#: channels-last variant swaps the last two axes of both.
STRIDED = {
    "transposed": ((5, 9, 4), lambda a: a.transpose(0, 2, 1)),
    "sliced": ((5, 4, 18), lambda a: a[:, :, ::2]),
    "negative": ((5, 4, 18), lambda a: a[::-1, :, ::-2]),
    "broadcast": ((1, 4, 9), lambda a: np.broadcast_to(a, (5, 4, 9))),
}


@pytest.mark.parametrize("kind", list(STRIDED))
@pytest.mark.parametrize("channel_axis", AXES)
def test_any_device_strides(kind, channel_axis, rng):
    """Strided device inputs give the results of their values (negative strides via a copy)."""
    base_shape, make_view = STRIDED[kind]
    if channel_axis == -1:
        base_shape = (*base_shape[:-2], base_shape[-1], base_shape[-2])
        view = make_view
        make_view = lambda a: view(a.swapaxes(1, 2)).swapaxes(1, 2)  # noqa: E731
    base = (rng.standard_normal(base_shape) * 2 + 1).astype(np.float32)
    host_x = make_view(base)
    x = _device_view(base, host_x)
    assert x.strides == host_x.strides
    bn = nbn.BatchNorm1d(4, channel_axis=channel_axis, device="cuda")
    ref = RefBatchNorm(4, channel_axis=channel_axis)
    like = np.ascontiguousarray(host_x)
    check_device_result(bn(x), ref(host_x), like, "output")
    dy = rng.standard_normal(host_x.shape).astype(np.float32)
    check_device_result(bn.backward(cuda.to_device(dy)), ref.backward(dy), like, "grad_input")
    np.testing.assert_array_equal(host(bn.running_mean).astype(np.float64), host(bn.running_mean))


# -------------------------------------------------------------- numerics

#: The simulator evaluates kernels with NumPy scalars, which warn where a GPU
#: silently gives inf or NaN (0 * inf, inf - inf); these tests want exactly that.
ieee_specials = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@ieee_specials
def test_constant_channel_has_exactly_zero_variance(rng):
    x = random_input(rng, (7, 3, 11), 1, np.float32)
    x[:, 1, :] = np.float32(1234.5678)
    mean, var, count = nbn.batch_stats(cuda.to_device(x))
    assert is_device_array(mean) and is_device_array(var) and count == 77
    assert host(var)[1] == 0.0
    assert host(mean)[1] == np.float32(1234.5678)
    bn = nbn.BatchNorm1d(3, device="cuda", eps=0.0)
    y = host(bn(cuda.to_device(x)))
    # 0 * inf is NaN in every framework; the other channels are unaffected.
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


def test_large_mean_small_spread_float32(rng):
    """|mean| >> std in float32: no cancellation in the statistics or the normalisation."""
    x = (np.float32(1e4) + rng.standard_normal((9, 2, 40)).astype(np.float32) * np.float32(0.01)).astype(np.float32)
    mean, var, _ = nbn.batch_stats(cuda.to_device(x))
    ref_mean, ref_var, _ = ref_batch_stats(x, 1)
    np.testing.assert_allclose(host(mean), ref_mean, rtol=1e-7)
    np.testing.assert_allclose(host(var), ref_var, rtol=1e-4)
    y = host(nbn.batch_norm(cuda.to_device(x), None, None, training=True))
    assert_close(y, ref_forward(x, ref_mean, ref_var, None, None, 1e-5, 1), np.float32, "output")


@ieee_specials
def test_nan_stays_in_its_channel(rng):
    for channel_axis in (1, -1):
        x = random_input(rng, (6, 3, 10) if channel_axis == 1 else (6, 10, 3), channel_axis, np.float32)
        index = (2, 1, 4) if channel_axis == 1 else (2, 4, 1)
        x[index] = np.nan
        bn = nbn.BatchNorm1d(3, device="cuda", channel_axis=channel_axis)
        y = host(bn(cuda.to_device(x)))
        rm = host(bn.running_mean)
        picks = np.moveaxis(y, channel_axis, 0)
        assert np.isnan(picks[1]).all()
        assert np.isfinite(picks[[0, 2]]).all()
        assert np.isnan(rm[1]) and np.isfinite(rm[[0, 2]]).all()


@pytest.mark.parametrize("shape, channel_axis", [((0, 3, 4), 1), ((0, 4, 3), -1), ((2, 3, 0), 1)])
def test_empty_batch(shape, channel_axis):
    bn = nbn.BatchNorm1d(3, device="cuda", channel_axis=channel_axis)
    x = cuda.to_device(np.zeros(shape, np.float32))
    y = bn(x)
    assert is_device_array(y) and tuple(y.shape) == shape
    assert bn.num_batches_tracked == 1
    np.testing.assert_array_equal(host(bn.running_mean), 0)
    np.testing.assert_array_equal(host(bn.running_var), 1)
    dx = bn.backward(cuda.to_device(np.zeros(shape, np.float32)))
    assert tuple(dx.shape) == shape
    np.testing.assert_array_equal(host(bn.grad_weight), 0)
    mean, var, count = nbn.batch_stats(x, channel_axis=channel_axis)
    assert count == 0 and np.isnan(host(mean)).all() and np.isnan(host(var)).all()


# ------------------------------------------------------------ functional


@pytest.mark.parametrize("dtypes", ["f32", "f64", "f16in"])
@pytest.mark.parametrize("channel_axis", AXES)
def test_functional(dtypes, channel_axis, rng):
    param_dtype, input_dtype = DTYPES[dtypes]
    shape = (7, 3, 10) if channel_axis == 1 else (7, 10, 3)
    x = random_input(rng, shape, channel_axis, input_dtype)
    rm = rng.standard_normal(3).astype(param_dtype)
    rv = rng.uniform(0.5, 2, 3).astype(param_dtype)
    w = rng.uniform(0.5, 2, 3).astype(param_dtype)
    b = rng.standard_normal(3).astype(param_dtype)
    rm_d, rv_d = cuda.to_device(rm), cuda.to_device(rv)
    compute = np.float64 if input_dtype == np.float64 else np.float32

    mean, var, count = nbn.batch_stats(cuda.to_device(x), channel_axis=channel_axis)
    ref_mean, ref_var, ref_count = ref_batch_stats(x, channel_axis)
    assert count == ref_count and mean.dtype == compute and var.dtype == compute
    assert_close(host(mean), ref_mean, compute, "mean")
    assert_close(host(var), ref_var, compute, "var")

    y = nbn.batch_norm(cuda.to_device(x), rm_d, rv_d, cuda.to_device(w), cuda.to_device(b),
                       training=True, momentum=0.25, eps=1e-3, channel_axis=channel_axis)
    check_device_result(y, ref_forward(x, ref_mean, ref_var, w, b, 1e-3, channel_axis), x, "train output")
    new_rm, new_rv = ref_running_update(rm, rv, ref_mean, ref_var, ref_count, 0.25)
    assert_close(host(rm_d), new_rm, param_dtype, "running_mean")
    assert_close(host(rv_d), new_rv, param_dtype, "running_var")

    y = nbn.batch_norm(cuda.to_device(x), rm_d, rv_d, training=False, channel_axis=channel_axis)
    check_device_result(y, ref_forward(x, host(rm_d), host(rv_d), None, None, 1e-5, channel_axis), x, "eval output")


# ------------------------------------------------------- state and moves


def test_state_dict_round_trips_and_moves(rng):
    bn = nbn.BatchNorm2d(4, device="cuda", momentum=None)
    x = random_input(rng, (3, 4, 5, 6), 1, np.float32)
    bn(cuda.to_device(x))
    bn.backward(cuda.to_device(np.ones_like(x)))
    state = bn.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    for key, value in state.items():
        assert isinstance(value, np.ndarray), key
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"] == 1

    cpu_twin = nbn.BatchNorm2d(4, momentum=None)
    cpu_twin.load_state_dict(state)
    np.testing.assert_array_equal(cpu_twin.running_var, host(bn.running_var))

    # Host state into a device module: copied into the existing device arrays.
    other = nbn.BatchNorm2d(4, device="cuda")
    weight_before = other.weight
    changed = {k: (v + 1 if k != "num_batches_tracked" else v) for k, v in state.items()}
    other.load_state_dict(changed)
    assert other.weight is weight_before
    np.testing.assert_array_equal(host(other.weight), state["weight"] + 1)
    assert other.num_batches_tracked == 1

    # Moves keep values, types and gradients; forward results agree on both devices.
    grads = host(bn.grad_weight)
    assert bn.cpu() is bn and bn.device == "cpu"
    assert isinstance(bn.running_mean, np.ndarray) and isinstance(bn.grad_weight, np.ndarray)
    np.testing.assert_array_equal(bn.grad_weight, grads)
    np.testing.assert_array_equal(bn.running_mean, state["running_mean"])
    bn.eval()
    y_cpu = bn(x)
    assert bn.to("cuda") is bn and is_device_array(bn.running_var)
    assert_close(host(bn(cuda.to_device(x))), y_cpu, np.float32, "eval output after moves")
    with pytest.raises(RuntimeError, match="forward"):
        bn.cpu().backward(np.ones_like(x))


def test_reset_on_device(rng):
    bn = nbn.BatchNorm1d(3, device="cuda")
    bn(cuda.to_device(random_input(rng, (8, 3), 1, np.float32)))
    bn.weight.copy_to_device(np.full(3, 2.0, np.float32))
    bn.reset_parameters()
    np.testing.assert_array_equal(host(bn.weight), 1)
    np.testing.assert_array_equal(host(bn.running_mean), 0)
    np.testing.assert_array_equal(host(bn.running_var), 1)
    assert bn.num_batches_tracked == 0


def test_stream_choice(rng):
    x = random_input(rng, (5, 3, 8), 1, np.float32)
    expected = host(nbn.BatchNorm1d(3, device="cuda")(cuda.to_device(x)))
    stream = cuda.stream()
    bn = nbn.BatchNorm1d(3, device="cuda")
    with nbn.cuda_stream(stream) as chosen:
        assert chosen is stream
        y = bn(cuda.to_device(x, stream=stream))
        state = bn.state_dict()
    stream.synchronize()
    np.testing.assert_array_equal(host(y), expected)
    assert state["num_batches_tracked"] == 1


def test_small_blocks_exercise_every_merge_level(monkeypatch):
    """The shapes above really span several blocks per channel, split runs and tile channels."""
    from numba_bn._layout import ROWS, RUNS
    from numba_bn.cuda_backend import geometry

    _, block, parts, _ = geometry(RUNS, (4, 1, 1, 3, 35), reduction=True)  # 2d (3, 4, 5, 7)
    assert block == (32, 1) and parts > 1
    _, block, parts, _ = geometry(ROWS, (1, 1, 1, 37, 5), reduction=True)  # 1d (37, 5)
    assert block == (8, 4) and parts > 1
    monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 1)
    _, _, parts, (splits,) = geometry(RUNS, (3, 1, 1, 2, 77), reduction=True)  # 2d (2, 3, 7, 11)
    assert parts > 1 and splits > 1  # runs cut into segments
    grid, block, parts, _ = geometry(ROWS, (1, 1, 2, 15, 37), reduction=True)  # 2d (2, 3, 5, 37) clast
    assert block == (32, 1) and grid[1] == 2 and parts > 1  # two channel tiles
