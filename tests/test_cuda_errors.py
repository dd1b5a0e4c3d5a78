"""Device mismatches and bad input on the CUDA path: exception, message, no state change."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import cuda

import numba_bn as nbn
from cuda_support import host, needs_cuda
from state_snapshot import assert_unchanged, snapshot
from numba_bn import _device
from state_snapshot import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("small_cuda_blocks")


def trained_on_device(cls=nbn.BatchNorm2d, shape=(4, 3, 5, 5), **kwargs):
    """A CUDA module after one train step and one backward, so every field is set."""
    bn = cls(shape[1], device="cuda", **kwargs)
    x = np.random.default_rng(0).standard_normal(shape).astype(bn.dtype)
    bn(cuda.to_device(x))
    bn.backward(cuda.to_device(np.ones_like(x)))
    return bn


def raises_on_device_without_change(bn, call, error, *fragments):
    before = snapshot(bn)
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert_unchanged(bn, before)


# ------------------------------------------------------ device mismatches


@needs_cuda
def test_numpy_input_to_a_cuda_module():
    bn = trained_on_device()
    x = np.zeros((4, 3, 5, 5), np.float32)
    raises_on_device_without_change(bn, lambda: bn(x), TypeError, "numpy.ndarray", "numba.cuda.to_device(x)")
    raises_on_device_without_change(bn, lambda: bn.backward(x), TypeError, "numba.cuda.to_device(x)")
    raises_on_device_without_change(bn, lambda: bn([1.0]), TypeError, "CUDA device array", "got list")


@needs_cuda
def test_device_input_to_a_cpu_module():
    bn = nbn.BatchNorm2d(3)
    x = np.zeros((4, 3, 5, 5), np.float32)
    bn(x)
    before = snapshot(bn)
    for call in (lambda: bn(cuda.to_device(x)), lambda: bn.backward(cuda.to_device(x))):
        with pytest.raises(TypeError) as info:
            call()
        assert "copy_to_host()" in str(info.value) and "bn.cuda()" in str(info.value)
        assert_unchanged(bn, before)


@needs_cuda
def test_functional_arguments_on_mixed_devices():
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


# -------------------------------------------------------------- bad input


@needs_cuda
@pytest.mark.parametrize(
    "shape, dtype, error, fragments",
    [
        ((4, 3, 5), np.float32, ValueError, ["expected 4D input (got 3D input)"]),
        ((4, 5, 5, 5), np.float32, ValueError, ["expected input with 3 channels on axis 1, got 5"]),
        ((4, 3, 5, 5), np.float64, TypeError, ["float32", "got float64", "astype"]),
        ((4, 3, 5, 5), np.int32, TypeError, ["float16, float32 or float64, got int32"]),
        ((1, 3, 1, 1), np.float32, ValueError, ["Expected more than 1 value per channel"]),
    ],
)
def test_bad_device_input(shape, dtype, error, fragments):
    bn = trained_on_device()
    x = cuda.to_device(np.zeros(shape, dtype))
    raises_on_device_without_change(bn, lambda: bn(x), error, *fragments)


@needs_cuda
def test_bad_grad_output_on_device():
    bn = trained_on_device()
    raises_on_device_without_change(
        bn, lambda: bn.backward(cuda.to_device(np.zeros((4, 3, 5, 4), np.float32))), ValueError, "(4, 3, 5, 5)"
    )
    raises_on_device_without_change(
        bn, lambda: bn.backward(cuda.to_device(np.zeros((4, 3, 5, 5), np.float64))), TypeError, "float32"
    )


@needs_cuda
def test_host_array_assigned_as_a_device_parameter():
    bn = trained_on_device()
    bn.weight = np.ones(3, np.float32)
    raises_on_device_without_change(
        bn, lambda: bn(cuda.to_device(np.zeros((4, 3, 5, 5), np.float32))), TypeError, "weight", "to_device"
    )


@needs_cuda
def test_bad_state_dict_on_device():
    bn = trained_on_device()
    state = bn.state_dict()
    state["running_var"] = np.ones(4, np.float32)
    raises_on_device_without_change(bn, lambda: bn.load_state_dict(state), ValueError, "running_var")


# --------------------------------------------------------- without CUDA


def test_no_cuda_raises_and_leaves_the_module_unchanged(monkeypatch):
    monkeypatch.setattr(_device, "cuda_available", lambda: False)
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
