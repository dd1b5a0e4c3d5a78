"""Run a script of ``tests/`` in a fresh Python process that imports the same numba_bn."""

import os
import subprocess
import sys
from pathlib import Path

import numba_bn

TESTS = Path(__file__).resolve().parent


def run_script(script, *args, env=None, timeout=300):
    """Run ``tests/<script>`` with this interpreter; returns the CompletedProcess (text)."""
    paths = [str(Path(numba_bn.__file__).resolve().parents[1]), str(TESTS)]
    environment = dict(os.environ)
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, str(TESTS / script), *map(str, args)],
        env=environment, capture_output=True, text=True, timeout=timeout,
    )
