"""Peak resident memory of forward and backward on a ~500 MB float32 input, in a fresh process.

Usage: ``python memory_probe.py CHANNEL_AXIS``. Prints a JSON report of bytes:
the input size and, per operation, the rise of the peak resident set size
(VmHWM, reset through ``/proc/self/clear_refs`` before each operation) over
the resident size just before it, next to the size of the operation's result.
Prints ``{"unsupported": ...}`` where the peak cannot be reset (not Linux).
"""

import json
import sys

import numpy as np

import numba_bn as nbn
from numba_bn import config

SHAPE_CHANNELS_FIRST = (64, 16, 352, 352)  # 126.9 M float32 values: 507 MB


def _status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rise(operation):
    """``(result, bytes the peak RSS rose above the RSS before the call)``."""
    _reset_peak()
    before = _status_bytes("VmRSS")
    result = operation()
    return result, _status_bytes("VmHWM") - before


def main(channel_axis):
    try:
        _reset_peak()
        _status_bytes("VmHWM")
    except (OSError, RuntimeError) as error:
        print(json.dumps({"unsupported": str(error)}))
        return
    shape = SHAPE_CHANNELS_FIRST
    if channel_axis == -1:
        shape = (shape[0], *shape[2:], shape[1])
    channels = shape[channel_axis]
    rng = np.random.default_rng(0)

    # Load (or compile) every kernel first, so that only the operations are measured.
    small = rng.standard_normal((4, *shape[1:-1], 8) if channel_axis == 1 else (4, 3, 5, channels))
    small = small.astype(np.float32)
    for serial_below in (0, config.SERIAL_BELOW):  # the parallel kernels too: large inputs run those
        config.SERIAL_BELOW = serial_below
        warm = nbn.BatchNorm2d(channels, channel_axis=channel_axis)
        warm.backward(warm(small))
        warm.eval().backward(warm(small))

    def batch():  # one random sample repeated: cheap to fill, every page touched
        values = np.empty(shape, np.float32)
        values[...] = rng.standard_normal(shape[1:], dtype=np.float32)
        values[::2] *= 2.0
        return values

    bn = nbn.BatchNorm2d(channels, channel_axis=channel_axis)
    x = batch()
    report = {"input": x.nbytes}
    y, report["train_forward"] = peak_rise(lambda: bn(x))
    del y
    dy = batch()
    dx, report["train_backward"] = peak_rise(lambda: bn.backward(dy))
    del dx
    bn.eval()
    y, report["eval_forward"] = peak_rise(lambda: bn(x))
    del y
    dx, report["eval_backward"] = peak_rise(lambda: bn.backward(dy))
    del dx
    _, report["batch_stats"] = peak_rise(lambda: nbn.batch_stats(x, channel_axis=channel_axis))
    print(json.dumps(report))


if __name__ == "__main__":
    main(int(sys.argv[1]))
