"""The normalisation family on ``device="cuda"``: the CPU tests' twins on tiny shapes (CUDA simulator without a GPU)."""

import numpy as np
import pytest

import numba_bn as nbn
from cuda_support import host, needs_cuda
from test_norms import _randomize, _reference

pytestmark = needs_cuda


def _device(array):
    from numba import cuda

    return cuda.to_device(array)


class _HostModule:
    """A CUDA module's configuration and arrays on the host, for the reference."""

    def __init__(self, module):
        self.__dict__.update(vars(module))
        for name in ("weight", "bias", "running_mean", "running_var"):
            setattr(self, name, host(getattr(module, name)))
        self.__class__ = type("Host" + type(module).__name__, (_HostModule, type(module)), {})


CASES = [
    (lambda: nbn.GroupNorm(2, 4, device="cuda"), (1, 4, 33)),  # rows of 66 values: two blocks per row
    (lambda: nbn.GroupNorm(2, 4, device="cuda", channel_axis=-1, bias=False), (2, 3, 4)),
    (lambda: nbn.InstanceNorm1d(3, affine=True, track_running_stats=True, device="cuda"), (2, 3, 5)),
    (lambda: nbn.LayerNorm((2, 3), device="cuda"), (3, 2, 3)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_cuda_steps_match_reference(case, rng, small_cuda_blocks):
    factory, shape = CASES[case]
    module = factory()
    _randomize(module, rng)
    for step in range(3):
        if step == 2:
            module.eval()
        x = (rng.normal(size=shape) * 3 + 2).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        y_ref, dx_ref, gw_ref, gb_ref, running_ref = _reference(_HostModule(module), x, dy)
        y = module(_device(x))
        dx = module.backward(_device(dy))
        np.testing.assert_allclose(host(y), y_ref, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(host(dx), dx_ref, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(host(module.grad_weight), gw_ref, rtol=1e-4, atol=2e-4)
        if module.bias is not None:
            np.testing.assert_allclose(host(module.grad_bias), gb_ref, rtol=1e-4, atol=2e-4)
        if running_ref is not None:
            np.testing.assert_allclose(host(module.running_mean), running_ref[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(host(module.running_var), running_ref[1], rtol=1e-5, atol=1e-6)


def test_cuda_functions_strided_float16_and_constant_rows(rng, small_cuda_blocks):
    x = rng.normal(size=(2, 4, 6)).astype(np.float32)
    strided = _device(x)[:, :, ::2]
    np.testing.assert_allclose(host(nbn.group_norm(strided, 2)), nbn.group_norm(x[:, :, ::2], 2), atol=1e-6)
    np.testing.assert_allclose(host(nbn.layer_norm(_device(x), 6)), nbn.layer_norm(x, 6), atol=1e-6)
    half = x.astype(np.float16)
    y = nbn.GroupNorm(2, 4, device="cuda")(_device(half))
    assert y.dtype == np.float16
    np.testing.assert_allclose(host(y).astype(np.float32), nbn.GroupNorm(2, 4)(half).astype(np.float32), atol=2e-3)
    constant = np.full((1, 2, 40), 1e5 + 0.1, np.float32)
    np.testing.assert_array_equal(host(nbn.instance_norm(_device(constant))), np.zeros_like(constant))
    mean, var = _device(np.zeros(4, np.float32)), _device(np.ones(4, np.float32))
    nbn.instance_norm(_device(x), mean, var, momentum=0.5)
    cpu_mean, cpu_var = np.zeros(4, np.float32), np.ones(4, np.float32)
    nbn.instance_norm(x, cpu_mean, cpu_var, momentum=0.5)
    np.testing.assert_allclose(host(mean), cpu_mean, atol=1e-6)
    np.testing.assert_allclose(host(var), cpu_var, atol=1e-6)


def test_cuda_module_moves_and_errors(rng, small_cuda_blocks):
    ln = nbn.LayerNorm(3)
    _randomize(ln, rng)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    expected = ln(x)
    ln.cuda()
    assert ln.device == "cuda"
    np.testing.assert_allclose(host(ln(_device(x))), expected, atol=1e-6)
    with pytest.raises(TypeError, match="CUDA device array"):
        ln(x)
    with pytest.raises(ValueError, match="normalized_shape"):
        ln(_device(np.ones((2, 4), np.float32)))
    assert ln.cpu().device == "cpu"
    np.testing.assert_allclose(ln(x), expected, atol=1e-6)
