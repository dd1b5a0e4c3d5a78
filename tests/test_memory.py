"""Memory: no full-size temporaries, a reference (not a copy) kept for backward, no leaks.

NumPy and Numba's runtime both report their allocations to ``tracemalloc``, so
the traced peak of a call is everything it allocated: its result, the O(C)
per-channel vectors and the kernels' per-work-unit partial states (24 bytes
per 4096-value chunk of a channel, i.e. ~0.15% of a float32 input, or 16 bytes
per channel for each of at most ``ROW_BLOCKS`` row blocks).
The resident-memory test runs a ~500 MB input in a fresh process.

Also here: the best-effort check that the forward's input was not modified
before backward, which is what makes keeping a reference safe.
"""

import gc
import json
import sys
import tracemalloc
from pathlib import Path

import numba
import numpy as np
import pytest

import numba_bn as nbn
from isolated import run_script
from numba_bn.cpu import fingerprint as _fingerprint
from state_snapshot import assert_unchanged, snapshot

#: Allowance for per-call bookkeeping: O(C) float64 vectors, views, small objects.
FIXED_ALLOWANCE = 64 * 1024


def traced_peak(call):
    """``(result, peak bytes traced during the call above the traced bytes before it)``."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - before


def scratch_allowance(x):
    """What the kernels may keep besides the result: 1/64 of the input's bytes, plus O(C)."""
    return FIXED_ALLOWANCE + x.nbytes // 64


def _random(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) + 1.0).astype(dtype)


#: (name, array factory, channel_axis): inputs of 1-4 MB in the layouts that take different paths.
INPUTS = [
    ("NCHW-f32", lambda: _random((8, 16, 64, 64), np.float32), 1),
    ("NHWC-f32", lambda: _random((8, 64, 64, 16), np.float32), -1),
    ("NC-f32", lambda: _random((32768, 16), np.float32), 1),
    ("NCHW-f64-fortran", lambda: np.asfortranarray(_random((8, 16, 32, 32), np.float64)), 1),
    ("NCHW-f16-negative", lambda: _random((8, 16, 64, 64), np.float16)[::-1, :, ::-1], 1),
    ("NCL-f32-every-other", lambda: _random((16, 8, 4096), np.float32)[::2, :, ::2], 1),
]
INPUT_IDS = [name for name, _, _ in INPUTS]


def _module_for(x, channel_axis):
    cls = {2: nbn.BatchNorm1d, 3: nbn.BatchNorm1d, 4: nbn.BatchNorm2d, 5: nbn.BatchNorm3d}[x.ndim]
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    return cls(x.shape[channel_axis], channel_axis=channel_axis, dtype=dtype)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, make, channel_axis", INPUTS, ids=INPUT_IDS)
def test_forward_and_backward_allocate_only_their_result(name, make, channel_axis, training):
    x = make()
    bn = _module_for(x, channel_axis).train(training)
    dy = _random(x.shape, x.dtype, seed=1)
    bn.backward(bn(x))  # compile outside the measurement
    y, forward_peak = traced_peak(lambda: bn(x))
    assert forward_peak <= y.nbytes + scratch_allowance(x), (forward_peak, y.nbytes)
    del y
    dx, backward_peak = traced_peak(lambda: bn.backward(dy))
    assert backward_peak <= dx.nbytes + scratch_allowance(x), (backward_peak, dx.nbytes)


@pytest.mark.parametrize("name, make, channel_axis", INPUTS, ids=INPUT_IDS)
def test_functional_calls_allocate_only_their_result(name, make, channel_axis):
    x = make()
    channels = x.shape[channel_axis]
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    mean, var = np.zeros(channels, dtype), np.ones(channels, dtype)
    for training in (True, False):
        nbn.batch_norm(x, mean, var, training=training, channel_axis=channel_axis)
        y, peak = traced_peak(lambda: nbn.batch_norm(x, mean, var, training=training, channel_axis=channel_axis))
        assert peak <= y.nbytes + scratch_allowance(x), (training, peak, y.nbytes)
    _, peak = traced_peak(lambda: nbn.batch_stats(x, channel_axis=channel_axis))
    assert peak <= scratch_allowance(x), peak


def test_forward_keeps_a_reference_not_a_copy():
    x = _random((8, 16, 64, 64), np.float32)
    bn = nbn.BatchNorm2d(16)
    bn(x)

    def forward_and_drop_output():
        bn(x)

    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        forward_and_drop_output()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before <= FIXED_ALLOWANCE, after - before  # what is kept for backward: O(C)
    references = sys.getrefcount(x)
    del bn
    gc.collect()
    assert sys.getrefcount(x) == references - 1  # the module held exactly one reference to x


def test_non_native_byte_order_costs_one_native_copy():
    """The kernels read native byte order: a byte-swapped input is converted once (documented)."""
    x = _random((8, 16, 64, 64), np.float32)
    swapped = x.astype(x.dtype.newbyteorder())
    bn = nbn.BatchNorm2d(16)
    bn(swapped)
    y, peak = traced_peak(lambda: bn(swapped))
    assert y.nbytes + x.nbytes <= peak <= y.nbytes + x.nbytes + scratch_allowance(x)


def test_few_rows_many_channels_scratch_stays_small():
    """Row blocks of a reduction are bounded by the rows, not only by the values.

    Each block keeps two float64 vectors of C values; with few rows and a
    large C, a split by values alone made that scratch larger than the input.
    """
    x = _random((256, 32768), np.float32)  # BatchNorm1d on wide features: 32 MB input
    bn = nbn.BatchNorm1d(32768)
    bn(x)
    y, peak = traced_peak(lambda: bn(x))
    per_channel = 12 * 8 * x.shape[1]  # O(C): a dozen float64 vectors (statistics, coefficients, tiles)
    assert peak <= y.nbytes + scratch_allowance(x) + per_channel, f"{peak / x.nbytes:.2f}x the input"


@pytest.mark.slow
@pytest.mark.parametrize("channel_axis", [1, -1], ids=["cfirst", "clast"])
def test_peak_resident_memory_on_a_500mb_input(channel_axis):
    result = run_script("memory_probe.py", channel_axis, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "unsupported" in report:
        pytest.skip(f"peak RSS cannot be reset here: {report['unsupported']}")
    size = report.pop("input")
    assert size > 500e6
    allowance = 16 * 2**20  # partial states (~0.8 MB here) and interpreter noise
    # Linux batches each thread's RSS counter (synced every 64 page faults), so a
    # call that allocates nothing can read a few hundred KB below the RSS before it.
    counter_skew = 2**20
    assert -counter_skew <= report.pop("batch_stats") <= allowance
    for operation, rise in report.items():  # each produces one input-sized array
        assert 0.95 * size <= rise <= size + allowance, (operation, rise / size)


# --------------------------------------------------------------------- leaks


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _small_steps(modules, inputs):
    for bn, x in zip(modules, inputs):
        bn.train()
        bn.backward(bn(x))
        bn.eval()
        bn.backward(bn(x))
    nbn.batch_stats(inputs[0])
    nbn.batch_norm(inputs[0], None, None, training=True)


_CALLS_PER_STEP = 3 * 4 + 2  # what _small_steps calls on _leak_fixture's three modules


def _leak_fixture():
    modules = [nbn.BatchNorm2d(3), nbn.BatchNorm2d(5, channel_axis=-1), nbn.BatchNorm1d(4, dtype=np.float64)]
    inputs = [_random((4, 3, 5, 5), np.float32), _random((4, 5, 6, 5), np.float32), _random((16, 4), np.float64)]
    return modules, inputs


@pytest.fixture
def one_thread():
    """The same allocations as with more threads, without waiting on a busy sibling
    core for every tiny parallel region (erratic timing on shared machines)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_resident_memory_stays_flat_over_many_small_calls(one_thread):
    modules, inputs = _leak_fixture()
    for _ in range(300):
        _small_steps(modules, inputs)
    gc.collect()
    before = _resident_bytes()
    iterations = 1200  # x _CALLS_PER_STEP (14) = 16,800 calls
    for _ in range(iterations):
        _small_steps(modules, inputs)
    gc.collect()
    growth = _resident_bytes() - before
    assert growth < 2 * 2**20, f"{growth} bytes over {iterations * _CALLS_PER_STEP} calls"


def test_no_allocation_made_by_numba_bn_outlives_its_call(one_thread):
    """Allocations made in numba_bn's code (NumPy's and the kernels' alike) are all freed.

    Only the package's own lines count. NumPy keeps freed small blocks (array
    dimensions and strides), and Python freed tuples, in bounded caches of
    their own, which tracemalloc still sees as allocated: they fill in bursts
    over the first thousand or so steps, at moments that vary from run to
    run. A leak grows in every window of calls instead, so the check takes
    consecutive windows after a traced warm-up and requires one of them to
    keep less than one byte per call.
    """
    modules, inputs = _leak_fixture()
    for _ in range(50):
        _small_steps(modules, inputs)
    ours = [tracemalloc.Filter(True, str(Path(nbn.__file__).parent / "*"))]

    def traced_in_package():
        gc.collect()
        return sum(t.size for t in tracemalloc.take_snapshot().filter_traces(ours).traces)

    growth = []
    tracemalloc.start(1)
    try:
        for _ in range(400):  # warm-up window, traced: the caches start filling here
            _small_steps(modules, inputs)
        before = traced_in_package()
        for _ in range(4):
            for _ in range(200):
                _small_steps(modules, inputs)
            after = traced_in_package()
            growth.append(after - before)
            before = after
    finally:
        tracemalloc.stop()
    calls = 200 * _CALLS_PER_STEP
    assert min(growth) < calls, f"{growth} bytes kept over windows of {calls} calls"


# ---------------------------------------------- input modified before backward


def _trained_on(x, **kwargs):
    bn = nbn.BatchNorm2d(x.shape[1], **kwargs)
    bn(x)
    return bn


@pytest.mark.parametrize(
    "modify",
    [
        lambda x: x.__imul__(2),
        lambda x: np.maximum(x, 0, out=x),  # an in-place ReLU
        lambda x: x.__setitem__((0, 0, 0, 0), 7.0),  # the first element
        lambda x: x.__setitem__((-1, -1, -1, -1), 7.0),  # the last element
        lambda x: x[:, 1].fill(0.0),  # one channel
    ],
    ids=["scaled", "relu", "first", "last", "one-channel"],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_backward_detects_an_input_modified_in_place(modify, training):
    x = _random((4, 3, 10, 12), np.float32) - 1.0
    bn = _trained_on(x).train(training)
    bn(x)
    modify(x)
    before = snapshot(bn)
    with pytest.raises(ValueError, match="modified in place"):
        bn.backward(np.ones_like(x))
    assert_unchanged(bn, before)
    bn(x)  # a new forward records the new values
    assert bn.backward(np.ones_like(x)).shape == x.shape


@pytest.mark.parametrize(
    "view",
    [lambda base: base[::-1, :, ::2], lambda base: base.transpose(0, 1, 3, 2), lambda base: base[1:, :, 3:, :-2]],
    ids=["negative-strided", "transposed", "window"],
)
def test_detects_changes_made_through_another_view(view):
    base = _random((5, 3, 12, 10), np.float64)
    x = view(base)
    bn = _trained_on(x, dtype=np.float64)
    base += 1.0
    with pytest.raises(ValueError, match="modified in place"):
        bn.backward(np.ones(x.shape))


def test_unchanged_input_passes_and_a_restored_one_too():
    x = _random((4, 3, 10, 12), np.float32)
    bn = _trained_on(x)
    bn.backward(np.ones_like(x))
    saved = x.copy()
    x += 1.0
    x[...] = saved  # same bits again: nothing to detect
    bn.backward(np.ones_like(x))


def test_the_check_reads_a_small_sample_whatever_the_size():
    sizes = [0, 1, _fingerprint.SAMPLE_SIZE, 10**6, 2**40]
    for size in sizes:
        positions = _fingerprint._sample_positions(size)
        assert len(positions) == min(size, _fingerprint.SAMPLE_SIZE)
        assert len(set(positions.tolist())) == len(positions), size
        if size:
            assert positions.min() == 0 and positions.max() == size - 1
    huge = np.broadcast_to(np.float32(1.0), (2**20, 2**20))  # 2**40 elements, no memory
    _, peak = traced_peak(lambda: _fingerprint.record(huge))
    assert peak < 16 * 1024
