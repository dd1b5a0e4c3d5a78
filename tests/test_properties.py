"""Property-based tests (hypothesis) against the float64 reference.

Random shapes, memory layouts, dtypes, flags, work-unit sizes and multi-step
train/eval/backward sequences must match the reference step by step; random
data must give statistics with the exact invariants (variance never negative,
mean within the channel's range, variance at most (max - min)**2 / 4); random
invalid arguments must raise ValueError or TypeError and change nothing.

The default profile is derandomized (the same examples on every run, as CI
wants) and small; ``NUMBA_BN_HYPOTHESIS_PROFILE=explore`` draws many fresh
random examples instead. Dtypes and layouts are few, so the kernels compile a
bounded number of variants.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numba_bn as nbn
from checks import assert_close, backward_step, check_array_result, forward_step, make_pair
from inputs import KINDS, memory_layout
from numba_bn import config
from reference import RefBatchNorm, ref_batch_stats, ref_forward, ref_running_update
from state_snapshot import assert_unchanged, snapshot

settings.register_profile(
    "numba_bn-ci", derandomize=True, deadline=None, max_examples=30, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "numba_bn-explore", deadline=None, max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("numba_bn-" + os.environ.get("NUMBA_BN_HYPOTHESIS_PROFILE", "ci"))

CLASSES = {2: nbn.BatchNorm1d, 3: nbn.BatchNorm1d, 4: nbn.BatchNorm2d, 5: nbn.BatchNorm3d}
#: (module dtype, input dtype)
DTYPE_PAIRS = [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float16)]


class work_units:
    """Set the kernels' work-unit tunables for a block (no fixture: hypothesis reruns the body)."""

    def __init__(self, run_chunk, row_blocks):
        self.values = run_chunk, row_blocks

    def __enter__(self):
        self.saved = config.RUN_CHUNK, config.ROW_BLOCKS
        config.RUN_CHUNK, config.ROW_BLOCKS = self.values

    def __exit__(self, *exc):
        config.RUN_CHUNK, config.ROW_BLOCKS = self.saved


@st.composite
def problems(draw):
    """A module configuration, an input shape and layout, and a step sequence."""
    ndim = draw(st.sampled_from([2, 3, 4, 5]))
    channel_axis = draw(st.sampled_from([1, -1]))
    channels = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 5), min_size=ndim - 2, max_size=ndim - 2))
    batch = draw(st.integers(2, 5))
    shape = (batch, channels, *spatial) if channel_axis == 1 else (batch, *spatial, channels)
    flags = dict(
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        momentum=draw(st.sampled_from([None, 0.0, 0.1, 0.75, 1.0])),
        affine=draw(st.booleans()),
        track_running_stats=draw(st.booleans()),
        bias=draw(st.booleans()),
    )
    steps = draw(st.lists(st.sampled_from(["train", "eval", "backward", "sgd"]), min_size=1, max_size=6))
    return dict(
        cls=CLASSES[ndim], shape=shape, channel_axis=channel_axis, flags=flags,
        dtypes=draw(st.sampled_from(DTYPE_PAIRS)), x_kind=draw(st.sampled_from(KINDS)),
        dy_kind=draw(st.sampled_from(KINDS)), steps=["train", *steps],
        units=(draw(st.sampled_from([2, 5, 4096])), draw(st.sampled_from([1, 3, 64]))),
        offset=draw(st.sampled_from([0.0, 1.0, -300.0])), seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(PROFILE, max_examples=60)
@given(problems())
def test_random_sequences_match_the_reference(problem):
    p = problem
    module_dtype, input_dtype = p["dtypes"]
    rng = np.random.default_rng(p["seed"])
    channels = p["shape"][p["channel_axis"]]
    bn, ref = make_pair(p["cls"], channels, module_dtype, p["channel_axis"], rng, **p["flags"])
    x = None
    with work_units(*p["units"]):
        for i, step in enumerate(p["steps"]):
            what = f"step {i} ({step}) of {p['steps']}"
            if step == "backward":
                dy = memory_layout(p["dy_kind"], rng.standard_normal(x.shape).astype(input_dtype), seed=2)
                backward_step(bn, ref, x, dy, np.dtype(module_dtype), what)
            elif step == "sgd":
                for name in ("weight", "bias"):
                    if getattr(bn, name) is not None and getattr(bn, "grad_" + name) is not None:
                        getattr(bn, name)[...] -= 0.5 * getattr(bn, "grad_" + name)
                        setattr(ref, name, getattr(bn, name).astype(np.float64))
            else:
                bn.train(step == "train")
                ref.train(step == "train")
                batch = int(rng.integers(2, 6))
                values = p["offset"] + rng.standard_normal((batch, *p["shape"][1:])) * rng.uniform(0.1, 3)
                x = memory_layout(p["x_kind"], values.astype(input_dtype), seed=1)
                forward_step(bn, ref, x, what)


@PROFILE
@given(problems(), st.booleans(), st.booleans())
def test_random_functional_calls_match_the_reference(problem, training, with_buffers):
    p = problem
    _, input_dtype = p["dtypes"]
    param_dtype = np.float64 if input_dtype == np.float64 else np.float32
    rng = np.random.default_rng(p["seed"])
    axis = p["channel_axis"]
    channels = p["shape"][axis]
    x = memory_layout(p["x_kind"], (p["offset"] + rng.standard_normal(p["shape"])).astype(input_dtype))
    with_buffers = with_buffers or not training
    rm = rng.standard_normal(channels).astype(param_dtype) if with_buffers else None
    rv = rng.uniform(0.5, 2, channels).astype(param_dtype) if with_buffers else None
    weight = rng.uniform(0.5, 2, channels).astype(param_dtype) if p["flags"]["affine"] else None
    bias = rng.standard_normal(channels).astype(param_dtype) if p["flags"]["bias"] else None
    momentum = 0.1 if p["flags"]["momentum"] is None else p["flags"]["momentum"]
    eps = p["flags"]["eps"]
    rm_ref = None if rm is None else rm.astype(np.float64)
    rv_ref = None if rv is None else rv.astype(np.float64)
    with work_units(*p["units"]):
        y = nbn.batch_norm(x, rm, rv, weight, bias, training=training, momentum=momentum, eps=eps,
                           channel_axis=axis)
    if training:
        mean, var, count = ref_batch_stats(x, axis)
        check_array_result(y, ref_forward(x, mean, var, weight, bias, eps, axis), x, "output")
        if with_buffers:
            rm_ref, rv_ref = ref_running_update(rm_ref, rv_ref, mean, var, count, momentum)
    else:
        check_array_result(y, ref_forward(x, rm_ref, rv_ref, weight, bias, eps, axis), x, "output")
    if with_buffers:
        assert_close(rm, rm_ref, param_dtype, "running_mean")
        assert_close(rv, rv_ref, param_dtype, "running_var")


# ------------------------------------------------------------ statistics


@st.composite
def channel_data(draw):
    """Arbitrary finite float32/float64 data with per-channel offsets and spreads (even zero)."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    channel_axis = draw(st.sampled_from([1, -1]))
    channels = draw(st.integers(1, 4))
    rows = draw(st.integers(2, 300))
    shape = (rows, channels) if channel_axis == -1 else (rows, channels, draw(st.integers(1, 3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    exponent = np.log10(np.finfo(dtype).max) / 2 - 1  # keeps (max - min)**2 finite
    offset = np.array([draw(st.floats(-(10**exponent), 10**exponent)) for _ in range(channels)])
    spread = np.array([draw(st.sampled_from([0.0, 1e-30, 1e-6, 1.0, 1e10])) for _ in range(channels)])
    per_channel = (1, channels) if channel_axis == -1 else (1, channels, 1)
    values = offset.reshape(per_channel) + spread.reshape(per_channel) * rng.standard_normal(shape)
    return values.astype(dtype), channel_axis


@settings(PROFILE, max_examples=80)
@given(channel_data(), st.sampled_from([(2, 1), (7, 3), (4096, 64)]))
def test_statistics_invariants_hold_for_any_data(data, units):
    x, channel_axis = data
    with work_units(*units):
        mean, var, count = nbn.batch_stats(x, channel_axis=channel_axis)
    axis = channel_axis % x.ndim
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    low = x.min(axis=reduce).astype(np.float64)
    high = x.max(axis=reduce).astype(np.float64)
    assert count == x.size // x.shape[axis]
    assert np.all(var >= 0), var
    assert np.all((low <= mean) & (mean <= high)), (low, mean, high)
    # Popoviciu: a variance never exceeds (range / 2)**2; exactly 0 for constant channels.
    bound = (high - low) ** 2 / 4
    assert np.all(var.astype(np.float64) <= bound * (1 + 1e-5)), (var, bound)
    np.testing.assert_array_equal(var[high == low], 0.0)
    # Values: where the channel is well-conditioned for its dtype. Beyond that (the
    # spread within a few ulps of the mean) even the two-pass reference is inexact.
    ref_mean, ref_var, _ = ref_batch_stats(x, channel_axis)
    conditioned = np.sqrt(ref_var) >= np.abs(ref_mean) * (1e-5 if x.dtype == np.float32 else 1e-9)
    expected_var = ref_var.astype(var.dtype)  # rounded (and underflowed) like the result
    np.testing.assert_allclose(var[conditioned], expected_var[conditioned], rtol=1e-5, atol=1e-300)
    np.testing.assert_allclose(mean[conditioned], ref_mean[conditioned], rtol=1e-6,
                               atol=float(np.max(np.sqrt(ref_var), initial=0.0)) * 1e-6)


# ---------------------------------------------------------- invalid input


def _invalid_calls(bn, x):
    """Named calls that must raise ValueError or TypeError on a module ``bn`` trained on ``x``."""
    channels = bn.num_features
    axis = bn.channel_axis % x.ndim
    wrong_channels = list(x.shape)
    wrong_channels[axis] += 1
    one_value = [1] * x.ndim
    one_value[axis] = channels
    calls = {
        "rank": lambda: bn(x[0]),
        "channels": lambda: bn(np.zeros(wrong_channels, x.dtype)),
        "int-dtype": lambda: bn(x.astype(np.int32)),
        "complex-dtype": lambda: bn(x.astype(np.complex64)),
        "other-float": lambda: bn(x.astype(np.float64 if bn.dtype == np.float32 else np.float32)),
        "list": lambda: bn(x.tolist()),
        "masked": lambda: bn(np.ma.masked_array(x)),
        "grad-shape": lambda: bn.backward(np.zeros(wrong_channels, x.dtype)),
        "grad-dtype": lambda: bn.backward(x.astype(np.int64)),
        "train-flag": lambda: bn.train(1),
        "device": lambda: bn.to("tpu"),
        "state-shape": lambda: bn.load_state_dict({**bn.state_dict(), "running_mean": np.zeros(channels + 1)}),
        "state-missing": lambda: bn.load_state_dict({}),
        "state-strict": lambda: bn.load_state_dict(bn.state_dict(), strict="yes"),
    }
    if bn.training or not bn.track_running_stats:  # batch statistics need 2+ values per channel
        calls["one-value"] = lambda: bn(np.ones(one_value, x.dtype))
    return calls


@settings(PROFILE, max_examples=40)
@given(problems(), st.data())
def test_invalid_calls_raise_and_change_nothing(problem, data):
    p = problem
    module_dtype, input_dtype = p["dtypes"]
    rng = np.random.default_rng(p["seed"])
    channels = p["shape"][p["channel_axis"]]
    bn, _ = make_pair(p["cls"], channels, module_dtype, p["channel_axis"], rng, **p["flags"])
    x = memory_layout(p["x_kind"], rng.standard_normal(p["shape"]).astype(input_dtype))
    bn.train(data.draw(st.booleans(), label="training"))
    bn.backward(bn(x))
    calls = _invalid_calls(bn, x)
    name = data.draw(st.sampled_from(sorted(calls)), label="invalid call")
    if name.startswith("state") and not bn.state_dict():
        name = "rank"  # nothing to load into: no state
    before = snapshot(bn)
    with pytest.raises((ValueError, TypeError)):
        calls[name]()
    assert_unchanged(bn, before)


@PROFILE
@given(problems(), st.data())
def test_invalid_functional_calls_raise_and_change_nothing(problem, data):
    p = problem
    rng = np.random.default_rng(p["seed"])
    axis = p["channel_axis"]
    x = rng.standard_normal(p["shape"]).astype(np.float32)
    channels = x.shape[axis]
    rm, rv = rng.standard_normal(channels).astype(np.float32), np.ones(channels, np.float32)
    read_only = rm.copy()
    read_only.flags.writeable = False
    wrong = dict(
        rank=lambda: nbn.batch_norm(x.reshape(-1), rm, rv, training=True, channel_axis=axis),
        buffer_shape=lambda: nbn.batch_norm(x, rm[:-1] if channels > 1 else rm[:0], rv, training=True,
                                            channel_axis=axis),
        weight_shape=lambda: nbn.batch_norm(x, rm, rv, np.ones(channels + 1, np.float32), training=True,
                                            channel_axis=axis),
        one_buffer=lambda: nbn.batch_norm(x, rm, None, training=True, channel_axis=axis),
        no_buffers_eval=lambda: nbn.batch_norm(x, None, None, channel_axis=axis),
        read_only_buffer=lambda: nbn.batch_norm(x, read_only, rv, training=True, channel_axis=axis),
        int_input=lambda: nbn.batch_norm(x.astype(np.int16), rm, rv, training=True, channel_axis=axis),
        momentum=lambda: nbn.batch_norm(x, rm, rv, training=True, momentum="0.1", channel_axis=axis),
        eps=lambda: nbn.batch_norm(x, rm, rv, training=True, eps=-1.0, channel_axis=axis),
        axis=lambda: nbn.batch_norm(x, rm, rv, training=True, channel_axis=0),
        flag=lambda: nbn.batch_norm(x, rm, rv, training=1, channel_axis=axis),
        stats_axis=lambda: nbn.batch_stats(x, channel_axis=2),
    )
    name = data.draw(st.sampled_from(sorted(wrong)), label="invalid call")
    copies = rm.copy(), rv.copy()
    with pytest.raises((ValueError, TypeError)):
        wrong[name]()
    np.testing.assert_array_equal(rm, copies[0])
    np.testing.assert_array_equal(rv, copies[1])
