"""Streams and staging buffers of the CUDA backend.

The simulator runs every launch at once, so races between streams or host
threads cannot happen in it; these tests check the bookkeeping that prevents
them on a GPU instead: which stream every launch, allocation and copy is
queued on, that each host thread and stream has its own staging buffers,
that the pool of them is bounded, and that a replaced buffer outlives the
work queued before its replacement.
"""

import threading

import numpy as np
import pytest
from cuda_support import CUDA_MISSING  # before the CUDA imports below

if CUDA_MISSING and "numba-cuda" in CUDA_MISSING:
    pytest.skip(f"the cuda extra is not installed: {CUDA_MISSING}", allow_module_level=True)

from numba import cuda
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

import numba_bn as nbn
from cuda_launches import recorded_launches
from cuda_support import SIMULATOR, host, needs_cuda
from numba_bn.cuda import scratch

pytestmark = [
    needs_cuda,
    pytest.mark.skipif(not SIMULATOR, reason="inspects the simulator's launches"),
    pytest.mark.usefixtures("small_cuda_blocks"),
]


@pytest.fixture
def empty_pool(monkeypatch):
    monkeypatch.setattr(scratch, "_slots", type(scratch._slots)())
    monkeypatch.setattr(scratch, "_retired", [])


def test_every_launch_and_copy_goes_to_the_chosen_stream(monkeypatch, rng):
    x = rng.standard_normal((5, 3, 8)).astype(np.float32)
    expected = host(nbn.BatchNorm1d(3, device="cuda")(cuda.to_device(x)))
    bn = nbn.BatchNorm1d(3, device="cuda")
    stream = cuda.stream()
    copies = []
    copy_to_device = FakeCUDAArray.copy_to_device

    def recording_copy(array, values, stream=0):
        copies.append(stream)
        return copy_to_device(array, values, stream=stream)

    monkeypatch.setattr(FakeCUDAArray, "copy_to_device", recording_copy)
    with recorded_launches() as launches, nbn.cuda_stream(stream) as chosen:
        assert chosen is stream
        y = bn(cuda.to_device(x, stream=stream))
        bn.backward(cuda.to_device(np.ones_like(x), stream=stream))
        bn.reset_parameters()
        bn.load_state_dict(bn.state_dict())
        bn.eval()
        bn(cuda.to_device(x, stream=stream))
    stream.synchronize()
    np.testing.assert_array_equal(host(y), expected)
    assert launches and {id(launch.stream) for launch in launches} == {id(stream)}
    assert copies and all(s is stream for s in copies)
    with recorded_launches() as launches:
        bn(cuda.to_device(x))
    assert launches and all(launch.stream == 0 for launch in launches)  # outside: the default stream


def test_each_host_thread_has_its_own_staging_buffers(empty_pool):
    buffers = {}

    def take(name):
        buffers[name] = scratch.scratch_array("partials", (3, 4))

    threads = [threading.Thread(target=take, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert buffers["a"] is not buffers["b"]
    again = scratch.scratch_array("partials", (3, 4))
    assert again is scratch.scratch_array("partials", (3, 4))  # reused on the same thread and stream
    with nbn.cuda_stream(cuda.stream()):
        assert scratch.scratch_array("partials", (3, 4)) is not again  # and per stream


def test_the_pool_is_bounded_when_every_step_brings_a_new_stream(empty_pool, rng):
    bn = nbn.BatchNorm2d(3, device="cuda")
    x = cuda.to_device(rng.standard_normal((2, 3, 2, 3)).astype(np.float32))
    for _ in range(3 * scratch.MAX_SLOTS):
        with nbn.cuda_stream(cuda.stream()):
            bn(x)
            bn.backward(x)
    assert len(scratch._slots) == scratch.MAX_SLOTS
    assert scratch.live_buffers() <= 8 * scratch.MAX_SLOTS


class _Event:
    """A CUDA event whose completion the test decides."""

    def __init__(self):
        self.done = False
        self.stream = None

    def record(self, stream=0):
        self.stream = stream

    def query(self):
        return self.done


def test_a_replaced_buffer_lives_until_its_queued_work_is_done(empty_pool, monkeypatch):
    events = []

    def event(timing=False):
        events.append(_Event())
        return events[-1]

    monkeypatch.setattr(scratch, "is_simulator", lambda: False)  # as on a GPU
    monkeypatch.setattr(scratch.cuda, "event", event)
    first = scratch.scratch_array("partials", (3, 4))
    second = scratch.scratch_array("partials", (3, 5))  # another shape replaces it
    assert second is not first and len(events) == 1 and events[0].stream == 0
    assert any(first is buffer for _, buffers in scratch._retired for buffer in buffers)
    scratch.scratch_array("partials", (3, 5))
    assert scratch._retired  # its work is not done yet: still held
    events[0].done = True
    scratch.scratch_array("partials", (3, 5))
    assert scratch._retired == []
