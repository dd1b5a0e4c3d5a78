"""Comparing numba_bn with the float64 reference in ``reference.py``, on any device.

``make_pair`` builds a module (on the CPU or moved to CUDA) and a
``RefBatchNorm`` with the same parameters; ``forward_step``,
``backward_step`` and ``run_sequence`` feed both the same host data (the
module gets it through ``devices.to_device``) and compare results, running
buffers, counters and gradients after every step. The device is the
module's ``device``; results must be arrays of that device.
"""

import numpy as np

from devices import assign, host, is_contiguous, is_on, to_device
from inputs import random_input
from numba_bn._device_arrays import is_device_array
from reference import RefBatchNorm

__all__ = [
    "SEQUENCE", "TOL", "assert_close", "backward_step", "check_array_result", "check_grads", "check_state",
    "forward_step", "make_pair", "run_sequence", "sgd_step",
]

#: (rtol, atol / max(|ref|, 1)) per dtype of the compared array. float16 results
#: computed in float32 must be correctly rounded: within half an ulp (2**-11
#: relative) plus the float32 computation's error.
TOL = {
    np.dtype(np.float64): (1e-10, 1e-10),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float16): (2.0**-11 * 1.001, 1e-5),
}

#: Forwards ("train"/"eval" switch the mode first), backward calls and an SGD
#: step on weight/bias (in place, as an optimiser would); the repeated
#: backward checks that gradients are overwritten, not accumulated.
SEQUENCE = ["train", "train", "backward", "backward", "sgd", "eval", "backward", "train", "eval", "train",
            "backward"]


def assert_close(actual, expected, dtype, what):
    """Compare with a tolerance for ``dtype``, scaled by the magnitude of ``expected``.

    ``actual`` may be a host or a device array.
    """
    if is_device_array(actual):
        actual = host(actual)
    expected = np.asarray(expected, dtype=np.float64)
    rtol, atol = TOL[np.dtype(dtype)]
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    np.testing.assert_allclose(
        np.asarray(actual).astype(np.float64), expected, rtol=rtol, atol=atol * scale, err_msg=what
    )


def make_pair(cls, channels, module_dtype, channel_axis, rng, device="cpu", **flags):
    """A package module on ``device`` and a reference with the same random parameters and buffers.

    The module is built on the CPU, given its values and then moved with ``.cuda()``.
    """
    bn = cls(channels, dtype=module_dtype, channel_axis=channel_axis, **flags)
    ref = RefBatchNorm(
        channels,
        eps=flags.get("eps", 1e-5),
        momentum=flags.get("momentum", 0.1),
        affine=flags.get("affine", True),
        track_running_stats=flags.get("track_running_stats", True),
        bias=flags.get("bias", True),
        channel_axis=channel_axis,
    )
    values = {
        "weight": rng.uniform(0.5, 2.0, channels),
        "bias": rng.standard_normal(channels),
        "running_mean": rng.standard_normal(channels),
        "running_var": rng.uniform(0.5, 2.0, channels),
    }
    for name, value in values.items():
        if getattr(bn, name) is not None:
            getattr(bn, name)[...] = value
            setattr(ref, name, getattr(bn, name).astype(np.float64))  # the rounded values
        assert (getattr(bn, name) is None) == (getattr(ref, name) is None), name
    if device == "cuda":
        assert bn.cuda() is bn
    assert bn.device == device
    return bn, ref


def check_state(bn, ref):
    """Running buffers (arrays of the module's device), counter and mode equal the reference's."""
    dtype = bn.running_mean.dtype if bn.running_mean is not None else None
    for name in ("running_mean", "running_var"):
        value = getattr(bn, name)
        if ref.track_running_stats:
            assert is_on(value, bn.device) and tuple(value.shape) == ref.running_mean.shape, name
            assert_close(value, getattr(ref, name), dtype, name)
        else:
            assert value is None, name
    if ref.track_running_stats:
        assert type(bn.num_batches_tracked) is int
    assert bn.num_batches_tracked == ref.num_batches_tracked
    assert bn.training == ref.training


def check_grads(bn, ref, module_dtype):
    """``grad_weight``/``grad_bias``: arrays of the module's device and dtype, equal to the reference's."""
    for name in ("grad_weight", "grad_bias"):
        expected = getattr(ref, name)
        actual = getattr(bn, name)
        if expected is None:
            assert actual is None, name
        else:
            assert is_on(actual, bn.device), name
            assert tuple(actual.shape) == expected.shape and actual.dtype == module_dtype, name
            assert_close(actual, expected, module_dtype, name)


def check_array_result(actual, expected, like, what, device="cpu"):
    """A fresh C-contiguous array of ``device`` with host array ``like``'s shape and dtype,
    close to ``expected``."""
    assert is_on(actual, device), (what, type(actual))
    assert tuple(actual.shape) == like.shape, what
    assert actual.dtype == like.dtype, what
    assert is_contiguous(actual), what
    if device == "cpu":
        assert not np.shares_memory(actual, like), what
    assert_close(actual, expected, like.dtype, what)


def _send(array, device, what):
    """``array`` on ``device``, and a check that the call did not write into it."""
    sent = to_device(array, device)
    before = array.copy()

    def check_unchanged():
        np.testing.assert_array_equal(array, before, err_msg=f"{what} modified")
        if device != "cpu" and is_contiguous(sent):  # (strided device views are not copied back)
            np.testing.assert_array_equal(host(sent), before, err_msg=f"{what} modified on the device")

    return sent, check_unchanged


def forward_step(bn, ref, x, what):
    """A forward of host input ``x`` (sent to the module's device) on both; compare output and state."""
    x_in, check_unchanged = _send(x, bn.device, f"{what}: input")
    y = bn(x_in)
    y_ref = ref(x)
    check_unchanged()
    check_array_result(y, y_ref, x, f"{what}: output", bn.device)
    check_state(bn, ref)


def backward_step(bn, ref, x, dy, module_dtype, what):
    """A backward of host ``dy`` on both after a forward of ``x``; compare gradients and state."""
    dy_in, check_unchanged = _send(dy, bn.device, f"{what}: grad_output")
    dx = bn.backward(dy_in)
    dx_ref = ref.backward(dy)
    check_unchanged()
    check_array_result(dx, dx_ref, x, f"{what}: grad_input", bn.device)
    check_grads(bn, ref, module_dtype)
    check_state(bn, ref)


def sgd_step(bn, ref):
    """Update weight/bias in place (on the module's device), as an optimiser would."""
    for name in ("weight", "bias"):
        value = getattr(bn, name)
        if value is not None:
            stepped = (host(value) - 0.5 * host(getattr(bn, "grad_" + name))).astype(value.dtype)
            assign(value, stepped)
            setattr(ref, name, stepped.astype(np.float64))


def run_sequence(bn, ref, rng, shape, channel_axis, module_dtype, input_dtype, steps=SEQUENCE, batch_extra=(0, 1, 2)):
    """Run ``steps`` on both, comparing after every step; the batch size of the
    k-th forward is ``shape[0] + batch_extra[k % len(batch_extra)]``."""
    x = None
    batch = 0
    for i, step in enumerate(steps):
        what = f"step {i} ({step})"
        if step == "backward":
            dy = rng.standard_normal(x.shape).astype(input_dtype)
            backward_step(bn, ref, x, dy, module_dtype, what)
            continue
        if step == "sgd":
            sgd_step(bn, ref)
            continue
        assert (bn.train() if step == "train" else bn.eval()) is bn
        ref.train(step == "train")
        x = random_input(rng, (shape[0] + batch_extra[batch % len(batch_extra)], *shape[1:]), channel_axis, input_dtype)
        batch += 1
        forward_step(bn, ref, x, what)
