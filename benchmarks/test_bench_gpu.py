"""GPU benchmark: numba_bn against PyTorch CUDA and a device-to-device copy, same run.

Needs a real GPU and PyTorch with CUDA; skips otherwise (and under the CUDA
simulator). Every case checks numba_bn's result against PyTorch's once, then
pytest-benchmark times one call plus a device synchronisation (what a Python
caller waits for, launch overhead included), and ``extra_info["device_ms"]``
records the device time per call measured with CUDA events over back-to-back
calls after a warm-up. The copy of an array of the same size is the
bandwidth roofline: an eval forward cannot beat it (it reads and writes
the array once), a train forward needs 1.5 copies' traffic and a backward 2.5.

    NUMBA_ENABLE_CUDASIM=0 python -m pytest benchmarks/test_bench_gpu.py --benchmark-enable \\
        --benchmark-json benchmarks/results/gpu.json
"""

import numpy as np
import pytest
from numba import config as numba_config
from numba import cuda

import numba_bn as nbn

REAL_GPU = not numba_config.ENABLE_CUDASIM and cuda.is_available()
pytestmark = pytest.mark.skipif(not REAL_GPU, reason="needs a real CUDA GPU")

SHAPES = [
    (32, 64, 56, 56), (64, 256, 14, 14), (8, 3, 224, 224), (256, 3, 64, 64), (4096, 1024),
    (32, 128, 1000), (4, 32, 16, 56, 56), (100000, 32), (64, 128),
]
#: (channels-first shape, channel_axis); a 2-D (N, C) input is already channels-last.
CASES = [(s, 1) for s in SHAPES] + [(s, -1) for s in SHAPES if len(s) > 2]
OPERATIONS = ["train_forward", "eval_forward", "train_backward"]
IMPLEMENTATIONS = ["numba_bn", "torch", "copy"]
MODULES = {2: nbn.BatchNorm1d, 3: nbn.BatchNorm1d, 4: nbn.BatchNorm2d, 5: nbn.BatchNorm3d}
EPS, MOMENTUM = 1e-5, 0.1


def _case_id(case):
    shape, axis = case
    return "x".join(map(str, shape)) + ("-clast" if axis == -1 else "")


def device_ms(call, warmup=3, repeats=20):
    """Device time per call, from CUDA events around back-to-back calls."""
    for _ in range(warmup):
        call()
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(repeats):
        call()
    end.record()
    end.synchronize()
    return cuda.event_elapsed_time(start, end) / repeats


class Case:
    """Inputs for one shape and layout, shared by numba_bn (numba views) and torch (tensors)."""

    def __init__(self, torch, shape, channel_axis):
        generator = torch.Generator(device="cuda").manual_seed(0)
        channels = shape[1]
        if channel_axis == -1:
            stored = (shape[0], *shape[2:], shape[1])
            # torch sees the same memory as (N, C, ...) with channels-last strides.
            order = (0, len(shape) - 1, *range(1, len(shape) - 1))
        else:
            stored, order = shape, tuple(range(len(shape)))
        self.x_t = torch.randn(stored, device="cuda", generator=generator).permute(order)
        self.dy_t = torch.randn(stored, device="cuda", generator=generator).permute(order)
        stored_order = tuple(int(i) for i in np.argsort(order))
        self.x = cuda.as_cuda_array(self.x_t.permute(stored_order))
        self.dy = cuda.as_cuda_array(self.dy_t.permute(stored_order))
        self.channel_axis = channel_axis
        self.weight_t = torch.rand(channels, device="cuda", generator=generator) + 0.5
        self.bias_t = torch.randn(channels, device="cuda", generator=generator)
        self.rm_t, self.rv_t = torch.zeros(channels, device="cuda"), torch.ones(channels, device="cuda")
        self.weight, self.bias = cuda.as_cuda_array(self.weight_t), cuda.as_cuda_array(self.bias_t)
        self.rm, self.rv = cuda.to_device(np.zeros(channels, np.float32)), cuda.to_device(np.ones(channels, np.float32))
        self.module = MODULES[len(shape)](channels, device="cuda", channel_axis=channel_axis)
        self.module.load_state_dict({"weight": self.weight_t, "bias": self.bias_t,
                                     "running_mean": self.rm_t, "running_var": self.rv_t})
        self.module(self.x)  # the forward that backward differentiates
        saved = torch.ops.aten.native_batch_norm(
            self.x_t, self.weight_t, self.bias_t, self.rm_t.clone(), self.rv_t.clone(), True, MOMENTUM, EPS
        )
        self.save_mean, self.save_invstd = saved[1], saved[2]
        self.copy_out = torch.empty_like(self.x_t)


def numba_bn_call(case, operation):
    if operation == "train_forward":
        return lambda: nbn.batch_norm(case.x, case.rm, case.rv, case.weight, case.bias, training=True,
                                      momentum=MOMENTUM, eps=EPS, channel_axis=case.channel_axis)
    if operation == "eval_forward":
        return lambda: nbn.batch_norm(case.x, case.rm, case.rv, case.weight, case.bias, training=False,
                                      eps=EPS, channel_axis=case.channel_axis)
    return lambda: case.module.backward(case.dy)


def torch_call(torch, case, operation):
    F = torch.nn.functional
    if operation == "train_forward":
        return lambda: F.batch_norm(case.x_t, case.rm_t, case.rv_t, case.weight_t, case.bias_t,
                                    training=True, momentum=MOMENTUM, eps=EPS)
    if operation == "eval_forward":
        return lambda: F.batch_norm(case.x_t, case.rm_t, case.rv_t, case.weight_t, case.bias_t,
                                    training=False, eps=EPS)
    return lambda: torch.ops.aten.native_batch_norm_backward(
        case.dy_t, case.x_t, case.weight_t, case.rm_t, case.rv_t, case.save_mean, case.save_invstd,
        True, EPS, [True, True, True],
    )


def as_torch_layout(torch, array, case):
    """A numba result (stored like x) as a tensor indexed like ``case.x_t``."""
    tensor = torch.as_tensor(array, device="cuda")
    if case.channel_axis == -1:
        tensor = tensor.permute(0, tensor.ndim - 1, *range(1, tensor.ndim - 1))
    return tensor


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    return torch


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_gpu(benchmark, torch, case, operation, implementation):
    shape, channel_axis = case
    data = Case(torch, shape, channel_axis)
    if implementation == "numba_bn":
        call = numba_bn_call(data, operation)
        expected = torch_call(torch, data, operation)()
        got = call()
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(as_torch_layout(torch, got, data), expected, rtol=1e-4, atol=1e-4)
    elif implementation == "torch":
        call = torch_call(torch, data, operation)
    else:
        call = lambda: data.copy_out.copy_(data.x_t)  # noqa: E731
    benchmark.group = f"{operation} {_case_id(case)}"
    benchmark.extra_info["device_ms"] = device_ms(call)
    benchmark.extra_info["bytes"] = data.x_t.numel() * data.x_t.element_size()

    def synchronised():
        call()
        cuda.synchronize()
        torch.cuda.synchronize()

    benchmark.pedantic(synchronised, warmup_rounds=3, rounds=20, iterations=1)
