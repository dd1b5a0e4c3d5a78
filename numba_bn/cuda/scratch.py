"""Staging buffers of the reductions, reused per host thread and per stream.

A reduction writes per-block partial states to a staging buffer that the
next kernel on the same stream merges. Reusing the buffer for the next call
on that stream is safe (stream order), but two host threads - or two streams -
sharing one would let one overwrite the other's partials before they are
merged, because on a GPU their kernels really overlap. So each (host thread,
stream) pair has its own slot of buffers. Slots are bounded (a program that
makes a new stream object per step would otherwise grow the pool without
limit), and a buffer that is replaced or evicted is kept alive until an
event recorded after its last use has completed: queued kernels may still
read it, and a pooled allocator would hand its memory out again at once.
"""

import itertools
import threading
from collections import OrderedDict

import numpy as np

from .arrays import device_array, stream_key
from .numba_cuda import cuda, is_simulator
from .stream import current_stream

#: Slots of buffers kept, least recently used dropped first.
MAX_SLOTS = 16

_slots = OrderedDict()  # (thread token, stream key) -> _Slot
_retired = []  # (event, buffers) awaiting the completion of their last use
_lock = threading.Lock()
_thread_tokens = itertools.count(1)
_this_thread = threading.local()


def _thread_token():
    """A number for the calling thread that no other thread ever gets.

    Not ``threading.get_ident()``: identifiers of finished threads are
    reused, and a finished thread's kernels may still be queued (on its
    per-thread default stream, for one) when a new thread takes its place.
    """
    token = getattr(_this_thread, "token", None)
    if token is None:
        token = _this_thread.token = next(_thread_tokens)
    return token


class _Slot:
    __slots__ = ("stream", "buffers")

    def __init__(self, stream):
        self.stream = stream  # held, so its handle cannot be reused while the slot exists
        self.buffers = {}


def _retire(stream, buffers):
    """Keep ``buffers`` until the work queued on ``stream`` so far is done."""
    if not buffers or is_simulator():  # the simulator runs every launch to completion at once
        return
    event = cuda.event(timing=False)
    event.record(stream=stream)
    _retired.append((event, list(buffers)))


def _release_finished():
    _retired[:] = [(event, buffers) for event, buffers in _retired if not event.query()]


def scratch_array(name, shape, dtype=np.float64):
    """A device buffer ``name`` of ``shape`` for work that the next kernels on the current stream consume.

    The same buffer comes back for the same name, shape and dtype on the same
    host thread and stream, so a training step allocates only what it
    returns or saves.
    """
    stream = current_stream()
    dtype = np.dtype(dtype)
    key = (_thread_token(), stream_key(stream))
    with _lock:
        slot = _slots.get(key)
        if slot is None:
            slot = _slots[key] = _Slot(stream)
            while len(_slots) > MAX_SLOTS:
                _, evicted = _slots.popitem(last=False)
                _retire(evicted.stream, evicted.buffers.values())
        else:
            _slots.move_to_end(key)
        array = slot.buffers.get(name)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            if array is not None:
                _retire(stream, [array])
            array = slot.buffers[name] = device_array(shape, dtype)
        if _retired:
            _release_finished()
        return array


def live_buffers():
    """How many staging buffers are held (in slots and awaiting release): for tests."""
    with _lock:
        return sum(len(slot.buffers) for slot in _slots.values()) + sum(len(b) for _, b in _retired)
