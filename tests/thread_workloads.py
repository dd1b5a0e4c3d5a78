"""Workloads that several threads run at once, and a script that races them in a fresh process.

Each workload builds its own module (or functional buffers) and runs a fixed
sequence of train/eval forwards and backwards on fixed data, returning every
result. Results must be bit-identical however the calls interleave with other
threads': the kernels' work split depends only on the shapes.

Run as a script (``python thread_workloads.py ROUNDS``), it starts all
workloads together in threads as the very first numba_bn calls of the process
(so with an empty ``NUMBA_CACHE_DIR`` the threads race through kernel
compilation and the threading layer's start-up), then runs them again one
after the other and prints a JSON report: the active threading layer and the
names of workloads whose concurrent results differ from the sequential ones.
"""

import importlib
import json
import sys
import threading

import numpy as np

import numba_bn as nbn
from numba_bn import config


def _data(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)


def _module_steps(module, x, dy):
    out = [module(x), module.backward(dy), module(x * 0.5)]
    module.eval()
    out += [module(x), module.backward(dy), module.running_mean.copy(), module.running_var.copy()]
    if module.affine:
        out += [module.grad_weight, module.grad_bias]
    return out


def module_workload(cls, channels, shape, channel_axis, dtype, seed):
    def run():
        module = cls(channels, channel_axis=channel_axis, dtype=np.dtype(dtype).type)
        return _module_steps(module, _data(seed, shape, dtype), _data(seed + 1, shape, dtype))

    return run


def functional_workload(shape, channel_axis, dtype, seed):
    def run():
        x = _data(seed, shape, dtype)
        channels = shape[channel_axis]
        mean, var = np.zeros(channels, dtype), np.ones(channels, dtype)
        out = [nbn.batch_norm(x, mean, var, training=True, channel_axis=channel_axis) for _ in range(2)]
        out += [nbn.batch_norm(x, mean, var, training=False, channel_axis=channel_axis), mean, var]
        out += list(nbn.batch_stats(x, channel_axis=channel_axis)[:2])
        return out

    return run


def workloads(dtypes=(np.float32,)):
    """Name -> workload; channels first and last, every module class, the functional API."""
    table = {}
    for dtype in dtypes:
        tag = np.dtype(dtype).name
        table.update({
            f"bn1d-NC-{tag}": module_workload(nbn.BatchNorm1d, 7, (300, 7), 1, dtype, 1),
            f"bn2d-cfirst-{tag}": module_workload(nbn.BatchNorm2d, 3, (4, 3, 33, 35), 1, dtype, 2),
            f"bn2d-clast-{tag}": module_workload(nbn.BatchNorm2d, 5, (4, 17, 19, 5), -1, dtype, 3),
            f"bn3d-{tag}": module_workload(nbn.BatchNorm3d, 2, (2, 2, 5, 6, 7), 1, dtype, 4),
            f"functional-{tag}": functional_workload((6, 4, 21, 23), 1, dtype, 5),
        })
    return table


def run_concurrently(table, copies=2, rounds=1):
    """Run ``copies`` threads per workload, all released at once, ``rounds`` times each.

    Returns ``{name: [results of every run]}``; re-raises the first error a thread hit.
    """
    jobs = [name for name in table for _ in range(copies)]
    results = {name: [] for name in table}
    errors = []
    barrier = threading.Barrier(len(jobs))
    lock = threading.Lock()

    def worker(name):
        try:
            barrier.wait()
            for _ in range(rounds):
                out = table[name]()
                with lock:
                    results[name].append(out)
        except BaseException as error:  # reported to the caller below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def mismatches(table, concurrent):
    """Names of workloads whose concurrent results are not bit-identical to a sequential run."""
    bad = []
    for name, run in table.items():
        expected = run()
        for out in concurrent[name]:
            if len(out) != len(expected) or not all(
                a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                for a, b in zip(out, expected)
            ):
                bad.append(name)
                break
    return bad


def _layer_loadable(layer):
    """Whether Numba can load ``layer`` (its pool extension imports), without starting it."""
    modules = {"tbb": "tbbpool", "omp": "omppool", "workqueue": "workqueue"}
    if layer not in modules:
        return True
    try:
        importlib.import_module(f"numba.np.ufunc.{modules[layer]}")
    except ImportError:
        return False
    return True


def main(rounds):
    import numba

    requested = numba.config.THREADING_LAYER
    if not _layer_loadable(requested):
        print(json.dumps({"unavailable": requested}))
        return
    table = workloads()
    concurrent = run_concurrently(table, copies=2, rounds=rounds)
    report = {"layer": numba.threading_layer(), "mismatches": mismatches(table, concurrent)}
    print(json.dumps(report))


if __name__ == "__main__":
    # The inputs here are small; the probe is about the parallel kernels and
    # the threading layer, which small inputs would otherwise bypass.
    config.SERIAL_BELOW = 0
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
