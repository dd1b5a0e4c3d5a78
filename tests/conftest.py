"""Shared fixtures."""

import numpy as np
import pytest

from numba_bn import config


@pytest.fixture
def small_work_units(monkeypatch):
    """Shrink the kernels' work units so small inputs span many units and blocks,
    and run them on the thread pool (the parallel kernels) despite their size."""
    monkeypatch.setattr(config, "RUN_CHUNK", 7)
    monkeypatch.setattr(config, "ROW_BLOCKS", 5)
    monkeypatch.setattr(config, "ROW_BLOCK_VALUES", 1)
    monkeypatch.setattr(config, "SERIAL_BELOW", 0)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
