"""``backward`` against central finite differences, on small float64 inputs.

For a fixed random ``dy`` the loss ``L = sum(forward(x) * dy)`` has the
gradients ``bn.backward(dy)`` (w.r.t. x), ``bn.grad_weight`` and
``bn.grad_bias``. Each is compared with ``(L(p + h) - L(p - h)) / 2h`` for
every single element p of x, weight and bias, in train mode (batch
statistics depend on x) and eval mode (running statistics are constants),
channels first and last, with and without affine parameters.

Every loss evaluation builds a fresh module from the same parameters and
buffers, so the running-buffer updates of training forwards never leak from
one evaluation into the next.
"""

import numpy as np
import pytest

import numba_bn as nbn

H = 1e-6
RTOL = 1e-6
ATOL = 1e-7

CASES = [
    pytest.param(nbn.BatchNorm1d, (6, 4), id="1d-6x4"),
    pytest.param(nbn.BatchNorm1d, (4, 3, 5), id="1d-4x3x5"),
    pytest.param(nbn.BatchNorm2d, (3, 2, 2, 3), id="2d-3x2x2x3"),
    pytest.param(nbn.BatchNorm3d, (2, 2, 2, 1, 3), id="3d-2x2x2x1x3"),
]
AFFINE = [
    pytest.param({"affine": True}, id="affine"),
    pytest.param({"affine": True, "bias": False}, id="weight-only"),
    pytest.param({"affine": False}, id="no-affine"),
]
MODES = [
    pytest.param(True, True, id="train"),
    pytest.param(False, True, id="eval"),
    pytest.param(False, False, id="eval-notrack"),  # eval without buffers uses batch stats
]


def build(cls, channels, channel_axis, flags, track, training, params):
    """A fresh float64 module with the given parameter and buffer values."""
    bn = cls(channels, eps=1e-3, dtype=np.float64, channel_axis=channel_axis,
             track_running_stats=track, **flags)
    for name, value in params.items():
        if getattr(bn, name) is not None:
            getattr(bn, name)[...] = value
    return bn.train(training)


def numeric_gradient(loss, array):
    """Central differences of ``loss()`` w.r.t. every element of ``array`` (perturbed in place)."""
    grad = np.zeros(array.shape)
    for index in np.ndindex(*array.shape):
        original = array[index]
        array[index] = original + H
        plus = loss()
        array[index] = original - H
        minus = loss()
        array[index] = original
        grad[index] = (plus - minus) / (2 * H)
    return grad


@pytest.mark.parametrize("training, track", MODES)
@pytest.mark.parametrize("flags", AFFINE)
@pytest.mark.parametrize("channel_axis", [1, -1], ids=["cfirst", "clast"])
@pytest.mark.parametrize("cls, shape_cf", CASES)
def test_backward_matches_finite_differences(cls, shape_cf, channel_axis, flags, training, track):
    rng = np.random.default_rng(2024)
    shape = shape_cf if channel_axis == 1 else (shape_cf[0], *shape_cf[2:], shape_cf[1])
    channels = shape[channel_axis]
    x = rng.standard_normal(shape) * 2 + 0.5
    dy = rng.standard_normal(shape)
    params = {
        "weight": rng.uniform(0.5, 2.0, channels),
        "bias": rng.standard_normal(channels),
        "running_mean": rng.standard_normal(channels),
        "running_var": rng.uniform(0.5, 2.0, channels),
    }

    def loss():
        bn = build(cls, channels, channel_axis, flags, track, training, params)
        return float(np.sum(bn(x) * dy))

    bn = build(cls, channels, channel_axis, flags, track, training, params)
    bn(x)
    grad_input = bn.backward(dy)
    np.testing.assert_allclose(grad_input, numeric_gradient(loss, x), rtol=RTOL, atol=ATOL,
                               err_msg="grad_input")
    for name, grad in (("weight", bn.grad_weight), ("bias", bn.grad_bias)):
        if getattr(bn, name) is None:
            assert grad is None, name
            continue
        np.testing.assert_allclose(grad, numeric_gradient(loss, params[name]), rtol=RTOL, atol=ATOL,
                                   err_msg=f"grad_{name}")
