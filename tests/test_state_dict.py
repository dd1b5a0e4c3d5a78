"""state_dict / load_state_dict, resets and repr (PyTorch only for the tensor-dtype tests)."""

import numpy as np
import pytest

import numba_bn as nbn
from state_snapshot import assert_unchanged, snapshot


def stepped(**kwargs):
    bn = nbn.BatchNorm1d(3, **kwargs)
    rng = np.random.default_rng(1)
    for _ in range(2):
        bn(rng.standard_normal((6, 3)).astype(bn.dtype) * 2 + 1)
    if bn.weight is not None:
        bn.weight[:] = rng.standard_normal(3)
    if bn.bias is not None:
        bn.bias[:] = rng.standard_normal(3)
    return bn


@pytest.mark.parametrize(
    "kwargs, keys",
    [
        ({}, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
        ({"bias": False}, ["weight", "running_mean", "running_var", "num_batches_tracked"]),
        ({"affine": False}, ["running_mean", "running_var", "num_batches_tracked"]),
        ({"track_running_stats": False}, ["weight", "bias"]),
        ({"affine": False, "track_running_stats": False}, []),
    ],
)
def test_state_dict_keys_and_copies(kwargs, keys):
    bn = stepped(**kwargs)
    state = bn.state_dict()
    assert list(state) == keys
    for key, value in state.items():
        assert isinstance(value, np.ndarray)
        if key == "num_batches_tracked":
            assert value.dtype == np.int64 and value.shape == () and value == 2
        else:
            np.testing.assert_array_equal(value, getattr(bn, key))
            assert not np.shares_memory(value, getattr(bn, key))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_in_place(dtype):
    source = stepped(dtype=dtype)
    target = nbn.BatchNorm1d(3, dtype=dtype)
    weight_object = target.weight
    result = target.load_state_dict(source.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert target.weight is weight_object  # copied into, like PyTorch's param.copy_
    for key in ("weight", "bias", "running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(target, key), getattr(source, key))
    assert target.num_batches_tracked == 2
    x = np.random.default_rng(2).standard_normal((5, 3)).astype(dtype)
    np.testing.assert_array_equal(target.eval()(x), source.eval()(x))


def test_load_casts_and_accepts_lists():
    bn = nbn.BatchNorm1d(2)
    bn.load_state_dict(
        {"weight": [1, 2], "bias": np.array([0.5, 0.25]), "running_mean": (3, 4),
         "running_var": np.array([2, 3], np.int32), "num_batches_tracked": 7}
    )
    assert bn.weight.dtype == np.float32 and bn.running_var.dtype == np.float32
    np.testing.assert_array_equal(bn.running_var, [2, 3])
    assert bn.num_batches_tracked == 7 and isinstance(bn.num_batches_tracked, int)


def test_missing_counter_keeps_current_value():
    source = stepped()
    target = stepped()
    target.num_batches_tracked = 5
    state = source.state_dict()
    del state["num_batches_tracked"]
    target.load_state_dict(state)
    assert target.num_batches_tracked == 5


def test_non_strict_reports_keys():
    bn = stepped()
    state = {"weight": np.full(3, 2.0), "extra": np.zeros(1)}
    result = bn.load_state_dict(state, strict=False)
    assert result.missing_keys == ["bias", "running_mean", "running_var"]
    assert result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(bn.weight, 2.0)


@pytest.mark.parametrize(
    "change, error, fragments",
    [
        (lambda s: s.pop("running_var"), ValueError, ["missing", "running_var"]),
        (lambda s: s.update(other=np.zeros(3)), ValueError, ["unexpected", "other"]),
        (lambda s: s.update(bias=np.zeros(4)), ValueError, ["bias", "(3,)", "(4,)"]),
        (lambda s: s.update(running_mean=np.zeros((3, 1))), ValueError, ["running_mean", "(3, 1)"]),
        (lambda s: s.update(weight=np.array(["a", "b", "c"])), TypeError, ["weight", "<U1"]),
        (lambda s: s.update(num_batches_tracked=np.array([1, 2])), ValueError, ["num_batches_tracked", "(2,)"]),
        (lambda s: s.update(num_batches_tracked=-1), ValueError, ["num_batches_tracked", "-1"]),
        (lambda s: s.update(num_batches_tracked=1.5), ValueError, ["num_batches_tracked", "1.5"]),
    ],
)
def test_bad_state_leaves_module_unchanged(change, error, fragments):
    bn = stepped()
    bn.backward(np.ones((6, 3), np.float32))
    state = {k: v + 1 if k != "num_batches_tracked" else v + 1 for k, v in stepped().state_dict().items()}
    change(state)
    before = snapshot(bn)
    with pytest.raises(error) as info:
        bn.load_state_dict(state)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert_unchanged(bn, before)


BIG = 2**70


@pytest.mark.parametrize(
    "count, error, shown",
    [
        (float("inf"), ValueError, "inf"),
        (-float("inf"), ValueError, "-inf"),
        (float("nan"), ValueError, "nan"),
        (np.float64("inf"), ValueError, "inf"),
        (np.array(float("nan"), np.float32), ValueError, "nan"),
        (BIG, ValueError, str(BIG)),
        (np.float64(BIG), ValueError, str(float(BIG))),
        (np.array(BIG, dtype=object), ValueError, str(BIG)),
        (np.array([BIG], dtype=object), ValueError, str(BIG)),
        (2**63, ValueError, str(2**63)),
        (np.uint64(2**63), ValueError, str(2**63)),
        (-1, ValueError, "-1"),
        (np.int64(-1), ValueError, "-1"),
        (1.5, ValueError, "1.5"),
        (np.array([1.5]), ValueError, "1.5"),
        (True, TypeError, "True"),
        (np.True_, TypeError, "True"),
        (np.array(False), TypeError, "False"),
        (np.array([True]), TypeError, "True"),
        (np.array(1 + 0j), TypeError, "complex128"),
        ("3", TypeError, "<U1"),
        (np.array(None, dtype=object), TypeError, "None"),
    ],
    ids=repr,
)
def test_bad_counter_raises_and_leaves_module_unchanged(count, error, shown):
    bn = stepped()
    state = stepped().state_dict()
    state["num_batches_tracked"] = count
    before = snapshot(bn)
    with pytest.raises(error) as info:
        bn.load_state_dict(state)
    message = str(info.value)
    assert "num_batches_tracked" in message and shown in message, message
    assert message.startswith("expected ") and ", got " in message, message
    assert_unchanged(bn, before)


@pytest.mark.parametrize(
    "count, expected",
    [
        (0, 0),
        (2**63 - 1, 2**63 - 1),
        (np.int32(4), 4),
        (np.uint64(2**63 - 1), 2**63 - 1),
        (np.float32(6.0), 6),
        (np.float64(2.0**62), 2**62),
        (np.array(9, np.int64), 9),  # as state_dict() saves it
        (np.array([3]), 3),
        (np.array(8.0), 8),
        (np.array(5, dtype=object), 5),
    ],
    ids=repr,
)
def test_counter_forms_accepted(count, expected):
    bn = stepped()
    state = bn.state_dict()
    state["num_batches_tracked"] = count
    bn.load_state_dict(state)
    assert bn.num_batches_tracked == expected and type(bn.num_batches_tracked) is int
    assert bn.state_dict()["num_batches_tracked"] == expected


def test_largest_counter_round_trips():
    bn = stepped()
    state = bn.state_dict()
    state["num_batches_tracked"] = 2**63 - 1
    bn.load_state_dict(state)
    saved = bn.state_dict()["num_batches_tracked"]
    assert saved.dtype == np.int64 and saved == 2**63 - 1


@pytest.mark.parametrize(
    "count, error, shown",
    [
        ("inf", ValueError, "inf"),
        ("nan", ValueError, "nan"),
        ("bool", TypeError, "True"),
        ("negative", ValueError, "-1"),
        ("fraction", ValueError, "1.5"),
    ],
)
def test_bad_counter_tensor(count, error, shown):
    torch = pytest.importorskip("torch")
    tensor = {
        "inf": torch.tensor(float("inf")),
        "nan": torch.tensor(float("nan")),
        "bool": torch.tensor(True),
        "negative": torch.tensor(-1),
        "fraction": torch.tensor(1.5, dtype=torch.float64),
    }[count]
    bn = stepped()
    state = bn.state_dict()
    state["num_batches_tracked"] = tensor
    before = snapshot(bn)
    with pytest.raises(error) as info:
        bn.load_state_dict(state)
    assert "num_batches_tracked" in str(info.value) and shown in str(info.value)
    assert_unchanged(bn, before)


def test_counter_tensor_as_pytorch_saves_it():
    torch = pytest.importorskip("torch")
    bn = stepped()
    state = bn.state_dict()
    state["num_batches_tracked"] = torch.tensor(11, dtype=torch.int64)
    bn.load_state_dict(state)
    assert bn.num_batches_tracked == 11 and type(bn.num_batches_tracked) is int


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float16"])
@pytest.mark.parametrize("our_dtype", [np.float32, np.float64])
def test_load_low_precision_torch_state(dtype_name, our_dtype):
    """A state dict of tensors NumPy has no dtype for loads as PyTorch loads it: cast."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch, dtype_name):
        pytest.skip(f"this PyTorch has no torch.{dtype_name}")
    torch_dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    theirs = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 2.0)
        theirs.bias.uniform_(-1.0, 1.0)
        for _ in range(3):
            theirs(torch.randn(4, 3, 5, 5) * 3 + 1)
    theirs.to(torch_dtype)
    state = theirs.state_dict()
    assert state["weight"].dtype == torch_dtype
    assert state["num_batches_tracked"].dtype == torch.int64

    # PyTorch's own reference: the same module cast back to float32/float64,
    # and a fresh module of that dtype loading the low-precision state.
    reference_dtype = torch.float32 if our_dtype == np.float32 else torch.float64
    cast_back = {k: v.clone() for k, v in theirs.to(reference_dtype).state_dict().items()}
    loaded = torch.nn.BatchNorm2d(3).to(reference_dtype)
    loaded.load_state_dict(state)

    ours = nbn.BatchNorm2d(3, dtype=our_dtype)
    weight_object = ours.weight
    result = ours.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert ours.weight is weight_object
    for key in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(ours, key)
        assert value.dtype == our_dtype, key
        np.testing.assert_array_equal(value, cast_back[key].numpy(), err_msg=key)
        np.testing.assert_array_equal(value, loaded.state_dict()[key].numpy(), err_msg=key)
    assert ours.num_batches_tracked == loaded.num_batches_tracked.item() == 3
    assert type(ours.num_batches_tracked) is int

    x = np.random.default_rng(3).standard_normal((2, 3, 4, 4)).astype(our_dtype)
    expected = loaded.eval()(torch.from_numpy(x)).detach().numpy()
    tolerance = 1e-6 if our_dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ours.eval()(x), expected, rtol=tolerance, atol=tolerance)


def test_state_must_be_a_mapping():
    bn = stepped()
    before = snapshot(bn)
    with pytest.raises(TypeError, match="mapping"):
        bn.load_state_dict([("weight", np.ones(3))])
    assert_unchanged(bn, before)


def test_resets():
    bn = stepped()
    running_mean = bn.running_mean
    bn.reset_running_stats()
    assert bn.running_mean is running_mean
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert bn.num_batches_tracked == 0
    assert not np.all(bn.weight == 1)
    bn.reset_parameters()
    np.testing.assert_array_equal(bn.weight, 1)
    np.testing.assert_array_equal(bn.bias, 0)


def test_modes_and_devices_return_self():
    bn = nbn.BatchNorm3d(2)
    assert bn.training is True
    assert bn.eval() is bn and bn.training is False
    assert bn.train() is bn and bn.training is True
    assert bn.train(False) is bn and bn.training is False
    assert bn.to("cpu") is bn and bn.cpu() is bn and bn.device == "cpu"


@pytest.mark.parametrize(
    "module, text",
    [
        (nbn.BatchNorm2d(3), "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"),
        (nbn.BatchNorm1d(4, 1e-3, None, False), "BatchNorm1d(4, eps=0.001, momentum=None, affine=False, bias=False, track_running_stats=True)"),
        (nbn.BatchNorm3d(5, bias=False, track_running_stats=False), "BatchNorm3d(5, eps=1e-05, momentum=0.1, affine=True, bias=False, track_running_stats=False)"),
        (nbn.BatchNorm2d(3, channel_axis=-1, dtype=np.float64), "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True, channel_axis=-1, dtype=float64)"),
    ],
)
def test_repr(module, text):
    assert repr(module) == text
