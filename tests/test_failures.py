"""A failure inside any kernel call leaves a module exactly as it was.

Fault injection: every compiled call a step makes (whole-array kernels and
per-channel arithmetic on the CPU, every launch on CUDA) is made to raise in
turn - ``MemoryError`` as an allocation inside a kernel would, and
``KeyboardInterrupt`` as a user would - and the module's parameters,
buffers, counter, gradients and recorded forward must be unchanged
afterwards. Modules commit their new state only once every call succeeded.
"""

import contextlib

import numpy as np
import pytest

import numba_bn as nbn
from cuda_support import host, needs_cuda
from numba_bn.cpu import backend as cpu_backend
from numba_bn.cpu import channel_math as cpu_channel_math
from numba_bn.cpu import small_calls
from state_snapshot import assert_unchanged, snapshot

ERRORS = [MemoryError, KeyboardInterrupt]


class Injected:
    """Counts the compiled calls made while active and raises ``error`` at call number ``fail_at``."""

    def __init__(self, error, fail_at=None):
        self.error, self.fail_at, self.calls = error, fail_at, 0

    def wrap(self, function):
        def counted(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise self.error(f"injected failure at call {self.calls}")
            return function(*args, **kwargs)

        return counted


def _inject_cpu(monkeypatch, injected):
    for key, kernel in cpu_backend._KERNELS.items():
        monkeypatch.setitem(cpu_backend._KERNELS, key, injected.wrap(kernel))
    for name in ("forward_coefficients", "update_running", "backward_coefficients", "grad_scale", "weight_grads"):
        monkeypatch.setattr(cpu_channel_math, name, injected.wrap(getattr(cpu_channel_math, name)))
    for layout, steps in small_calls._STEPS.items():  # a repeated small call's one compiled step
        monkeypatch.setitem(small_calls._STEPS, layout, tuple(injected.wrap(step) for step in steps))


def _inject_cuda(monkeypatch, injected):
    from numba_bn.cuda import backend as cuda_backend
    from numba_bn.cuda import launch as cuda_launch

    launch = injected.wrap(cuda_launch.launch)
    monkeypatch.setattr(cuda_launch, "launch", launch)  # per-channel launches and device copies
    monkeypatch.setattr(cuda_backend, "launch", launch)  # whole-array kernels


DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

pytestmark = pytest.mark.usefixtures("small_cuda_blocks")  # the CUDA configuration only


def _array(device, values):
    if device == "cuda":
        from numba import cuda

        return cuda.to_device(values)
    return values


def _trained(device, **flags):
    """A module after one training step and backward, so that every piece of state is set."""
    rng = np.random.default_rng(3)
    bn = nbn.BatchNorm2d(3, device=device, **flags)
    x = rng.standard_normal((4, 3, 3, 5)).astype(np.float32)
    bn(_array(device, x))
    bn.backward(_array(device, rng.standard_normal(x.shape).astype(np.float32)))
    return bn, x


@contextlib.contextmanager
def injected_calls(monkeypatch, device, error, fail_at=None):
    injected = Injected(error, fail_at)
    with monkeypatch.context() as patch:
        (_inject_cuda if device == "cuda" else _inject_cpu)(patch, injected)
        yield injected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
@pytest.mark.parametrize(
    "flags",
    [dict(), dict(affine=False), dict(momentum=None), dict(track_running_stats=False)],
    ids=["default", "no-affine", "cumulative", "untracked"],
)
@pytest.mark.parametrize("step", ["train-forward", "eval-forward", "backward", "eval-backward"])
def test_a_failing_call_changes_nothing(monkeypatch, device, error, flags, step):
    bn, x = _trained(device, **flags)
    if step.startswith("eval"):
        bn.eval()
        bn(_array(device, x))
    dy = _array(device, np.ones_like(x))
    run = (lambda: bn.backward(dy)) if step.endswith("backward") else (lambda: bn(_array(device, x)))

    with injected_calls(monkeypatch, device, error) as counting:
        run()  # counts the calls of one successful step
    calls = counting.calls
    assert calls >= 1
    for fail_at in range(1, calls + 1):
        before = snapshot(bn)
        with injected_calls(monkeypatch, device, error, fail_at):
            with pytest.raises(error, match="injected failure"):
                run()
        assert_unchanged(bn, before)
    # and the module still works afterwards
    run()


@pytest.mark.parametrize("device", DEVICES)
def test_a_failing_state_load_changes_nothing(monkeypatch, device):
    bn, _ = _trained(device)
    state = {key: np.asarray(value) * 2 for key, value in bn.state_dict().items()}
    bn.weight = _array(device, np.ones(3, np.float64))  # of the wrong dtype: replaced by a new array on load
    before = snapshot(bn)
    backend = bn._backend

    def failing_from_host(values, dtype):
        raise MemoryError("injected failure")

    monkeypatch.setattr(backend, "from_host", failing_from_host)
    with pytest.raises(MemoryError):
        bn.load_state_dict(state)
    assert_unchanged(bn, before)
    monkeypatch.undo()
    bn.load_state_dict(state)
    np.testing.assert_array_equal(host(bn.running_mean), state["running_mean"])
