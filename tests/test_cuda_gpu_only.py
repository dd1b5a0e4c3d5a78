"""CUDA checks that need a real GPU: warp shuffles, CuPy/PyTorch interop, > 2**31 elements.

All skip under the simulator and on machines without a GPU. Run them with
``NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_cuda_gpu_only.py``.
"""

import numpy as np
import pytest
from numba import cuda

import numba_bn as nbn
from checks import assert_close
from cuda_support import host, needs_real_gpu
from inputs import random_input
from numba_bn import config
from numba_bn._device_arrays import is_device_array
from reference import RefBatchNorm, ref_batch_stats

pytestmark = needs_real_gpu

CASES = [
    pytest.param(nbn.BatchNorm2d, (8, 3, 61, 67), 1, id="2d-cfirst-C3"),
    pytest.param(nbn.BatchNorm2d, (8, 61, 67, 3), -1, id="2d-clast-C3"),
    pytest.param(nbn.BatchNorm2d, (4, 37, 29, 31), -1, id="2d-clast-C37"),
    pytest.param(nbn.BatchNorm1d, (5000, 100), 1, id="1d-NC"),
]


@pytest.mark.parametrize("threads", [32, 256, 1024])
@pytest.mark.parametrize("shuffle", [False, True], ids=["shared", "shuffle"])
@pytest.mark.parametrize("cls, shape, channel_axis", CASES)
def test_merge_paths_against_reference(cls, shape, channel_axis, shuffle, threads, monkeypatch, rng):
    monkeypatch.setattr(config, "CUDA_WARP_SHUFFLE", shuffle)
    monkeypatch.setattr(config, "CUDA_THREADS", threads)
    channels = shape[channel_axis]
    for dtype in (np.float32, np.float16):
        bn = cls(channels, device="cuda", channel_axis=channel_axis)
        ref = RefBatchNorm(channels, channel_axis=channel_axis)
        x = random_input(rng, shape, channel_axis, dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        assert_close(host(bn(cuda.to_device(x))), ref(x), dtype, "output")
        assert_close(host(bn.backward(cuda.to_device(dy))), ref.backward(dy), dtype, "grad_input")
        assert_close(host(bn.grad_weight), ref.grad_weight, np.float32, "grad_weight")
        assert_close(host(bn.running_var), ref.running_var, np.float32, "running_var")


def test_cupy_arrays_are_read_in_place(rng):
    cupy = pytest.importorskip("cupy")
    x = random_input(rng, (6, 4, 9, 9), 1, np.float32)
    x_cp = cupy.asarray(x)
    rm, rv = cupy.zeros(4, cupy.float32), cupy.ones(4, cupy.float32)
    y = nbn.batch_norm(x_cp, rm, rv, training=True)
    assert is_device_array(y)
    mean, var, count = ref_batch_stats(x, 1)
    assert_close(cupy.asnumpy(rm), 0.1 * mean, np.float32, "running_mean updated in place")
    ref = RefBatchNorm(4)
    assert_close(host(y), ref(x), np.float32, "output")


def test_torch_cuda_tensors_and_stream(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    x = random_input(rng, (6, 4, 9, 9), 1, np.float32)
    xt = torch.from_numpy(x).cuda()
    rm, rv = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
    w, b = torch.rand(4, device="cuda") + 0.5, torch.randn(4, device="cuda")
    expected_rm, expected_rv = rm.clone(), rv.clone()
    expected = torch.nn.functional.batch_norm(xt, expected_rm, expected_rv, w, b, training=True)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side), nbn.cuda_stream(cuda.external_stream(side.cuda_stream)):
        y = nbn.batch_norm(xt, rm, rv, w, b, training=True)
    side.synchronize()
    np.testing.assert_allclose(host(y), expected.cpu().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm.cpu().numpy(), expected_rm.cpu().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv.cpu().numpy(), expected_rv.cpu().numpy(), rtol=1e-6)

    bn = nbn.BatchNorm2d(4, device="cuda")
    bn.load_state_dict(torch.nn.BatchNorm2d(4).cuda().state_dict())
    assert is_device_array(bn(xt))


@cuda.jit
def _fill_pattern(x, channel_axis_last):
    """x[..., c, ..., m] = (m % 7) + c as float16 (exact), for huge arrays."""
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    i = np.int64(start)
    if channel_axis_last:
        R, C = x.shape
        while i < R * C:
            r = i // C
            c = i - r * C
            x[r, c] = np.float32((r % 7) + c)
            i += step
    else:
        N, C, M = x.shape
        while i < N * C * M:
            m = i % M
            c = (i // M) % C
            x[i // (C * M), c, m] = np.float32((m % 7) + c)
            i += step


def _pattern_stats(length, channels):
    """Exact mean and variance of (m % 7) + c over m < length."""
    residues = np.arange(7)
    counts = length // 7 + (residues < length % 7)
    mean = (residues * counts).sum() / length
    var = (((residues - mean) ** 2) * counts).sum() / length
    return mean + np.arange(channels), np.full(channels, var)


@pytest.mark.slow
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_more_than_2_31_elements(channel_axis):
    """64-bit indexing: statistics and outputs past element 2**31 (float16, ~13 GB)."""
    free, _ = cuda.current_context().get_memory_info()
    if free < 16 * 2**30:
        pytest.skip("needs 16 GiB of free GPU memory")
    if channel_axis == 1:
        shape, length = (3, 2, 2**29 + 5), 2**29 + 5  # pattern along m, the same for every n
    else:
        shape, length = (2**30 + 3, 3), 2**30 + 3
    x = cuda.device_array(shape, np.float16)
    _fill_pattern[1024, 256](x, channel_axis == -1)
    channels = shape[channel_axis]
    assert x.size > 2**31
    mean, var, count = nbn.batch_stats(x, channel_axis=channel_axis)
    expected_mean, expected_var = _pattern_stats(length, channels)
    np.testing.assert_allclose(host(mean), expected_mean, rtol=1e-6)
    np.testing.assert_allclose(host(var), expected_var, rtol=1e-5)
    y = nbn.batch_norm(x, None, None, training=True, channel_axis=channel_axis)
    if channel_axis == 1:
        m = np.arange(length)[-7:]
        got = np.stack([host(y[-1, c, -7:]) for c in range(channels)])
        values = (m % 7)[None, :] + np.arange(channels)[:, None]
        expected = (values - expected_mean[:, None]) / np.sqrt(expected_var[:, None] + 1e-5)
    else:
        r = np.arange(length)[-7:]
        got = host(y[-7:])
        values = (r % 7)[:, None] + np.arange(channels)[None, :]
        expected = (values - expected_mean[None, :]) / np.sqrt(expected_var[None, :] + 1e-5)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=2e-3, atol=2e-3)
