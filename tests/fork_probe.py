"""Use numba_bn, then fork a child process that uses it too; print a JSON report.

Usage: ``python fork_probe.py``, with ``NUMBA_THREADING_LAYER`` chosen by the
caller. The report gives the active layer, the child's exit code and either
its result (equal to the parent's?) or the error message it raised.
"""

import json
import multiprocessing
import sys

import numpy as np

import numba_bn as nbn
from numba_bn import config

from thread_workloads import _layer_loadable


def _normalised(x):
    bn = nbn.BatchNorm2d(3)
    y = bn(x)
    return y, bn.backward(y)


def _child(x, queue):
    try:
        y, dx = _normalised(x)
        queue.put(("result", y.tobytes() + dx.tobytes()))
    except Exception as error:  # reported to the parent
        queue.put(("error", f"{type(error).__name__}: {error}"))


def main():
    import numba

    if not _layer_loadable(numba.config.THREADING_LAYER):
        print(json.dumps({"unavailable": numba.config.THREADING_LAYER}))
        return
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y, dx = _normalised(x)  # the parent starts the threading layer
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(x, queue))
    child.start()
    report = {"layer": numba.threading_layer()}
    try:  # read before joining: a child cannot exit while its queue's pipe is full
        kind, value = queue.get(timeout=60)
        report[kind] = value == y.tobytes() + dx.tobytes() if kind == "result" else value
    except Exception as error:  # the child died without reporting
        report["no report"] = type(error).__name__
    child.join(60)
    report["exitcode"] = child.exitcode
    print(json.dumps(report))


if __name__ == "__main__":
    # The inputs here are small; the probe is about the parallel kernels and
    # the threading layer, which small inputs would otherwise bypass.
    config.SERIAL_BELOW = 0
    sys.exit(main())
