"""numba_bn against PyTorch's own ``torch.nn.BatchNorm*d`` (skipped without torch).

Checks, for BatchNorm1d/2d/3d, channels first and last (torch gets the
channels-first *view* of the channels-last data, i.e. channels_last memory),
float32, float64 and float16-in-float32, and the flag combinations (bias=False,
momentum=None, affine=False, track_running_stats=False):

* step-by-step sequences of train forwards, backward calls (torch autograd
  with ``y.backward(dy)``) and eval forwards: outputs, grad_input,
  grad_weight/grad_bias, running buffers and num_batches_tracked;
* state_dict keys, values and dtypes; repr; reset_running_stats/reset_parameters;
* loading a torch state_dict (tensors, directly) into ours, and ours into
  torch via ``torch.from_numpy``;
* empty training batches and the one-value-per-channel ValueError;
* ``batch_norm`` against ``torch.nn.functional.batch_norm``.
"""

import numpy as np
import pytest

import numba_bn as nbn
from inputs import random_input
from matrix import AXES, DTYPES

torch = pytest.importorskip("torch")

TORCH_CLASS = {
    nbn.BatchNorm1d: torch.nn.BatchNorm1d,
    nbn.BatchNorm2d: torch.nn.BatchNorm2d,
    nbn.BatchNorm3d: torch.nn.BatchNorm3d,
}
TORCH_DTYPE = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
               np.dtype(np.float64): torch.float64}
#: (rtol, atol / max(|expected|, 1)). Torch's float16 CPU kernels round
#: intermediates to half in some paths (affine=False, non-channels_last
#: strides), so float16 gets half precision's tolerance, not an ulp.
TOL = {np.dtype(np.float64): (1e-10, 1e-10), np.dtype(np.float32): (1e-5, 1e-5),
       np.dtype(np.float16): (2e-3, 2e-3)}

LAYOUTS = [
    pytest.param(nbn.BatchNorm1d, (8, 5), id="1d-NC"),
    pytest.param(nbn.BatchNorm1d, (6, 3, 11), id="1d-NCL"),
    pytest.param(nbn.BatchNorm2d, (3, 4, 5, 7), id="2d"),
    pytest.param(nbn.BatchNorm3d, (2, 3, 3, 5, 6), id="3d"),
]
FLAGS = [
    pytest.param({}, id="default"),
    pytest.param({"bias": False}, id="nobias"),
    pytest.param({"momentum": None, "eps": 1e-3}, id="cumavg-eps"),
    pytest.param({"affine": False}, id="noaffine"),
    pytest.param({"track_running_stats": False}, id="notrack"),
    pytest.param({"affine": False, "track_running_stats": False, "momentum": None}, id="noaffine-notrack"),
]
SEQUENCE = ["train", "backward", "train", "backward", "backward", "eval", "backward", "train", "eval"]


# ---------------------------------------------------------------- helpers


def layout_shape(shape_cf, channel_axis):
    if channel_axis == 1 or len(shape_cf) == 2:
        return tuple(shape_cf)
    return (shape_cf[0], *shape_cf[2:], shape_cf[1])


def torch_view(leaf, channel_axis):
    """torch's channels-first view of a tensor in our layout (channels_last memory for -1)."""
    return leaf.movedim(-1, 1) if channel_axis == -1 and leaf.dim() > 2 else leaf


def ours_layout(tensor, channel_axis):
    """A torch (channels-first) result as a NumPy array in our layout."""
    array = tensor.detach().numpy()
    return np.moveaxis(array, 1, -1) if channel_axis == -1 and array.ndim > 2 else array


def as_numpy(value):
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def assert_close(actual, expected, dtype, what):
    expected = as_numpy(expected).astype(np.float64)
    rtol, atol = TOL[np.dtype(dtype)]
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    np.testing.assert_allclose(np.asarray(actual).astype(np.float64), expected,
                               rtol=rtol, atol=atol * scale, err_msg=what)


def make_pair(cls, channels, module_dtype, channel_axis, rng, **flags):
    """Our module and torch's, with the same random parameters and buffers."""
    ours = cls(channels, dtype=module_dtype, channel_axis=channel_axis, **flags)
    theirs = TORCH_CLASS[cls](channels, dtype=TORCH_DTYPE[np.dtype(module_dtype)], **flags)
    values = {
        "weight": rng.uniform(0.5, 2.0, channels),
        "bias": rng.standard_normal(channels),
        "running_mean": rng.standard_normal(channels),
        "running_var": rng.uniform(0.5, 2.0, channels),
    }
    with torch.no_grad():
        for name, value in values.items():
            assert (getattr(ours, name) is None) == (getattr(theirs, name) is None), name
            if getattr(ours, name) is not None:
                getattr(ours, name)[...] = value
                getattr(theirs, name).copy_(torch.from_numpy(getattr(ours, name).copy()))
    return ours, theirs


def torch_forward(theirs, x, channel_axis):
    """Torch's output in our layout, and the leaf tensor standing for x."""
    leaf = torch.from_numpy(x.copy()).requires_grad_(True)
    y = theirs(torch_view(leaf, channel_axis))
    return y, leaf


def torch_backward(theirs, y, leaf, dy, channel_axis):
    """Torch's grad_input (our layout), grad_weight and grad_bias for grad_output dy."""
    theirs.zero_grad(set_to_none=True)
    leaf.grad = None
    y.backward(torch_view(torch.from_numpy(dy.copy()), channel_axis), retain_graph=True)
    grad = lambda p: None if p is None or p.grad is None else p.grad.detach().numpy()
    return leaf.grad.numpy(), grad(theirs.weight), grad(theirs.bias)


def check_buffers(ours, theirs):
    for name in ("running_mean", "running_var"):
        if theirs.track_running_stats:
            assert_close(getattr(ours, name), getattr(theirs, name), getattr(ours, name).dtype, name)
        else:
            assert getattr(ours, name) is None and getattr(theirs, name) is None, name
    expected = None if theirs.num_batches_tracked is None else int(theirs.num_batches_tracked)
    assert ours.num_batches_tracked == expected


def check_grads(ours, grad_weight, grad_bias, module_dtype):
    for name, expected in (("grad_weight", grad_weight), ("grad_bias", grad_bias)):
        actual = getattr(ours, name)
        if expected is None:
            assert actual is None, name
        else:
            assert_close(actual, expected, module_dtype, name)


def run_parity_sequence(ours, theirs, rng, shape, channel_axis, module_dtype, input_dtype, steps=SEQUENCE):
    y_t = leaf = x = None
    for i, step in enumerate(steps):
        what = f"step {i} ({step})"
        if step == "backward":
            dy = rng.standard_normal(x.shape).astype(input_dtype)
            grad_input = ours.backward(dy)
            dx_t, dw_t, db_t = torch_backward(theirs, y_t, leaf, dy, channel_axis)
            assert grad_input.dtype == dx_t.dtype and grad_input.shape == dx_t.shape, what
            assert_close(grad_input, dx_t, input_dtype, f"{what}: grad_input")
            check_grads(ours, dw_t, db_t, module_dtype)
        else:
            ours.train(step == "train")
            theirs.train(step == "train")
            x = random_input(rng, (shape[0] + i % 2, *shape[1:]), channel_axis, input_dtype)
            y = ours(x)
            y_t, leaf = torch_forward(theirs, x, channel_axis)
            expected = ours_layout(y_t, channel_axis)
            assert y.dtype == expected.dtype and y.shape == expected.shape, what
            assert_close(y, expected, input_dtype, f"{what}: output")
        check_buffers(ours, theirs)


def state_dicts_equal(ours_state, torch_state, what=""):
    assert set(ours_state) == set(torch_state), what
    for key, value in torch_state.items():
        mine = ours_state[key]
        assert isinstance(mine, np.ndarray), key
        assert mine.dtype == value.numpy().dtype and mine.shape == tuple(value.shape), key
        assert_close(mine, value, mine.dtype if mine.dtype.kind == "f" else np.float64, f"{what}{key}")


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("module_dtype, input_dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("cls, shape_cf", LAYOUTS)
def test_sequence_matches_torch(cls, shape_cf, channel_axis, module_dtype, input_dtype, flags):
    rng = np.random.default_rng([*shape_cf, channel_axis + 1])
    shape = layout_shape(shape_cf, channel_axis)
    ours, theirs = make_pair(cls, shape[channel_axis], module_dtype, channel_axis, rng, **flags)
    run_parity_sequence(ours, theirs, rng, shape, channel_axis, module_dtype, input_dtype)


@pytest.mark.parametrize("channel_axis", AXES)
@pytest.mark.parametrize("cls, shape", [
    pytest.param(nbn.BatchNorm2d, (4, 3, 40, 50), id="2d-4x3x40x50"),
    pytest.param(nbn.BatchNorm1d, (5000, 6), id="1d-5000x6"),
])
def test_larger_float32_matches_torch(cls, shape, channel_axis):
    rng = np.random.default_rng(1)
    shape = layout_shape(shape, channel_axis)
    ours, theirs = make_pair(cls, shape[channel_axis], np.float32, channel_axis, rng)
    run_parity_sequence(ours, theirs, rng, shape, channel_axis, np.float32, np.float32,
                        steps=["train", "backward", "eval", "backward"])


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls", [nbn.BatchNorm1d, nbn.BatchNorm2d, nbn.BatchNorm3d], ids=["1d", "2d", "3d"])
def test_state_dict_matches_torch(cls, dtype, flags):
    """Same keys, dtypes and values after a few training steps; then after resets."""
    rng = np.random.default_rng(2)
    shape = {nbn.BatchNorm1d: (5, 3, 4), nbn.BatchNorm2d: (4, 3, 2, 5), nbn.BatchNorm3d: (2, 3, 2, 2, 3)}[cls]
    ours, theirs = make_pair(cls, 3, dtype, 1, rng, **flags)
    state_dicts_equal(ours.state_dict(), theirs.state_dict(), "fresh: ")
    run_parity_sequence(ours, theirs, rng, shape, 1, dtype, dtype, steps=["train", "train", "eval", "train"])
    state_dicts_equal(ours.state_dict(), theirs.state_dict(), "trained: ")
    ours.reset_running_stats()
    theirs.reset_running_stats()
    state_dicts_equal(ours.state_dict(), theirs.state_dict(), "reset_running_stats: ")
    run_parity_sequence(ours, theirs, rng, shape, 1, dtype, dtype, steps=["train"])
    ours.reset_parameters()
    theirs.reset_parameters()
    state_dicts_equal(ours.state_dict(), theirs.state_dict(), "reset_parameters: ")


@pytest.mark.parametrize("kwargs", [
    pytest.param({}, id="default"),
    pytest.param({"bias": False}, id="nobias"),
    pytest.param({"affine": False}, id="noaffine"),
    pytest.param({"eps": 1e-3, "momentum": None, "track_running_stats": False}, id="eps-cumavg-notrack"),
    pytest.param({"eps": 2.5e-06, "momentum": 0.25, "affine": False, "bias": False}, id="odd-values"),
    pytest.param({"eps": 0, "momentum": 1}, id="int-values"),
])
@pytest.mark.parametrize("cls", [nbn.BatchNorm1d, nbn.BatchNorm2d, nbn.BatchNorm3d], ids=["1d", "2d", "3d"])
def test_repr_matches_torch(cls, kwargs):
    assert repr(cls(7, **kwargs)) == repr(TORCH_CLASS[cls](7, **kwargs))


@pytest.mark.parametrize("flags", [f for f in FLAGS if "notrack" not in f.id])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("channel_axis", AXES)
def test_load_torch_state_dict(channel_axis, dtype, flags):
    """A trained torch module's state_dict() (tensors) loads into ours; eval outputs match."""
    rng = np.random.default_rng(3)
    shape = layout_shape((4, 3, 5, 6), channel_axis)
    theirs = torch.nn.BatchNorm2d(3, dtype=TORCH_DTYPE[np.dtype(dtype)], **flags)
    with torch.no_grad():
        if theirs.weight is not None:
            theirs.weight.uniform_(0.5, 2.0)
        if theirs.bias is not None:
            theirs.bias.normal_()
        for _ in range(3):
            theirs(torch_view(torch.from_numpy(random_input(rng, shape, channel_axis, dtype)), channel_axis))
    ours = nbn.BatchNorm2d(3, dtype=dtype, channel_axis=channel_axis, **flags)
    ours.load_state_dict(theirs.state_dict())
    assert ours.num_batches_tracked == 3
    state_dicts_equal(ours.state_dict(), theirs.state_dict())
    ours.eval()
    theirs.eval()
    run_parity_sequence(ours, theirs, rng, shape, channel_axis, dtype, dtype,
                        steps=["eval", "backward", "train", "backward"])


@pytest.mark.parametrize("flags", [f for f in FLAGS if "notrack" not in f.id])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_ours_loads_into_torch(dtype, flags):
    """Our state_dict() loads into torch (strictly) through torch.from_numpy."""
    rng = np.random.default_rng(4)
    shape = (6, 3, 7)
    ours = nbn.BatchNorm1d(3, dtype=dtype, **flags)
    if ours.weight is not None:
        ours.weight[...] = rng.uniform(0.5, 2.0, 3)
    if ours.bias is not None:
        ours.bias[...] = rng.standard_normal(3)
    for _ in range(4):
        ours(random_input(rng, shape, 1, dtype))
    theirs = torch.nn.BatchNorm1d(3, dtype=TORCH_DTYPE[np.dtype(dtype)], **flags)
    result = theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys
    assert int(theirs.num_batches_tracked) == 4
    state_dicts_equal(ours.state_dict(), theirs.state_dict())
    run_parity_sequence(ours, theirs, rng, shape, 1, dtype, dtype, steps=["eval", "backward", "train", "eval"])


EMPTY = [
    pytest.param(nbn.BatchNorm1d, (0, 3), 1, id="1d-0xC"),
    pytest.param(nbn.BatchNorm1d, (0, 3, 4), 1, id="1d-0xCxL"),
    pytest.param(nbn.BatchNorm1d, (2, 3, 0), 1, id="1d-2xCx0"),
    pytest.param(nbn.BatchNorm2d, (0, 4, 5, 3), -1, id="2d-clast"),
    pytest.param(nbn.BatchNorm3d, (0, 3, 2, 2, 2), 1, id="3d"),
]


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumavg"])
@pytest.mark.parametrize("cls, empty_shape, channel_axis", EMPTY)
def test_empty_batch_matches_torch(cls, empty_shape, channel_axis, momentum):
    rng = np.random.default_rng(5)
    ours, theirs = make_pair(cls, empty_shape[channel_axis], np.float32, channel_axis, rng, momentum=momentum)
    empty = np.zeros(empty_shape, np.float32)
    y = ours(empty)
    y_t, leaf = torch_forward(theirs, empty, channel_axis)
    assert y.shape == empty_shape and y.dtype == np.float32
    check_buffers(ours, theirs)
    assert ours.num_batches_tracked == 1
    dx = ours.backward(empty)
    dx_t, dw_t, db_t = torch_backward(theirs, y_t, leaf, empty, channel_axis)
    assert dx.shape == dx_t.shape and dx.dtype == dx_t.dtype
    check_grads(ours, dw_t, db_t, np.float32)
    full_shape = tuple(3 if (n == 0 and i != channel_axis % len(empty_shape)) else n
                       for i, n in enumerate(empty_shape))
    run_parity_sequence(ours, theirs, rng, full_shape, channel_axis, np.float32, np.float32,
                        steps=["train", "backward", "eval"])


@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("cls, shape", [
    pytest.param(nbn.BatchNorm1d, (1, 4), id="1d-1xC"),
    pytest.param(nbn.BatchNorm1d, (1, 4, 1), id="1d-1xCx1"),
    pytest.param(nbn.BatchNorm2d, (1, 4, 1, 1), id="2d"),
    pytest.param(nbn.BatchNorm3d, (1, 4, 1, 1, 1), id="3d"),
])
def test_one_value_per_channel_error_matches_torch(cls, shape, track):
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    ours = cls(4, track_running_stats=track)
    theirs = TORCH_CLASS[cls](4, track_running_stats=track)
    with pytest.raises(ValueError) as torch_error:
        theirs(torch.from_numpy(x))
    with pytest.raises(ValueError) as our_error:
        ours(x)
    message = "Expected more than 1 value per channel when training"
    assert str(torch_error.value).startswith(message)  # the text we copy is still torch's
    assert message in str(our_error.value)
    # torch counts the failed call; our contract is that a call that raises changes nothing
    assert ours.num_batches_tracked == (0 if track else None)
    if track:
        assert_close(ours.running_mean, theirs.running_mean, np.float32, "running_mean")
        assert_close(ours.running_var, theirs.running_var, np.float32, "running_var")
    if track:  # eval mode uses the running statistics: fine in both
        ours.eval()
        theirs.eval()
        assert_close(ours(x), theirs(torch.from_numpy(x)), np.float32, "eval output")


@pytest.mark.parametrize("weights", ["weight+bias", "weight", "none"])
@pytest.mark.parametrize("training, buffers, momentum", [
    pytest.param(True, True, 0.1, id="train"),
    pytest.param(True, True, 0.6, id="train-momentum0.6"),
    pytest.param(True, False, 0.1, id="train-nobuffers"),
    pytest.param(False, True, 0.1, id="eval"),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("channel_axis", AXES)
def test_functional_batch_norm_matches_torch(channel_axis, dtype, training, buffers, momentum, weights):
    rng = np.random.default_rng(7)
    shape = layout_shape((5, 3, 4, 6), channel_axis)
    x = random_input(rng, shape, channel_axis, dtype)
    vectors = {
        "running_mean": rng.standard_normal(3).astype(dtype) if buffers else None,
        "running_var": rng.uniform(0.5, 2, 3).astype(dtype) if buffers else None,
        "weight": rng.uniform(0.5, 2, 3).astype(dtype) if weights != "none" else None,
        "bias": rng.standard_normal(3).astype(dtype) if weights == "weight+bias" else None,
    }
    tensors = {k: None if v is None else torch.from_numpy(v.copy()) for k, v in vectors.items()}
    y = nbn.batch_norm(x, vectors["running_mean"], vectors["running_var"], vectors["weight"], vectors["bias"],
                       training=training, momentum=momentum, eps=1e-4, channel_axis=channel_axis)
    y_t = torch.nn.functional.batch_norm(
        torch_view(torch.from_numpy(x), channel_axis), tensors["running_mean"], tensors["running_var"],
        tensors["weight"], tensors["bias"], training=training, momentum=momentum, eps=1e-4)
    assert_close(y, ours_layout(y_t, channel_axis), dtype, "output")
    for name in ("running_mean", "running_var"):
        if buffers:
            assert_close(vectors[name], tensors[name], dtype, name)
