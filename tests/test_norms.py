"""GroupNorm, InstanceNorm1d/2d/3d and LayerNorm on the CPU against the float64 reference and PyTorch.

One float32 kernel build serves most cases; float64 and float16 run on a few.
The PyTorch tests skip cleanly when torch is not installed.
"""

import pickle
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import norm_reference as ref
import numba_bn as nbn
from numba_bn import config

# name -> (factory(dtype), input shape, reference kind)
CASES = {
    "group-nchw": (lambda dt: nbn.GroupNorm(2, 6, dtype=dt), (3, 6, 5, 4)),
    "group-nhwc": (lambda dt: nbn.GroupNorm(3, 6, dtype=dt, channel_axis=-1), (2, 4, 5, 6)),
    "group-2d-nobias": (lambda dt: nbn.GroupNorm(3, 6, bias=False, dtype=dt), (5, 6)),
    "group-5d-plain": (lambda dt: nbn.GroupNorm(1, 4, affine=False, dtype=dt), (2, 4, 3, 2, 2)),
    "instance1d-track": (lambda dt: nbn.InstanceNorm1d(4, affine=True, track_running_stats=True, dtype=dt), (3, 4, 7)),
    "instance2d-nhwc-cumulative": (
        lambda dt: nbn.InstanceNorm2d(3, track_running_stats=True, momentum=None, dtype=dt, channel_axis=-1),
        (2, 5, 4, 3),
    ),
    "instance3d-affine": (lambda dt: nbn.InstanceNorm3d(2, affine=True, dtype=dt), (2, 2, 3, 2, 2)),
    "instance1d-unbatched": (lambda dt: nbn.InstanceNorm1d(4, affine=True, track_running_stats=True, dtype=dt), (4, 9)),
    "layer": (lambda dt: nbn.LayerNorm(6, dtype=dt), (2, 3, 6)),
    "layer-2axes-nobias": (lambda dt: nbn.LayerNorm((4, 5), bias=False, dtype=dt), (3, 4, 5)),
    "layer-plain-unbatched": (lambda dt: nbn.LayerNorm(5, elementwise_affine=False, dtype=dt), (5,)),
}


def _randomize(module, rng):
    """Random parameters (and running buffers), so the affine and the buffers are really used."""
    state = {
        key: (rng.normal(size=value.shape) if key != "running_var" else rng.uniform(0.5, 2.0, value.shape))
        for key, value in module.state_dict().items()
        if key != "num_batches_tracked"
    }
    module.load_state_dict(state, strict=False)


def _reference(module, x, dy):
    """``(y, dx, grad_weight, grad_bias, running)`` of the module's current configuration and mode."""
    w = None if module.weight is None else np.asarray(module.weight, np.float64)
    b = None if module.bias is None else np.asarray(module.bias, np.float64)
    eps = module.eps
    if isinstance(module, nbn.GroupNorm):
        y, _, _ = ref.group_norm(x, module.num_groups, w, b, eps, module.channel_axis)
        dx, gw, gb = ref.group_norm_backward(x, dy, module.num_groups, w, eps, module.channel_axis)
        return y, dx, gw, gb, None
    if isinstance(module, nbn.LayerNorm):
        y, _, _ = ref.layer_norm(x, module.normalized_shape, w, b, eps)
        dx, gw, gb = ref.layer_norm_backward(x, dy, module.normalized_shape, w, eps)
        return y, dx, gw, gb, None
    unbatched = x.ndim == module._batched_rank - 1
    xb, dyb = (x[None], dy[None]) if unbatched else (x, dy)
    running = None
    if module.track_running_stats and not module.training:
        running = (module.running_mean.astype(np.float64), module.running_var.astype(np.float64))
    y, _, _ = ref.instance_norm(xb, w, b, eps, module.channel_axis, running)
    dx, gw, gb = ref.instance_norm_backward(xb, dyb, w, eps, module.channel_axis, running)
    new_running = None
    if module.track_running_stats and module.training:
        momentum = 0.0 if module.momentum is None else module.momentum
        new_running = ref.instance_running(xb, module.running_mean, module.running_var, momentum, module.channel_axis)
    if unbatched:
        y, dx = y[0], dx[0]
    return y, dx, gw, gb, new_running


def _check_steps(module, shape, rng, dtype, rtol, atol):
    """Two training steps then an evaluation step, each forward and backward against the reference."""
    for step in range(3):
        if step == 2:
            module.eval()
        x = (rng.normal(size=shape) * 3 + 2).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        y_ref, dx_ref, gw_ref, gb_ref, running_ref = _reference(module, x, dy)
        y = module(x)
        dx = module.backward(dy)
        assert y.dtype == x.dtype and y.shape == x.shape and dx.dtype == x.dtype
        np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol)
        np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=atol)
        if module.weight is not None:
            np.testing.assert_allclose(module.grad_weight, gw_ref, rtol=rtol, atol=atol * 10)
            assert module.grad_weight.dtype == module.dtype and module.grad_weight.shape == module.weight.shape
        if module.bias is not None:
            np.testing.assert_allclose(module.grad_bias, gb_ref, rtol=rtol, atol=atol * 10)
        else:
            assert module.grad_bias is None
        if running_ref is not None:
            np.testing.assert_allclose(module.running_mean, running_ref[0], rtol=rtol, atol=atol)
            np.testing.assert_allclose(module.running_var, running_ref[1], rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_module_steps_match_reference(name, rng):
    factory, shape = CASES[name]
    module = factory(np.float32)
    _randomize(module, rng)
    _check_steps(module, shape, rng, np.float32, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["group-nhwc", "instance1d-track", "layer-2axes-nobias"])
def test_float64_modules_match_reference(name, rng):
    factory, shape = CASES[name]
    module = factory(np.float64)
    _randomize(module, rng)
    _check_steps(module, shape, rng, np.float64, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["group-nchw", "layer"])
def test_float16_input_matches_reference(name, rng):
    factory, shape = CASES[name]
    module = factory(np.float32)
    _randomize(module, rng)
    x = rng.normal(size=shape).astype(np.float16)
    dy = rng.normal(size=shape).astype(np.float16)
    y_ref, dx_ref, gw_ref, _, _ = _reference(module, x.astype(np.float64), dy.astype(np.float64))
    y = module(x)
    dx = module.backward(dy)
    assert y.dtype == np.float16 and dx.dtype == np.float16 and module.grad_weight.dtype == np.float32
    np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=2e-3, atol=5e-3)
    np.testing.assert_allclose(dx.astype(np.float64), dx_ref, rtol=2e-3, atol=5e-3)
    np.testing.assert_allclose(module.grad_weight, gw_ref, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ PyTorch


def _torch_module(torch, module):
    nn = torch.nn
    if isinstance(module, nbn.GroupNorm):
        theirs = nn.GroupNorm(module.num_groups, module.num_channels, module.eps, module.affine, bias=module._use_bias)
    elif isinstance(module, nbn.LayerNorm):
        theirs = nn.LayerNorm(module.normalized_shape, module.eps, module.elementwise_affine, bias=module._use_bias)
    else:
        kind = getattr(nn, type(module).__name__)
        theirs = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      bias=module._use_bias)
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in module.state_dict().items()})
    return theirs.double()


def _torch_layout(torch, array, module):
    """Our array as torch's channels-first tensor."""
    tensor = torch.from_numpy(np.array(array, dtype=np.float64))
    if getattr(module, "channel_axis", 1) == -1:
        tensor = tensor.movedim(-1, 1)
    return tensor


@pytest.mark.parametrize("name", sorted(CASES))
def test_modules_match_torch(name, rng):
    torch = pytest.importorskip("torch")
    factory, shape = CASES[name]
    module = factory(np.float32)
    _randomize(module, rng)
    theirs = _torch_module(torch, module)
    expected = repr(theirs)
    if getattr(module, "channel_axis", 1) == -1:
        expected = expected[:-1] + ", channel_axis=-1)"
    assert repr(module) == expected
    for step in range(3):
        if step == 2:
            module.eval()
            theirs.eval()
        x = (rng.normal(size=shape) * 3 + 2).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        xt = _torch_layout(torch, x, module).requires_grad_()
        theirs.zero_grad()
        yt = theirs(xt)
        yt.backward(_torch_layout(torch, dy, module))
        y = module(x)
        dx = module.backward(dy)
        np.testing.assert_allclose(_torch_layout(torch, y, module).numpy(), yt.detach().numpy(), rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(_torch_layout(torch, dx, module).numpy(), xt.grad.numpy(), rtol=1e-4, atol=2e-5)
        if module.weight is not None:
            np.testing.assert_allclose(module.grad_weight, theirs.weight.grad.numpy(), rtol=1e-4, atol=2e-4)
        if module.bias is not None:
            np.testing.assert_allclose(module.grad_bias, theirs.bias.grad.numpy(), rtol=1e-4, atol=2e-4)
        theirs_state = theirs.state_dict()
        for key, value in module.state_dict().items():
            np.testing.assert_allclose(value, theirs_state[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_reprs_and_state_keys_match_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    pairs = [
        (nbn.GroupNorm(32, 256), nn.GroupNorm(32, 256)),
        (nbn.GroupNorm(4, 8, affine=False), nn.GroupNorm(4, 8, affine=False)),
        (nbn.InstanceNorm2d(64), nn.InstanceNorm2d(64)),
        (nbn.InstanceNorm1d(3, momentum=None, affine=True, track_running_stats=True),
         nn.InstanceNorm1d(3, momentum=None, affine=True, track_running_stats=True)),
        (nbn.InstanceNorm3d(3, affine=True, bias=False), nn.InstanceNorm3d(3, affine=True, bias=False)),
        (nbn.LayerNorm(1024), nn.LayerNorm(1024)),
        (nbn.LayerNorm((3, 4), elementwise_affine=False), nn.LayerNorm((3, 4), elementwise_affine=False)),
        (nbn.LayerNorm(5, bias=False), nn.LayerNorm(5, bias=False)),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert ours.load_state_dict(theirs.state_dict()) == ([], [])
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    assert repr(nbn.GroupNorm(2, 4, channel_axis=-1, dtype=np.float64)) == (
        "GroupNorm(2, 4, eps=1e-05, affine=True, bias=True, channel_axis=-1, dtype=float64)"
    )


def test_functions_match_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.normal(size=(3, 6, 5)) + 4
    w, b = rng.normal(size=6), rng.normal(size=6)
    t = torch.from_numpy
    np.testing.assert_allclose(nbn.group_norm(x, 3, w, b), F.group_norm(t(x), 3, t(w), t(b)).numpy(), atol=1e-12)
    lw, lb = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    np.testing.assert_allclose(nbn.layer_norm(x, (6, 5), lw, lb), F.layer_norm(t(x), (6, 5), t(lw), t(lb)).numpy(),
                               atol=1e-12)
    ours_rm, ours_rv = np.zeros(6), np.ones(6)
    theirs_rm, theirs_rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    y = nbn.instance_norm(x, ours_rm, ours_rv, w, b, momentum=0.3)
    yt = F.instance_norm(t(x), theirs_rm, theirs_rv, t(w), t(b), momentum=0.3)
    np.testing.assert_allclose(y, yt.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours_rm, theirs_rm.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours_rv, theirs_rv.numpy(), atol=1e-12)
    y = nbn.instance_norm(x, ours_rm, ours_rv, w, b, use_input_stats=False)
    yt = F.instance_norm(t(x), theirs_rm, theirs_rv, t(w), t(b), use_input_stats=False)
    np.testing.assert_allclose(y, yt.numpy(), atol=1e-12)


def test_float16_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(2, 4, 6)).astype(np.float16)
    theirs = torch.nn.GroupNorm(2, 4)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(nbn.GroupNorm(2, 4)(x).astype(np.float32), theirs.astype(np.float32), atol=2e-3)


# ------------------------------------------------------------------ errors


def _snapshot(module):
    return {k: np.array(v) for k, v in module.state_dict().items()}, module.num_batches_tracked


def _unchanged(module, before):
    after = _snapshot(module)
    assert after[1] == before[1]
    assert after[0].keys() == before[0].keys()
    for key in before[0]:
        np.testing.assert_array_equal(after[0][key], before[0][key])


@pytest.mark.parametrize(
    "module, x, error, words",
    [
        (nbn.GroupNorm(2, 8), np.ones((2, 6, 3), np.float32), ValueError, ["8", "6"]),
        (nbn.GroupNorm(2, 8), np.ones(8, np.float32), ValueError, ["2", "1D"]),
        (nbn.GroupNorm(2, 4), np.ones((2, 4, 3), np.int32), TypeError, ["float32", "int32"]),
        (nbn.GroupNorm(2, 4), np.ones((2, 4, 3), np.float64), TypeError, ["float32", "float64"]),
        (nbn.LayerNorm(4), np.ones((2, 5), np.float32), ValueError, ["4", "(2, 5)"]),
        (nbn.LayerNorm((2, 4)), np.ones((4,), np.float32), ValueError, ["(2, 4)", "(4,)"]),
        (nbn.InstanceNorm2d(3, track_running_stats=True), np.ones((1, 2, 3, 4, 5), np.float32), ValueError,
         ["3D or 4D", "5D"]),
        (nbn.InstanceNorm1d(3, affine=True), np.ones((2, 4, 5), np.float32), ValueError, ["(3)", "4"]),
        (nbn.InstanceNorm1d(3, track_running_stats=True), np.ones((2, 3, 1), np.float32), ValueError,
         ["more than 1 spatial element", "(2, 3, 1)"]),
        (nbn.InstanceNorm1d(3, affine=True, track_running_stats=True), [[1.0]], TypeError, ["numpy.ndarray", "list"]),
    ],
)
def test_bad_input_raises_and_changes_nothing(module, x, error, words):
    before = _snapshot(module)
    with pytest.raises(error) as raised:
        module(x)
    for word in words:
        assert word in str(raised.value)
    _unchanged(module, before)


def test_bad_construction():
    with pytest.raises(ValueError, match=r"num_channels \(8\) not divisible by num_groups \(3\)"):
        nbn.GroupNorm(3, 8)
    with pytest.raises(TypeError, match="num_groups"):
        nbn.GroupNorm(2.0, 8)
    with pytest.raises(ValueError, match="normalized_shape"):
        nbn.LayerNorm(())
    with pytest.raises(TypeError, match="normalized_shape"):
        nbn.LayerNorm(2.5)
    with pytest.raises(TypeError, match="float32 or float64"):
        nbn.InstanceNorm1d(3, dtype=np.int32)
    with pytest.raises(ValueError, match="num_channels"):
        nbn.group_norm(np.ones((2, 6, 3)), 4)


def test_bad_state_dict_changes_nothing(rng):
    module = nbn.LayerNorm((2, 3))
    _randomize(module, rng)
    before = _snapshot(module)
    with pytest.raises(ValueError, match=r"size mismatch for bias: expected shape \(2, 3\), got \(6,\)"):
        module.load_state_dict({"weight": np.zeros((2, 3)), "bias": np.zeros(6)})
    with pytest.raises(ValueError, match=r"missing key\(s\) \['bias'\]"):
        module.load_state_dict({"weight": np.zeros((2, 3))})
    _unchanged(module, before)
    norm = nbn.InstanceNorm1d(2, affine=True, track_running_stats=True)
    before = _snapshot(norm)
    with pytest.raises(ValueError, match="running_var"):
        norm.load_state_dict({"weight": np.ones(2), "bias": np.ones(2), "running_mean": np.ones(2),
                              "running_var": np.ones(3)})
    _unchanged(norm, before)
    untracked = nbn.InstanceNorm1d(2)
    with pytest.warns(UserWarning, match="Unexpected running stats"):
        untracked.load_state_dict({"running_mean": np.ones(2), "running_var": np.ones(2)})


def test_channel_mismatch_without_affine_warns_and_uses_the_input():
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="does not match num_features"):
        y = nbn.InstanceNorm1d(3)(x)
    np.testing.assert_allclose(y, ref.instance_norm(x)[0], atol=1e-5)


# ------------------------------------------------------------------ edge cases


def test_one_value_per_group_gives_the_bias_exactly():
    gn = nbn.GroupNorm(4, 4)
    gn.load_state_dict({"weight": np.full(4, 3.0), "bias": np.arange(4.0)})
    x = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_array_equal(gn(x), np.tile(np.arange(4, dtype=np.float32), (2, 1)))
    np.testing.assert_array_equal(nbn.LayerNorm(1, elementwise_affine=False)(x[:, :1]), np.zeros((2, 1), np.float32))


def test_instance_norm_eval_with_one_value_uses_running_stats():
    norm = nbn.InstanceNorm1d(2, track_running_stats=True).eval()
    y = norm(np.full((3, 2, 1), 5.0, np.float32))
    np.testing.assert_allclose(y, np.full((3, 2, 1), 5.0 / np.sqrt(1 + 1e-5)), rtol=1e-6)


def test_empty_batch():
    gn = nbn.GroupNorm(2, 4)
    x = np.ones((0, 4, 3), np.float32)
    assert gn(x).shape == (0, 4, 3)
    assert gn.backward(x).shape == (0, 4, 3)
    np.testing.assert_array_equal(gn.grad_weight, np.zeros(4, np.float32))
    assert nbn.LayerNorm(3)(np.ones((0, 3), np.float32)).shape == (0, 3)
    norm = nbn.InstanceNorm1d(4, track_running_stats=True)
    assert norm(np.ones((0, 4, 3), np.float32)).shape == (0, 4, 3)
    np.testing.assert_array_equal(norm.running_mean, np.zeros(4))


def test_nan_stays_in_its_group():
    x = np.random.default_rng(3).normal(size=(2, 4, 5)).astype(np.float32)
    x[0, 1, 2] = np.nan
    y = nbn.GroupNorm(2, 4)(x)
    assert np.isnan(y[0, :2]).all()
    assert np.isfinite(y[0, 2:]).all() and np.isfinite(y[1]).all()


@pytest.mark.parametrize("split", [False, True])
def test_constant_rows_give_exact_zero(split, monkeypatch):
    if split:
        monkeypatch.setattr(config, "NORM_PART_VALUES", 7)
    x = np.full((2, 4, 30), 1234.567, np.float32)
    np.testing.assert_array_equal(nbn.GroupNorm(2, 4, affine=False)(x), np.zeros_like(x))
    np.testing.assert_array_equal(nbn.LayerNorm(30, elementwise_affine=False)(x), np.zeros_like(x))
    norm = nbn.InstanceNorm1d(4)
    np.testing.assert_array_equal(norm(x), np.zeros_like(x))
    np.testing.assert_array_equal(norm.backward(np.ones_like(x)), np.zeros_like(x))
    wide = np.full((3, 2, 37), 1e9 + 0.1)  # a value whose square does not fit a float64 exactly
    np.testing.assert_array_equal(nbn.InstanceNorm1d(2, dtype=np.float64)(wide), np.zeros_like(wide))


def test_large_mean_over_std_in_float32(rng):
    x = (1e5 + rng.normal(size=(4, 2048))).astype(np.float32)
    y = nbn.LayerNorm(2048, elementwise_affine=False)(x)
    y_ref, _, var_ref = ref.layer_norm(x, (2048,))
    np.testing.assert_allclose(y, y_ref, atol=2e-4)
    # The textbook E[x^2] - E[x]^2 in float32 is far off on this data.
    naive = (x * x).mean(axis=1, dtype=np.float32) - x.mean(axis=1, dtype=np.float32) ** 2
    assert np.abs(naive - var_ref).max() > 0.1
    wide = 1e9 + rng.normal(size=(3, 2, 500))  # |mean|/std = 1e9 in float64
    np.testing.assert_allclose(nbn.GroupNorm(1, 2, dtype=np.float64)(wide), ref.group_norm(wide, 1)[0], atol=1e-6)


def test_strided_read_only_and_byte_swapped_inputs(rng):
    base = rng.normal(size=(3, 8, 10)).astype(np.float32)
    strided = base[:, ::2, ::-2]
    read_only = base.copy()
    read_only.flags.writeable = False
    swapped = base.astype(">f4")
    gn = nbn.GroupNorm(2, 4)
    np.testing.assert_allclose(gn(strided), ref.group_norm(strided, 2)[0], atol=2e-5)
    dx = gn.backward(np.ones_like(strided))
    np.testing.assert_allclose(dx, ref.group_norm_backward(strided, np.ones(strided.shape), 2)[0], atol=2e-5)
    ln = nbn.LayerNorm(10)
    for x in (read_only, swapped):
        np.testing.assert_allclose(ln(x), ref.layer_norm(x, (10,))[0], atol=2e-5)
    assert ln(swapped).dtype == np.float32


def test_modified_input_is_noticed():
    x = np.random.default_rng(4).normal(size=(2, 4, 3)).astype(np.float32)
    gn = nbn.GroupNorm(2, 4)
    gn(x)
    x[...] += 1
    with pytest.raises(ValueError):
        gn.backward(np.ones_like(x))


def test_no_grad_pickle_and_moves(rng):
    ln = nbn.LayerNorm(4)
    _randomize(ln, rng)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    with nbn.no_grad():
        y = ln(x)
    with pytest.raises(RuntimeError, match="no_grad"):
        ln.backward(np.ones_like(x))
    copy = pickle.loads(pickle.dumps(ln))
    np.testing.assert_array_equal(copy(x), y)
    assert ln.cpu() is ln and ln.to("cpu") is ln
    with pytest.raises(RuntimeError, match="forward"):
        nbn.GroupNorm(1, 2).backward(np.ones((1, 2, 2), np.float32))


# ------------------------------------------------------------------ work splits and threads


def _family_outputs(rng_seed=5):
    """Outputs and gradients of one GroupNorm, InstanceNorm and LayerNorm step (parallel kernels)."""
    rng = np.random.default_rng(rng_seed)
    results = []
    for module, shape in (
        (nbn.GroupNorm(2, 6), (3, 6, 40)),
        (nbn.GroupNorm(3, 6, channel_axis=-1), (2, 17, 6)),
        (nbn.InstanceNorm1d(4, affine=True), (2, 4, 50)),
        (nbn.LayerNorm(90), (3, 90)),
    ):
        _randomize(module, rng)
        x = (rng.normal(size=shape) * 5 + 7).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        y = module(x)
        _, dx_ref, _, _, _ = _reference(module, x, dy)
        results.append((y, module.backward(dy), module.grad_weight, _reference(module, x, dy)[0], dx_ref))
    return results


@pytest.mark.parametrize("split", [False, True])
def test_split_rows_and_threads_agree(split, monkeypatch):
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)
    monkeypatch.setattr(config, "NORM_ROW_BLOCKS", 3)
    if split:  # few long rows: each row is cut into pieces
        monkeypatch.setattr(config, "NORM_PART_VALUES", 13)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _family_outputs()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _family_outputs()
    finally:
        numba.set_num_threads(threads)
    for first, second in zip(one, two):
        y, dx, gw, y_ref, dx_ref = first
        np.testing.assert_allclose(y, y_ref, atol=3e-5)
        np.testing.assert_allclose(dx, dx_ref, atol=3e-5)
        for a, b in zip(first[:3], second[:3]):
            np.testing.assert_array_equal(a, b)


def test_split_path_is_taken(monkeypatch):
    from numba_bn._row_layout import group_rows, layer_rows, row_parts

    assert row_parts(layer_rows((8, 4096), 1)) == 1
    assert row_parts(group_rows((16, 256, 28, 28), 1, 1)) == 4
    monkeypatch.setattr(config, "NORM_PART_VALUES", 13)
    assert row_parts(layer_rows((3, 90), 1)) == 7


# ------------------------------------------------------------------ hypothesis


@settings(max_examples=12, deadline=None)
@given(
    samples=st.integers(0, 3),
    groups=st.integers(1, 3),
    per_group=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_group_norm_property(samples, groups, per_group, spatial, channels_last, seed):
    rng = np.random.default_rng(seed)
    channels = groups * per_group
    shape = (samples, *spatial, channels) if channels_last else (samples, channels, *spatial)
    axis = -1 if channels_last else 1
    x = rng.normal(size=shape) * rng.uniform(0.1, 10) + rng.uniform(-50, 50)
    dy = rng.normal(size=shape)
    w, b = rng.normal(size=channels), rng.normal(size=channels)
    gn = nbn.GroupNorm(groups, channels, dtype=np.float64, channel_axis=axis)
    gn.load_state_dict({"weight": w, "bias": b})
    y = gn(x)
    dx = gn.backward(dy)
    np.testing.assert_allclose(y, ref.group_norm(x, groups, w, b, 1e-5, axis)[0], atol=1e-9)
    dx_ref, gw_ref, gb_ref = ref.group_norm_backward(x, dy, groups, w, 1e-5, axis)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-8)
    np.testing.assert_allclose(gn.grad_weight, gw_ref, atol=1e-8)
    np.testing.assert_allclose(gn.grad_bias, gb_ref, atol=1e-8)


@settings(max_examples=8, deadline=None)
@given(
    leading=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    normalized=st.lists(st.integers(1, 5), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_layer_norm_property(leading, normalized, seed):
    rng = np.random.default_rng(seed)
    shape = (*leading, *normalized)
    x = rng.normal(size=shape) * 3 + 1
    dy = rng.normal(size=shape)
    w, b = rng.normal(size=normalized), rng.normal(size=normalized)
    ln = nbn.LayerNorm(tuple(normalized), dtype=np.float64)
    ln.load_state_dict({"weight": w, "bias": b})
    np.testing.assert_allclose(ln(x), ref.layer_norm(x, normalized, w, b)[0], atol=1e-9)
    dx_ref, gw_ref, _ = ref.layer_norm_backward(x, dy, normalized, w)
    np.testing.assert_allclose(ln.backward(dy), dx_ref, atol=1e-8)
    np.testing.assert_allclose(ln.grad_weight, gw_ref, atol=1e-8)


def test_functional_errors_and_defaults():
    x = np.random.default_rng(6).normal(size=(2, 4, 3))
    with pytest.raises(ValueError, match="use_input_stats"):
        nbn.instance_norm(x, use_input_stats=False)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        nbn.group_norm(x, 2, weight=np.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(nbn.instance_norm(x), ref.instance_norm(x)[0], atol=1e-9)
