"""Every rejected argument, on every device: exception type, message content, and no state change.

Also device mismatches (host arrays given to a CUDA module or call and the
other way round) and machines without CUDA.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numba_bn as nbn
from cuda_support import host, needs_cuda
from devices import CPU, CUDA, DEVICES, to_device
from matrix import cases
from numba_bn import _backend
from state_snapshot import assert_unchanged, snapshot

# Tiny CUDA blocks for every test (the CPU ignores them). Where a test has many
# cases, CUDA runs a few of them: the simulator is slow.
pytestmark = pytest.mark.usefixtures("small_cuda_blocks")

#: The input of a trained module (tiny: the CUDA simulator is slow).
SHAPE = (2, 3, 1, 1)
#: What an input of the wrong type is asked to be, per device.
ARRAY_TYPE = {"cpu": "numpy.ndarray", "cuda": "CUDA device array"}


def send(value, device):
    """Arrays go to ``device``; anything else (lists, scalars, None) stays as it is."""
    return to_device(value, device) if isinstance(value, np.ndarray) else value


def trained(device, cls=nbn.BatchNorm2d, shape=SHAPE, **kwargs):
    """A module on ``device`` with every field set: it has seen a train step and a
    backward, then (on CUDA, after the move, which forgets the forward) a train step
    on the device."""
    bn = cls(shape[1] if kwargs.get("channel_axis", 1) == 1 else shape[-1], **kwargs)
    x = np.random.default_rng(0).standard_normal(shape).astype(bn.dtype)
    bn(x)
    bn.backward(np.ones_like(x))
    if device != "cpu":
        bn.to(device)
        bn(to_device(x, device))
    assert bn.device == device and bn.grad_weight is not None and bn._saved is not None
    return bn


def raises_without_change(bn, call, error, *fragments):
    before = snapshot(bn)
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert_unchanged(bn, before)
    return info


# ----------------------------------------------------------------- forward


WRONG_RANK = [
    pytest.param(nbn.BatchNorm1d, (2, 3), (2, 3, 4, 5), "expected 2D or 3D input (got 4D input)", id="1d-4D"),
    pytest.param(nbn.BatchNorm1d, (2, 3), (3,), "expected 2D or 3D input (got 1D input)", id="1d-1D"),
    pytest.param(nbn.BatchNorm2d, SHAPE, (2, 3, 4), "expected 4D input (got 3D input)", id="2d-3D"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 1, 1, 1), (2, 3, 4, 5), "expected 5D input (got 4D input)", id="3d-4D"),
]


@pytest.mark.parametrize("device, cls, good_shape, shape, expected", cases([CPU], WRONG_RANK) + cases([CUDA], WRONG_RANK[2:3]))
def test_wrong_rank(device, cls, good_shape, shape, expected):
    bn = trained(device, cls, good_shape)
    x = to_device(np.zeros(shape, np.float32), device)
    raises_without_change(bn, lambda: bn(x), ValueError, expected)


@pytest.mark.parametrize("channel_axis, shape, axis", [(1, (4, 5, 2, 2), 1), (-1, (4, 2, 2, 5), 3)])
@pytest.mark.parametrize("device", DEVICES)
def test_wrong_channel_count(device, channel_axis, shape, axis):
    bn = trained(device, channel_axis=channel_axis, shape=(2, 3, 1, 1) if channel_axis == 1 else (2, 1, 1, 3))
    x = to_device(np.zeros(shape, np.float32), device)
    raises_without_change(bn, lambda: bn(x), ValueError, f"expected input with 3 channels on axis {axis}, got 5")


NON_FLOATING = [pytest.param(np.dtype(d), id=np.dtype(d).name) for d in (np.int64, np.int32, np.bool_, np.complex64)]


@pytest.mark.parametrize(
    "device, dtype",
    cases([CPU], [*NON_FLOATING, pytest.param(np.dtype(object), id="object")]) + cases([CUDA], NON_FLOATING[1:3]),
)
def test_non_floating_input(device, dtype):
    bn = trained(device)
    x = to_device(np.zeros(SHAPE, dtype), device)
    raises_without_change(bn, lambda: bn(x), TypeError, "float32", str(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_mismatched_float_dtype_names_both(device):
    bn = trained(device, dtype=np.float64)
    x = np.zeros(SHAPE, np.float32)
    info = raises_without_change(bn, lambda: bn(to_device(x, device)), TypeError, "float64", "got float32")
    assert "astype" in str(info.value)
    x16 = to_device(x.astype(np.float16), device)
    raises_without_change(bn, lambda: bn(x16), TypeError, "float64", "got float16")


NON_ARRAYS = [pytest.param(v, id=type(v).__name__) for v in ([[1.0, 2.0]], 3.0, "x", None)]


@pytest.mark.parametrize("device, value", cases([CPU], NON_ARRAYS) + cases([CUDA], NON_ARRAYS[::3]))
def test_non_array_input(device, value):
    bn = trained(device, nbn.BatchNorm1d, (5, 2))
    raises_without_change(bn, lambda: bn(value), TypeError, ARRAY_TYPE[device], f"got {type(value).__name__}")


@pytest.mark.parametrize(
    "cls, shape",
    [(nbn.BatchNorm1d, (1, 3)), (nbn.BatchNorm1d, (1, 3, 1)), (nbn.BatchNorm2d, (1, 3, 1, 1)), (nbn.BatchNorm3d, (1, 3, 1, 1, 1))],
)
@pytest.mark.parametrize("device", DEVICES)
def test_one_value_per_channel_when_training(device, cls, shape):
    bn = cls(3, device=device)
    x = to_device(np.ones(shape, np.float32), device)
    raises_without_change(bn, lambda: bn(x), ValueError, "Expected more than 1 value per channel when training", str(shape))
    untracked = cls(3, track_running_stats=False, device=device).eval()  # still uses batch statistics
    raises_without_change(untracked, lambda: untracked(x), ValueError, "more than 1 value")
    y = bn.eval()(x)  # running statistics: fine
    assert tuple(y.shape) == shape


@pytest.mark.parametrize(
    "name, value",
    [("weight", np.ones(4, np.float32)), ("bias", np.ones(3, np.float64)), ("running_var", np.ones((3, 1), np.float32))],
)
@pytest.mark.parametrize("device", DEVICES)
def test_reassigned_parameter_of_wrong_shape_or_dtype(device, name, value):
    bn = trained(device)
    setattr(bn, name, to_device(value, device))
    x = to_device(np.zeros(SHAPE, np.float32), device)
    raises_without_change(bn, lambda: bn(x), (ValueError, TypeError), name)


def test_cpu_read_only_running_buffer_rejected_only_when_updated():
    bn = trained("cpu")
    bn.running_mean.flags.writeable = False
    raises_without_change(bn, lambda: bn(np.zeros(SHAPE, np.float32)), ValueError, "running_mean", "read-only")
    bn.eval()(np.zeros(SHAPE, np.float32))


# ----------------------------------------------------------------- backward


@pytest.mark.parametrize("device", DEVICES)
def test_backward_before_forward(device):
    bn = nbn.BatchNorm2d(3, device=device)
    with pytest.raises(RuntimeError, match="forward"):
        bn.backward(to_device(np.zeros(SHAPE, np.float32), device))
    assert bn.grad_weight is None


@pytest.mark.parametrize(
    "grad, error, fragments",
    [
        (np.zeros((2, 3, 1, 2), np.float32), ValueError, ["(2, 3, 1, 1)", "(2, 3, 1, 2)"]),
        (np.zeros(SHAPE, np.float64), TypeError, ["float32", "float64"]),
        ([[0.0]], TypeError, ["array type", "list"]),
    ],
    ids=["shape", "dtype", "list"],
)
@pytest.mark.parametrize("device", DEVICES)
def test_bad_grad_output(device, grad, error, fragments):
    bn = trained(device)
    fragments = [ARRAY_TYPE[device] if f == "array type" else f for f in fragments]
    grad = send(grad, device)
    raises_without_change(bn, lambda: bn.backward(grad), error, *fragments)


# ---------------------------------------------------------- construction


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"num_features": 0}, ValueError, "num_features >= 1, got 0"),
        ({"num_features": -2}, ValueError, "got -2"),
        ({"num_features": 2.0}, TypeError, "num_features to be an int, got float"),
        ({"num_features": True}, TypeError, "got bool"),
        ({"num_features": 3, "eps": -1e-5}, ValueError, "eps >= 0.0"),
        ({"num_features": 3, "eps": "small"}, TypeError, "eps to be a real number, got str"),
        ({"num_features": 3, "momentum": 1.5}, ValueError, "momentum <= 1.0"),
        ({"num_features": 3, "momentum": float("nan")}, ValueError, "finite"),
        ({"num_features": 3, "affine": 1}, TypeError, "affine to be a bool, got int"),
        ({"num_features": 3, "track_running_stats": None}, TypeError, "track_running_stats"),
        ({"num_features": 3, "bias": "yes"}, TypeError, "bias to be a bool"),
        ({"num_features": 3, "dtype": np.int32}, TypeError, "float32 or float64, got int32"),
        ({"num_features": 3, "dtype": np.float16}, TypeError, "got float16"),
        ({"num_features": 3, "dtype": "not a dtype"}, TypeError, "float32 or float64"),
        ({"num_features": 3, "device": "tpu"}, ValueError, "got 'tpu'"),
        ({"num_features": 3, "device": 0}, TypeError, "device to be a str, got int"),
        ({"num_features": 3, "channel_axis": 2}, ValueError, "channel_axis to be 1 (channels first) or -1"),
        ({"num_features": 3, "channel_axis": "last"}, TypeError, "channel_axis"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, fragment):
    with pytest.raises(error) as info:
        nbn.BatchNorm2d(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_train_mode_must_be_boolean(device):
    bn = trained(device)
    raises_without_change(bn, lambda: bn.train("no"), ValueError, "training mode is expected to be boolean")


@pytest.mark.parametrize("device", DEVICES)
def test_unknown_device_on_move(device):
    bn = trained(device)
    raises_without_change(bn, lambda: bn.to("tpu"), ValueError, "'tpu'")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_state_dict(device):
    bn = trained(device)
    state = bn.state_dict()
    state["running_var"] = np.ones(4, np.float32)
    raises_without_change(bn, lambda: bn.load_state_dict(state), ValueError, "running_var")


# --------------------------------------------------------------- functional


def _functional_raises(call, error, *fragments, buffers=()):
    copies = [host(b) for b in buffers]
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    for buffer, copy in zip(buffers, copies):
        np.testing.assert_array_equal(host(buffer), copy)


@pytest.mark.parametrize("device", DEVICES)
def test_functional_errors(device):
    x_host = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    x = to_device(x_host, device)
    rm, rv = to_device(np.zeros(3, np.float32), device), to_device(np.ones(3, np.float32), device)
    keep = dict(buffers=(rm, rv))
    weight4 = to_device(np.ones(4, np.float32), device)
    _functional_raises(lambda: nbn.batch_norm(x, None, None), ValueError, "training=False", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, None, training=True), ValueError, "both", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm[:2], rv, training=True), ValueError, "running_mean of shape (3,), got (2,)", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, weight=weight4, training=True), ValueError, "weight of shape (3,)", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, bias=[0.0, 0.0, 0.0], training=True), TypeError, f"bias to be a {ARRAY_TYPE[device]}", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, training=True, momentum=None), TypeError, "momentum", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, training="yes"), TypeError, "training", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, eps=-1.0), ValueError, "eps", **keep)
    _functional_raises(lambda: nbn.batch_norm(x, rm, rv, channel_axis=0), ValueError, "channel_axis", **keep)
    _functional_raises(lambda: nbn.batch_norm(x[0, 0], rm, rv), ValueError, "2 or more dimensions (N, C, ...), got 1D", **keep)
    x16 = to_device(x_host.astype(np.int16), device)
    _functional_raises(lambda: nbn.batch_norm(x16, rm, rv), TypeError, "int16", **keep)
    _functional_raises(lambda: nbn.batch_norm(x[:1, :, :1], rm, rv, training=True), ValueError, "Expected more than 1 value per channel", **keep)
    _functional_raises(lambda: nbn.batch_stats(x, channel_axis=2), ValueError, "channel_axis")
    if device == "cpu":  # host-only: read-only memory; a list is taken for host data
        rm_ro = rm.copy()
        rm_ro.flags.writeable = False
        _functional_raises(lambda: nbn.batch_norm(x, rm_ro, rv, training=True), ValueError, "read-only", buffers=(rm_ro, rv))
        _functional_raises(lambda: nbn.batch_stats(list(x)), TypeError, "numpy.ndarray")


# ------------------------------------------------------ device mismatches


@needs_cuda
def test_numpy_input_to_a_cuda_module():
    bn = trained("cuda")
    x = np.zeros(SHAPE, np.float32)
    raises_without_change(bn, lambda: bn(x), TypeError, "numpy.ndarray", "numba.cuda.to_device(x)")
    raises_without_change(bn, lambda: bn.backward(x), TypeError, "numba.cuda.to_device(x)")
    raises_without_change(bn, lambda: bn([1.0]), TypeError, "CUDA device array", "got list")


@needs_cuda
def test_device_input_to_a_cpu_module():
    from numba import cuda

    bn = nbn.BatchNorm2d(3)
    x = np.zeros(SHAPE, np.float32)
    bn(x)
    before = snapshot(bn)
    for call in (lambda: bn(cuda.to_device(x)), lambda: bn.backward(cuda.to_device(x))):
        with pytest.raises(TypeError) as info:
            call()
        assert "copy_to_host()" in str(info.value) and "bn.cuda()" in str(info.value)
        assert_unchanged(bn, before)


@needs_cuda
def test_host_array_assigned_as_a_device_parameter():
    from numba import cuda

    bn = trained("cuda")
    bn.weight = np.ones(3, np.float32)
    raises_without_change(bn, lambda: bn(cuda.to_device(np.zeros(SHAPE, np.float32))), TypeError, "weight", "to_device")


@needs_cuda
def test_functional_arguments_on_mixed_devices():
    from numba import cuda

    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    rm_d, rv_d = cuda.to_device(rm), cuda.to_device(rv)
    with pytest.raises(TypeError, match=r"running_mean to be a CUDA device array.*to_device"):
        nbn.batch_norm(cuda.to_device(x), rm, rv, training=True)
    with pytest.raises(TypeError, match=r"copy_to_host"):
        nbn.batch_norm(x, rm_d, rv_d, training=True)
    with pytest.raises(TypeError, match=r"weight to be a CUDA device array"):
        nbn.batch_norm(cuda.to_device(x), rm_d, rv_d, weight=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"running_var of shape \(3,\), got \(2,\)"):
        nbn.batch_norm(cuda.to_device(x), rm_d, cuda.to_device(np.ones(2, np.float32)), training=True)
    np.testing.assert_array_equal(host(rm_d), rm)
    np.testing.assert_array_equal(host(rv_d), rv)


# --------------------------------------------------------- without CUDA


def test_no_cuda_raises_and_leaves_the_module_unchanged(monkeypatch):
    monkeypatch.setattr(_backend, "cuda_available", lambda: False)
    with pytest.raises(ValueError, match="usable CUDA device.*device='cuda'"):
        nbn.BatchNorm2d(3, device="cuda")
    bn = nbn.BatchNorm2d(3)
    bn(np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32))
    before = snapshot(bn)
    for move in (bn.cuda, lambda: bn.to("cuda")):
        with pytest.raises(ValueError, match="usable CUDA device"):
            move()
        assert_unchanged(bn, before)


def test_import_and_cpu_path_without_cuda():
    """A fresh process without the simulator: importing is free of CUDA; the CPU path runs."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import numba_bn as nbn
        assert "numba.cuda" not in sys.modules, "import numba_bn imported numba.cuda"
        bn = nbn.BatchNorm1d(2)
        y = bn(np.arange(8, dtype=np.float32).reshape(4, 2))
        assert y.shape == (4, 2)
        from numba import cuda
        if not cuda.is_available():
            try:
                nbn.BatchNorm1d(2, device="cuda")
            except ValueError as error:
                assert "usable CUDA device" in str(error)
            else:
                raise AssertionError("device='cuda' without CUDA did not raise")
        print("ok")
        """
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(nbn.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ------------------------------------------------- what a NumPy newcomer meets


@pytest.mark.parametrize("device", DEVICES)
def test_float64_input_to_a_float32_module_says_how_to_fix_it(device):
    bn = trained(device)
    x = to_device(np.zeros(SHAPE), device)  # NumPy's default dtype
    raises_without_change(
        bn, lambda: bn(x), TypeError,
        "expected input of dtype float32 or float16 for a float32 BatchNorm2d, got float64",
        "input.astype(np.float32)", "dtype=np.float64", "NumPy creates float64 arrays",
    )


@pytest.mark.parametrize("device", DEVICES)
def test_integer_input_message_names_only_the_accepted_dtypes(device):
    bn = trained(device)
    info = raises_without_change(
        bn, lambda: bn(to_device(np.zeros(SHAPE, np.uint8), device)), TypeError,
        "expected input of dtype float32 or float16 for a float32 BatchNorm2d, got uint8",
        "input.astype(np.float32)",
    )
    assert "float64" not in str(info.value)  # the module would refuse it too
    assert "build the module" not in str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_grad_output_says_how_to_fix_it(device):
    bn = trained(device)
    grad = to_device(np.ones(SHAPE), device)
    raises_without_change(
        bn, lambda: bn.backward(grad), TypeError,
        "expected grad_output of dtype float32 (the forward input's), got float64",
        "grad_output.astype(np.float32)",
    )


def test_functional_non_float_input_says_how_to_fix_it():
    with pytest.raises(TypeError) as info:
        nbn.batch_stats(np.zeros((4, 3), np.int16))
    assert "got int16; convert it with input.astype(np.float32)" in str(info.value)


def test_list_input_suggests_np_asarray():
    bn = trained("cpu", nbn.BatchNorm1d, (5, 2))
    raises_without_change(bn, lambda: bn([[1.0, 2.0]]), TypeError, "got list", "np.asarray(input, dtype=np.float32)")


def test_torch_tensor_on_the_cpu_path_suggests_numpy():
    torch = pytest.importorskip("torch")
    bn = trained("cpu")
    tensor = torch.zeros(SHAPE, requires_grad=True)
    raises_without_change(
        bn, lambda: bn(tensor), TypeError, "got torch.Tensor", "input.numpy()", "input.detach().cpu().numpy()"
    )
    raises_without_change(bn, lambda: bn.backward(torch.ones(SHAPE)), TypeError, "grad_output.numpy()")
