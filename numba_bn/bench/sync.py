"""The cost of synchronisation: SyncBatchNorm's training step against the same step without it.

``run(ranks, shape)`` starts ``mpiexec -n ranks python -m numba_bn.bench.sync``;
every process then times, interleaved round by round, a training step
(forward and backward) of a ``SyncBatchNorm`` and of a ``BatchNorm`` of the
same configuration on its own share of ``shape`` (no communication), and the
exchange alone (the forward's and the backward's collectives on O(C)
values). Each sample starts at a barrier, so the processes start together,
and a round's time is that of the slowest process (the step is done when
every process is). Rank 0 prints the samples as one JSON line.

The ratio ``sync / local`` is the cost of synchronising; the exchange's
share of the synchronised step says how much of it is the collectives.
Each process runs the kernels on ``threads`` threads (1 by default, so that
two processes on two cores do not compete for them).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

#: Training steps timed per variant and process, after one untimed step each.
ROUNDS = 15
#: Per-process shares timed by default: a ResNet layer's, where synchronising must cost little,
#: and a small one, where the exchanges' latency shows.
DEFAULT_SHAPES = ((32, 64, 56, 56), (8, 64, 8, 8))


def _module_class(ndim):
    import numba_bn as nbn

    return {2: nbn.BatchNorm1d, 3: nbn.BatchNorm1d, 4: nbn.BatchNorm2d, 5: nbn.BatchNorm3d}[ndim]


def _time_ranks(shape: Sequence[int], rounds: int) -> dict | None:
    """Inside ``mpiexec``: every process's samples, gathered on rank 0 (None elsewhere)."""
    from mpi4py import MPI

    import numba_bn as nbn

    comm = MPI.COMM_WORLD
    channels = shape[1]
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    local = _module_class(len(shape))(channels)
    sync = nbn.SyncBatchNorm(channels, comm=comm)
    exchange = sync._exchange
    forward_row, backward_totals = np.zeros(2 * channels + 2), np.zeros((2, channels))

    variants = {
        "local": lambda: local.backward(_forward(local, x, dy)),
        "sync": lambda: sync.backward(_forward(sync, x, dy)),
        "exchange": lambda: (exchange.gather(forward_row), exchange.sum(backward_totals)),
    }
    for run in variants.values():  # compilation and first touch stay out of the samples
        run()
    samples = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(rounds):
        # Alternate which variant goes first, so that none always follows the same one.
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            comm.Barrier()
            start = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - start)
    gathered = comm.gather(samples, root=0)
    if comm.Get_rank() != 0:
        return None
    # A round lasts as long as its slowest process.
    slowest = {name: np.max([process[name] for process in gathered], axis=0).tolist() for name in variants}
    return {"ranks": comm.Get_size(), "shape": list(shape), "samples": slowest}


def _forward(module, x, dy):
    module(x)
    return dy


def summarize(result: dict) -> dict:
    """Median seconds per variant, ``sync / local`` and the exchange's share of the synchronised step."""
    medians = {name: statistics.median(values) for name, values in result["samples"].items()}
    return {
        "ranks": result["ranks"],
        "shape": result["shape"],
        "median_seconds": medians,
        "sync_over_local": medians["sync"] / medians["local"],
        "exchange_share": medians["exchange"] / medians["sync"],
    }


def oversubscription_settings(threads: int) -> dict[str, str]:
    """MPICH settings for more processes' threads than cores: a waiting process yields its core
    after every poll (instead of every 1000) to the processes still computing. Empty otherwise."""
    if threads <= (os.cpu_count() or 1):
        return {}
    return {"MPIR_CVAR_POLLS_BEFORE_YIELD": os.environ.get("MPIR_CVAR_POLLS_BEFORE_YIELD", "1")}


def mpiexec() -> str | None:
    """The ``mpiexec`` of this environment (the mpich wheel's), else the one on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def run(ranks: int, shape: Sequence[int], rounds: int = ROUNDS, threads: int = 1, timeout: float = 600) -> dict:
    """Time the variants on ``ranks`` processes of ``shape`` each; returns :func:`summarize`'s dict.

    Raises RuntimeError when there is no ``mpiexec`` or the run fails.
    """
    launcher = mpiexec()
    if launcher is None:
        raise RuntimeError("no mpiexec found: pip install 'numba_bn[mpi]'")
    environment = dict(os.environ, NUMBA_NUM_THREADS=str(threads), NUMBA_BN_COMPILE_NOTICE="0")
    environment.update(oversubscription_settings(ranks * threads))
    command = [
        launcher, "-n", str(ranks), sys.executable, "-m", "numba_bn.bench.sync",
        ",".join(map(str, shape)), str(rounds),
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"mpiexec -n {ranks} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return summarize(json.loads(lines[-1]))


def table(rows: Sequence[dict]) -> str:
    """The summaries as a text table."""
    lines = [f"{'ranks':>5}  {'shape per rank':<18} {'local':>9} {'sync':>9} {'sync/local':>10} {'exchange share':>14}"]
    for row in rows:
        medians = row["median_seconds"]
        lines.append(
            f"{row['ranks']:>5}  {str(tuple(row['shape'])):<18} {medians['local'] * 1e3:>7.2f}ms "
            f"{medians['sync'] * 1e3:>7.2f}ms {row['sync_over_local']:>9.2f}x {100 * row['exchange_share']:>13.1f}%"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    result = _time_ranks(tuple(int(n) for n in sys.argv[1].split(",")), int(sys.argv[2]))
    if result is not None:
        print(json.dumps(result))
