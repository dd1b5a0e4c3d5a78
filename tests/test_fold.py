"""fold_batchnorm against torch.nn.utils.fusion and by applying the folded layer to data."""

import re

import numpy as np
import pytest

import numba_bn as nbn


def _trained_bn(channels, dtype, affine=True, seed=0):
    """An evaluation-mode module whose running statistics and parameters are not the defaults."""
    rng = np.random.default_rng(seed)
    bn = nbn.BatchNorm1d(channels, affine=affine, dtype=dtype, momentum=None)
    for _ in range(3):
        bn(rng.normal(rng.uniform(-2, 2, channels), rng.uniform(0.5, 3, channels), (8, channels)).astype(dtype))
    if affine:
        bn.weight[...] = rng.normal(1.0, 0.5, channels)
        bn.bias[...] = rng.normal(0.0, 0.5, channels)
    return bn.eval()


def _conv_nd(x, weight, bias):
    """A 'valid' cross-correlation, stride 1: x (N, Cin, *S), weight (Cout, Cin, *K)."""
    kernel = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=tuple(range(2, x.ndim)))
    letters = "defg"[: len(kernel)]
    spatial = "hijk"[: len(kernel)]
    y = np.einsum(f"nc{spatial}{letters},oc{letters}->no{spatial}", windows, weight)
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * len(kernel))


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_folded_conv_equals_conv_then_batchnorm(ndim, with_bias, affine):
    rng = np.random.default_rng(ndim)
    weight = rng.standard_normal((5, 3) + (2,) * ndim)
    bias = rng.standard_normal(5) if with_bias else None
    bn = _trained_bn(5, np.float64, affine=affine)
    folded_weight, folded_bias = nbn.fold_batchnorm(weight, bias, bn)
    x = rng.standard_normal((2, 3) + (4,) * ndim)
    expected = nbn.batch_norm(_conv_nd(x, weight, bias), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                              eps=bn.eps)
    np.testing.assert_allclose(_conv_nd(x, folded_weight, folded_bias), expected, rtol=1e-12, atol=1e-12)


def test_linear_transpose_and_keras_axes():
    rng = np.random.default_rng(1)
    bn = _trained_bn(4, np.float64)
    x = rng.standard_normal((6, 3))
    linear = rng.standard_normal((4, 3))
    w, b = nbn.fold_batchnorm(linear, None, bn)
    np.testing.assert_allclose(x @ w.T + b, bn(x @ linear.T), rtol=1e-12, atol=1e-12)
    keras = rng.standard_normal((2, 2, 3, 4))  # (kh, kw, in, out)
    w, b = nbn.fold_batchnorm(keras, np.ones(4), bn, out_axis=-1)
    patches = rng.standard_normal((6, 2, 2, 3))
    np.testing.assert_allclose(np.einsum("nhwc,hwco->no", patches, w) + b,
                               bn(np.einsum("nhwc,hwco->no", patches, keras) + 1.0), rtol=1e-12, atol=1e-12)
    transpose = rng.standard_normal((3, 4, 2, 2))  # ConvTranspose: (in, out, kh, kw)
    w, _ = nbn.fold_batchnorm(transpose, None, bn, out_axis=1)
    np.testing.assert_allclose(w, transpose * (bn.weight / np.sqrt(bn.running_var + bn.eps))[None, :, None, None])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("layer", ["conv2d", "conv3d", "conv_transpose2d", "linear"])
def test_matches_torch_fusion(dtype, with_bias, layer):
    torch = pytest.importorskip("torch")
    from torch.nn.utils import fusion

    torch_dtype = getattr(torch, np.dtype(dtype).name)
    rng = np.random.default_rng(2)
    shapes = {"conv2d": (6, 3, 3, 3), "conv3d": (6, 2, 2, 3, 3), "conv_transpose2d": (3, 6, 3, 3), "linear": (6, 5)}
    weight = rng.standard_normal(shapes[layer]).astype(dtype)
    bias = rng.standard_normal(6).astype(dtype) if with_bias else None
    torch_bn = torch.nn.BatchNorm2d(6, eps=1e-3, dtype=torch_dtype).eval()
    with torch.no_grad():
        torch_bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 2, 6)))
        torch_bn.running_var.copy_(torch.from_numpy(rng.uniform(0.1, 4, 6)))
        torch_bn.weight.copy_(torch.from_numpy(rng.normal(1, 0.5, 6)))
        torch_bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.5, 6)))
    args = (torch.from_numpy(weight), None if bias is None else torch.from_numpy(bias), torch_bn.running_mean,
            torch_bn.running_var, torch_bn.eps, torch_bn.weight, torch_bn.bias)
    if layer == "linear":
        expected = fusion.fuse_linear_bn_weights(*args)
    else:
        expected = fusion.fuse_conv_bn_weights(*args, transpose=layer == "conv_transpose2d")
    out_axis = 1 if layer == "conv_transpose2d" else 0
    # A PyTorch state dict (tensors) with eps, and the same statistics loaded into a numba_bn module.
    from_state = nbn.fold_batchnorm(weight, bias, torch_bn.state_dict(), eps=torch_bn.eps, out_axis=out_axis)
    module = nbn.BatchNorm2d(6, eps=1e-3, dtype=dtype)
    module.load_state_dict(torch_bn.state_dict())
    from_module = nbn.fold_batchnorm(weight, bias, module.eval(), out_axis=out_axis)
    ulp = np.finfo(dtype).eps
    for ours in (from_state, from_module):
        for actual, reference in zip(ours, expected):
            reference = reference.detach().numpy()
            assert actual.dtype == dtype == reference.dtype and actual.shape == reference.shape
            np.testing.assert_allclose(actual, reference, rtol=4 * ulp, atol=4 * ulp)


def test_results_take_the_weights_dtype_and_inputs_are_unchanged():
    bn = _trained_bn(3, np.float32)
    weight = np.ones((3, 2), np.float16)
    bias = np.zeros(3, np.float64)
    before = bn.state_dict()
    w, b = nbn.fold_batchnorm(weight, bias, bn)
    assert w.dtype == b.dtype == np.float16 and np.all(weight == 1) and np.all(bias == 0)
    assert all(np.array_equal(before[k], v) for k, v in bn.state_dict().items())


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda w, bn: nbn.fold_batchnorm(w, None, bn.train()), ValueError, "call bn.eval() first"),
        (lambda w, bn: nbn.fold_batchnorm(w, None, nbn.BatchNorm1d(3, track_running_stats=False).eval()),
         ValueError, "track_running_stats=True"),
        (lambda w, bn: nbn.fold_batchnorm(w, None, bn.state_dict()), ValueError, "expected eps with a state dict"),
        (lambda w, bn: nbn.fold_batchnorm(w, None, {"weight": np.ones(3)}, eps=1e-5), ValueError,
         "['running_mean', 'running_var']"),
        (lambda w, bn: nbn.fold_batchnorm(w, None, [1, 2]), TypeError, "module or a state dict, got list"),
        (lambda w, bn: nbn.fold_batchnorm(w.tolist(), None, bn), TypeError, "numpy.ndarray"),
        (lambda w, bn: nbn.fold_batchnorm(w.astype(np.int32), None, bn), TypeError, "float16, float32 or float64"),
        (lambda w, bn: nbn.fold_batchnorm(w.T, None, bn), ValueError, "3 channels, got weight shape (2, 3)"),
        (lambda w, bn: nbn.fold_batchnorm(w, None, bn, out_axis=2), ValueError, "within the weight's 2 axes"),
        (lambda w, bn: nbn.fold_batchnorm(w, None, bn, out_axis=1.0), TypeError, "out_axis to be an int"),
        (lambda w, bn: nbn.fold_batchnorm(w, np.ones(2), bn), ValueError, "bias of shape (3,)"),
        (lambda w, bn: nbn.fold_batchnorm(w, None, bn, eps=-1.0), ValueError, "eps >= 0"),
    ],
)
def test_errors(call, error, message):
    bn = _trained_bn(3, np.float32)
    with pytest.raises(error, match=re.escape(message)):
        call(np.ones((3, 2), np.float32), bn)
