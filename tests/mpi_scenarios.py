"""SyncBatchNorm scenarios, run on every process of ``mpiexec -n K python mpi_scenarios.py [cuda]``.

Every process draws the same whole batch from the same seed, feeds its
share (rows ``lo:hi`` of the batch axis) to a ``SyncBatchNorm`` and checks
the results against one ``BatchNorm`` (and PyTorch, on rank 0, where it is
installed) run on the whole batch. Failures are collected, not raised, so
that every process keeps joining the collectives; rank 0 prints one JSON
report (``{"failures": [...], "scenarios": N}``) and the exit status is 1
when any process failed a check.

With ``cuda`` the modules run with ``device="cuda"`` (the CUDA simulator
without a GPU) on fewer, smaller scenarios.
"""

import json
import sys
import traceback

import numpy as np
from mpi4py import MPI
from numba import config as numba_config

import numba_bn as nbn
from reference import ref_backward_train, ref_batch_stats, ref_forward

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
DEVICE = "cuda" if "cuda" in sys.argv[1:] else "cpu"
if DEVICE == "cuda" and numba_config.ENABLE_CUDASIM:
    nbn.config.CUDA_THREADS = 64  # as the simulator's tests in pytest take them (see conftest.py)
MODULES = {2: nbn.BatchNorm1d, 3: nbn.BatchNorm1d, 4: nbn.BatchNorm2d, 5: nbn.BatchNorm3d}
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}

failures = []


def host(array):
    return array if isinstance(array, np.ndarray) else array.copy_to_host()


def to_device(array):
    if DEVICE == "cpu":
        return array
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(array))


def check(condition, what):
    if not condition:
        failures.append(f"rank {RANK}: {what}")


def check_close(actual, expected, dtype, what):
    actual, expected = host(actual).astype(np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    tolerance = TOLERANCE[np.dtype(dtype)] * scale
    close = actual.shape == expected.shape and np.allclose(actual, expected, rtol=0, atol=tolerance, equal_nan=True)
    if not close:
        error = np.nanmax(np.abs(actual - expected), initial=0.0) if actual.shape == expected.shape else "shape"
        check(False, f"{what}: max error {error} > {tolerance}")


def check_same_on_every_rank(array, what):
    blobs = COMM.allgather(host(array).tobytes())
    check(all(blob == blobs[0] for blob in blobs), f"{what} differs between ranks")


def shares(sizes):
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    return int(bounds[RANK]), int(bounds[RANK + 1])


def layout(array, channel_axis):
    return np.moveaxis(array, 1, -1).copy() if channel_axis == -1 else array


def run(name, *, sizes, channels=5, spatial=(3, 4), channel_axis=1, dtype=np.float32, loc=0.0, scale=1.0,
        momentum=0.1, affine=True, track_running_stats=True, steps=2):
    """Train ``steps`` steps on a batch split by ``sizes`` (one per rank), then evaluate."""
    rng = np.random.default_rng(1234)
    total = sum(sizes)
    shape = layout(np.empty((total, channels, *spatial)), channel_axis).shape
    flags = dict(momentum=momentum, affine=affine, track_running_stats=track_running_stats, dtype=dtype,
                 channel_axis=channel_axis)
    sync = nbn.SyncBatchNorm(channels, device=DEVICE, **flags)
    ref = MODULES[len(shape)](channels, **flags)
    if affine:
        weight, bias = rng.normal(1.0, 0.3, (2, channels)).astype(dtype)
        ref.weight[...], ref.bias[...] = weight, bias
        sync.weight, sync.bias = to_device(weight), to_device(bias)
    lo, hi = shares(sizes)
    # PyTorch's float32 statistics lose digits at large offsets: there the float64 reference is the judge.
    torch_check = TorchCheck(channels, flags, ref) if RANK == 0 and loc == 0.0 else None
    for step in range(steps):
        x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        what = f"{name} step {step}"
        y = sync(to_device(x[lo:hi]))
        y_ref = ref(x)
        check_close(y, y_ref[lo:hi], dtype, f"{what} output")
        grad = sync.backward(to_device(dy[lo:hi]))
        grad_ref = ref.backward(dy)
        check_close(grad, grad_ref[lo:hi], dtype, f"{what} grad_input")
        check_against_float64(x, dy, host(y), host(grad), lo, hi, sync, dtype, what)
        if affine:
            for attribute in ("grad_weight", "grad_bias"):
                summed = COMM.allreduce(host(getattr(sync, attribute)).astype(np.float64))
                check_close(summed, getattr(ref, attribute), dtype, f"{what} sum of {attribute} over ranks")
        if track_running_stats:
            check(sync.num_batches_tracked == ref.num_batches_tracked, f"{what} num_batches_tracked")
            for attribute in ("running_mean", "running_var"):
                check_close(getattr(sync, attribute), getattr(ref, attribute), dtype, f"{what} {attribute}")
                check_same_on_every_rank(getattr(sync, attribute), f"{what} {attribute}")
        if torch_check:
            torch_check.step(x, dy, host(y), host(grad), lo, hi, what)
    sync.eval()
    ref.eval()
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    # Evaluation communicates nothing: without running buffers each share uses its own statistics.
    expected = ref(x)[lo:hi] if track_running_stats else ref(x[lo:hi])
    check_close(sync(to_device(x[lo:hi])), expected, dtype, f"{name} eval output")


def check_against_float64(x, dy, y_share, grad_share, lo, hi, sync, dtype, what):
    """The share's output and gradient against the float64 reference on the whole batch."""
    if x.size == 0:
        return
    axis = sync.channel_axis % x.ndim
    mean, var, _ = ref_batch_stats(x, axis)
    weight = host(sync.weight) if sync.affine else None
    bias = host(sync.bias) if sync.affine else None
    y_ref = ref_forward(x, mean, var, weight, bias, sync.eps, axis)
    check_close(y_share, y_ref[lo:hi], dtype, f"{what} output vs float64 reference")
    grad_ref, _, _ = ref_backward_train(x, dy, weight, sync.eps, axis)
    check_close(grad_share, grad_ref[lo:hi], dtype, f"{what} grad_input vs float64 reference")


class TorchCheck:
    """The same steps on ``torch.nn.BatchNorm*d`` over the whole batch (rank 0; skipped without torch)."""

    def __init__(self, channels, flags, ref):
        try:
            import torch
        except ImportError:
            self.torch = None
            return
        self.torch = torch
        self.channel_axis = flags["channel_axis"]
        self.module = torch.nn.BatchNorm1d(
            channels, momentum=flags["momentum"], affine=flags["affine"],
            track_running_stats=flags["track_running_stats"], dtype=getattr(torch, np.dtype(flags["dtype"]).name),
        )
        if flags["affine"]:
            with torch.no_grad():
                self.module.weight.copy_(torch.from_numpy(ref.weight.copy()))
                self.module.bias.copy_(torch.from_numpy(ref.bias.copy()))

    def step(self, x, dy, y_share, grad_share, lo, hi, what):
        if self.torch is None:
            return
        torch = self.torch
        # BatchNorm1d over (N, C, L) is the same computation for every rank of input.
        def flat(a):
            a = np.moveaxis(a, -1, 1) if self.channel_axis == -1 else a
            return np.ascontiguousarray(a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:]))))

        xt = torch.from_numpy(flat(x)).requires_grad_(True)
        yt = self.module(xt)
        yt.backward(torch.from_numpy(flat(dy)))
        dtype = x.dtype
        check_close(flat(y_share), yt.detach().numpy()[lo:hi], dtype, f"{what} output vs PyTorch")
        check_close(flat(grad_share), xt.grad.numpy()[lo:hi], dtype, f"{what} grad_input vs PyTorch")


def check_invalid_input_everywhere(name, bad_rank, make_bad, phase, expected_kind=None):
    """One rank's bad input (forward or backward) makes every rank raise, and changes no state."""
    channels, rng = 4, np.random.default_rng(7)
    sync = nbn.SyncBatchNorm(channels, device=DEVICE)
    x = rng.standard_normal((SIZE * 3, channels)).astype(np.float32)
    share = x[RANK * 3 : RANK * 3 + 3]
    if phase == "backward":
        sync(to_device(share))
    before = [host(sync.running_mean).copy(), host(sync.running_var).copy(), sync.num_batches_tracked]
    argument = make_bad(share) if RANK == bad_rank else share
    try:
        if phase == "forward":
            sync(to_device(argument) if isinstance(argument, np.ndarray) else argument)
        else:
            sync.backward(to_device(argument) if isinstance(argument, np.ndarray) else argument)
    except ValueError as error:  # on every rank, the bad one included (its TypeError is also a ValueError)
        if RANK != bad_rank:
            check(f"rank {bad_rank}" in str(error), f"{name}: healthy rank's error should name rank {bad_rank}: {error!r}")
        elif expected_kind is not None:
            check(isinstance(error, expected_kind), f"{name}: bad rank's error should be a {expected_kind}: {error!r}")
    else:
        check(False, f"{name}: no exception raised")
    after = [host(sync.running_mean), host(sync.running_var), sync.num_batches_tracked]
    check(np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2],
          f"{name}: state changed by a call that raised")
    # The collectives stay in step: a valid call afterwards works everywhere.
    y = sync(to_device(share))
    check(host(y).shape == share.shape, f"{name}: the next valid call failed")


def check_single_value_per_channel():
    """One value per channel over all ranks raises everywhere, as BatchNorm's check on the whole batch."""
    sizes = [1] + [0] * (SIZE - 1)
    lo, hi = shares(sizes)
    sync = nbn.SyncBatchNorm(3, device=DEVICE)
    try:
        sync(to_device(np.ones((hi - lo, 3), np.float32)))
    except ValueError as error:
        check("more than 1 value per channel" in str(error), f"single value: message {error!r}")
    else:
        check(False, "single value per channel over all ranks: no ValueError")
    check(sync.num_batches_tracked == 0, "single value: counter changed")


def scenarios():
    uneven = {2: [1, 6], 3: [4, 0, 3], 4: [5, 0, 2, 9]}[SIZE]
    if DEVICE == "cuda":
        yield "cuda uneven", lambda: run("cuda uneven", sizes=uneven, spatial=(3,))
        yield "cuda channels-last", lambda: run("cuda channels-last", sizes=uneven, spatial=(2, 3), channel_axis=-1,
                                                dtype=np.float64, steps=1)
        yield "cuda bad forward", lambda: check_invalid_input_everywhere(
            "cuda bad forward", SIZE - 1, lambda s: s[:, :2].copy(), "forward")
        return
    yield "uneven 4d", lambda: run("uneven 4d", sizes=uneven)
    yield "uneven 2d float64", lambda: run("uneven 2d float64", sizes=uneven, spatial=(), dtype=np.float64)
    yield "channels-last 5d", lambda: run("channels-last 5d", sizes=uneven, spatial=(2, 3, 2), channel_axis=-1)
    yield "channels-last many channels", lambda: run(
        "channels-last many channels", sizes=uneven, channels=70, spatial=(3,), channel_axis=-1)
    yield "large offset", lambda: run("large offset", sizes=uneven, loc=1e4, scale=1.0)
    yield "momentum None", lambda: run("momentum None", sizes=uneven, momentum=None, steps=3)
    yield "affine off", lambda: run("affine off", sizes=uneven, affine=False)
    yield "no running stats", lambda: run("no running stats", sizes=uneven, track_running_stats=False)
    yield "every share empty", lambda: run("every share empty", sizes=[0] * SIZE, steps=1)
    yield "bad channels forward", lambda: check_invalid_input_everywhere(
        "bad channels forward", 1, lambda s: s[:, :2].copy(), "forward")
    yield "bad dtype forward", lambda: check_invalid_input_everywhere(
        "bad dtype forward", 0, lambda s: s.astype(np.float64), "forward", TypeError)
    yield "bad shape backward", lambda: check_invalid_input_everywhere(
        "bad shape backward", SIZE - 1, lambda s: s[:1].copy(), "backward")
    yield "not an array backward", lambda: check_invalid_input_everywhere(
        "not an array backward", 0, lambda s: s.tolist(), "backward", TypeError)
    yield "single value", check_single_value_per_channel


def main():
    count = 0
    for name, scenario in scenarios():
        count += 1
        try:
            scenario()
        except Exception:  # report and go on: the other ranks are inside the same scenario
            failures.append(f"rank {RANK}: {name} raised {traceback.format_exc()}")
    everything = COMM.gather(failures, root=0)
    if RANK == 0:
        merged = [failure for rank_failures in everything for failure in rank_failures]
        print(json.dumps({"failures": merged, "scenarios": count, "ranks": SIZE, "device": DEVICE}))
    return 1 if COMM.allreduce(len(failures)) else 0


if __name__ == "__main__":
    sys.exit(main())
