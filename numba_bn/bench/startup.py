"""Start-up cost: ``import numba_bn`` plus a first call, in a fresh Python process.

Numba compiles the kernels on first use and caches the machine code on disk
(``cache=True``), so the first call of a new process costs either a cache
load (warm cache) or a full compilation (cold cache: an empty
``NUMBA_CACHE_DIR``). Both are measured in a child process, timed inside it
so the interpreter's own start-up is left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numba_bn

#: The child's script: time the import, then the README's quick start (a
#: training forward and backward of a BatchNorm2d on a (32, 16, 28, 28) batch,
#: large enough for the thread-pool kernels) and an eval forward.
_CHILD = """
import json, time
start = time.perf_counter()
import numpy as np
import numba_bn as nbn
imported = time.perf_counter()
x = np.random.default_rng(0).standard_normal((32, 16, 28, 28), dtype=np.float32)
bn = nbn.BatchNorm2d(16)
y = bn(x)
grad_x = bn.backward(np.ones_like(y))
bn.eval()(x)
called = time.perf_counter()
print(json.dumps({"import": imported - start, "first_call": called - imported}))
"""


@dataclass(frozen=True)
class StartupTiming:
    """Seconds for ``import numba_bn`` and for the first calls after it."""

    import_seconds: float
    first_call_seconds: float

    @property
    def total(self) -> float:
        """Import plus first call, in seconds."""
        return self.import_seconds + self.first_call_seconds


def _child_environment(cache_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = cache_dir
    # The child must import this very copy of numba_bn, installed or not.
    package_parent = str(Path(numba_bn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def measure_startup(cache_dir: str, python: str = sys.executable, timeout: float = 600) -> StartupTiming:
    """Run the child once with ``NUMBA_CACHE_DIR=cache_dir`` and return its timings.

    Parameters
    ----------
    cache_dir : str
        The kernel cache directory of the child: empty for a cold start.
    python : str
        The interpreter to start (default: this one).
    timeout : float
        Seconds before the child is killed.

    Returns
    -------
    StartupTiming

    Raises
    ------
    RuntimeError
        When the child fails; the message holds its stderr.
    """
    completed = subprocess.run(
        [python, "-c", _CHILD], env=_child_environment(cache_dir), capture_output=True,
        text=True, timeout=timeout, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the start-up child process failed (exit {completed.returncode}):\n{completed.stderr}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    return StartupTiming(figures["import"], figures["first_call"])


def measure_cold_and_warm(python: str = sys.executable) -> tuple[StartupTiming, StartupTiming]:
    """``(cold, warm)``: a run on an empty cache directory, then a second run on the cache it filled."""
    with tempfile.TemporaryDirectory(prefix="numba_bn_cache_") as cache_dir:
        cold = measure_startup(cache_dir, python)
        warm = measure_startup(cache_dir, python)
    return cold, warm
