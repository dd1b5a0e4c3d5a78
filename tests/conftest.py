"""Shared fixtures."""

import os

# Before numba is first imported: without a GPU, run numba.cuda kernels in the
# CUDA simulator. A GPU machine runs them for real with NUMBA_ENABLE_CUDASIM=0.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numba import config as numba_config  # noqa: E402

from numba_bn import config  # noqa: E402


def pytest_sessionstart(session):
    """With NUMBA_BN_REQUIRE_TORCH=1 (set by .ci/run), stop unless PyTorch imports,
    so its parity tests fail the run instead of being skipped."""
    if os.environ.get("NUMBA_BN_REQUIRE_TORCH") != "1":
        return
    try:
        import torch  # noqa: F401
    except Exception as error:  # ImportError, or a broken install failing as it loads
        pytest.exit(
            "NUMBA_BN_REQUIRE_TORCH=1 but PyTorch cannot be imported "
            f"({type(error).__name__}: {error}); install torch==2.13.0 or unset the variable",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_collection_modifyitems(config, items):
    """Mark every test that runs CUDA kernels ``cuda`` (``-m "not cuda"`` leaves them out).

    Those are the ``test_cuda_*`` files and every test parametrised with
    ``device="cuda"``; in the simulator they are most of the suite's time.
    """
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.path.name.startswith("test_cuda") or item.name.startswith("test_cuda") or params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)


if numba_config.ENABLE_CUDASIM:
    # Simulated CUDA threads are Python threads meeting at barriers: switching
    # between them sooner makes barrier-heavy kernels several times faster.
    sys.setswitchinterval(1e-4)


@pytest.fixture(autouse=True)
def simulator_blocks(monkeypatch):
    """In the CUDA simulator, blocks of 64 threads (two warps, so merges across warps still run).

    Each simulated thread is a Python thread: 64-thread blocks run the CUDA
    tests about 4x faster than the default 256. ``test_default_cuda_blocks``
    keeps the default size under test.
    """
    if numba_config.ENABLE_CUDASIM:
        monkeypatch.setattr(config, "CUDA_THREADS", 64)


@pytest.fixture
def small_work_units(monkeypatch):
    """Shrink the kernels' work units so small inputs span many units and blocks,
    and run them on the thread pool (the parallel kernels) despite their size."""
    monkeypatch.setattr(config, "RUN_CHUNK", 7)
    monkeypatch.setattr(config, "ROW_BLOCKS", 5)
    monkeypatch.setattr(config, "ROW_BLOCK_VALUES", 1)
    monkeypatch.setattr(config, "ROW_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def small_cuda_blocks(monkeypatch):
    """Tiny CUDA blocks and many blocks per channel, so small inputs exercise every merge level."""
    monkeypatch.setattr(config, "CUDA_THREADS", 32)
    monkeypatch.setattr(config, "CUDA_VALUES_PER_THREAD", 2)
    monkeypatch.setattr(config, "CUDA_TARGET_BLOCKS", 64)
