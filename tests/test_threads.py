"""Several Python threads calling numba_bn at once: sequential results, on every threading layer.

Numba's ``workqueue`` layer terminates the process when two threads launch
parallel kernels at the same time; ``numba_bn.cpu.thread_safety`` serialises the
kernel calls on such a layer. The fresh-process tests start the threads as
the very first numba_bn calls with an empty kernel cache, so they also race
through compilation and the layer's start-up. A child forked after the
parent used the kernels either computes the same results or, under GNU
OpenMP (which cannot work after fork), raises a clear error instead of being
killed.
"""

import json
import threading
import time

import numba
import numpy as np
import pytest

import numba_bn as nbn
from isolated import run_script
from numba_bn import config
from numba_bn.cpu import thread_safety as _threading
from thread_workloads import mismatches, run_concurrently, workloads


@pytest.mark.parametrize("kernels", ["parallel", "serial-for-small"])
def test_concurrent_calls_give_sequential_results(kernels, monkeypatch):
    if kernels == "parallel":
        monkeypatch.setattr(config, "SERIAL_BELOW", 0)  # these small inputs would run serially
    table = workloads(dtypes=(np.float32, np.float64))
    concurrent = run_concurrently(table, copies=2, rounds=3)
    assert all(len(runs) == 6 for runs in concurrent.values())
    assert mismatches(table, concurrent) == []


def test_guard_knows_the_active_layer(monkeypatch):
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)
    nbn.batch_stats(np.ones((3, 2)))  # a parallel kernel has run: the layer is chosen
    expected = numba.threading_layer() in _threading.THREAD_SAFE_LAYERS
    assert _threading.active_layer_is_thread_safe() is expected


def _max_overlap(function, threads=4):
    """Call ``function`` from ``threads`` threads at once; the most calls seen inside together."""
    inside = []
    peak = []
    lock = threading.Lock()

    @_threading.serialize_unless_thread_safe
    def guarded():
        with lock:
            inside.append(1)
            peak.append(len(inside))
        try:
            function()
        finally:
            with lock:
                inside.pop()

    start = threading.Barrier(threads)
    errors = []

    def worker():
        start.wait()
        try:
            guarded()
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join()
    if errors:
        raise errors[0]
    return max(peak)


@pytest.mark.parametrize("layer", ["workqueue", "not started"])
def test_guard_serialises_unless_the_layer_is_thread_safe(layer, monkeypatch):
    def reported_layer():
        if layer == "not started":
            raise ValueError("Threading layer is not initialized.")
        return layer

    monkeypatch.setattr(_threading, "_active_layer_is_thread_safe", False)
    monkeypatch.setattr(numba, "threading_layer", reported_layer)
    assert _max_overlap(lambda: time.sleep(0.02)) == 1


@pytest.mark.parametrize("layer", sorted(_threading.THREAD_SAFE_LAYERS))
def test_guard_lets_thread_safe_layers_run_concurrently(layer, monkeypatch):
    monkeypatch.setattr(_threading, "_active_layer_is_thread_safe", False)
    monkeypatch.setattr(numba, "threading_layer", lambda: layer)
    together = threading.Barrier(4, timeout=10)  # breaks if the calls were serialised
    assert _max_overlap(together.wait) == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "layer, cache",
    [("workqueue", "empty"), ("omp", "inherited"), ("tbb", "inherited")],
    ids=["workqueue-compiling", "omp", "tbb"],
)
def test_first_calls_race_in_a_fresh_process(layer, cache, tmp_path):
    """The least thread-safe layer races through compilation from an empty kernel cache;
    the others race through their start-up and the loading of cached kernels."""
    env = {"NUMBA_THREADING_LAYER": layer}
    if cache == "empty":
        env["NUMBA_CACHE_DIR"] = str(tmp_path)
    result = run_script("thread_workloads.py", 3, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "terminating" not in result.stderr, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "unavailable" in report:
        pytest.skip(f"the {layer} threading layer cannot be loaded here")
    assert report == {"layer": layer, "mismatches": []}


@pytest.mark.parametrize("layer", ["workqueue", "omp", "tbb"])
def test_forked_child_computes_or_raises_a_clear_error(layer):
    """After the parent used numba_bn, a forked child gets the same results or, where
    the layer cannot work after fork (GNU OpenMP), a RuntimeError instead of being killed."""
    result = run_script("fork_probe.py", env={"NUMBA_THREADING_LAYER": layer}, timeout=200)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "unavailable" in report:
        pytest.skip(f"the {layer} threading layer cannot be loaded here")
    assert report["layer"] == layer and report["exitcode"] == 0, report
    if "error" in report:
        assert layer == "omp" and "GNU OpenMP" in report["error"] and "spawn" in report["error"], report
    else:
        assert report["result"] is True, report
