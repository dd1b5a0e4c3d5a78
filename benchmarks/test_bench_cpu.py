"""CPU train-forward benchmark: numba_bn against plain NumPy in the same run.

Plain ``pytest`` runs each case once as a smoke test (``--benchmark-disable``
is the default); measure with ``pytest benchmarks --benchmark-enable``.
"""

import numpy as np
import pytest

from implementations import TRAIN_FORWARD, fresh_state

SHAPES = [(32, 64, 56, 56), (4096, 1024), (64, 128)]


@pytest.mark.parametrize("implementation", sorted(TRAIN_FORWARD))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_train_forward(benchmark, implementation, shape):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    state = fresh_state(shape[1])
    benchmark.group = f"train_forward {shape}"
    y = benchmark(TRAIN_FORWARD[implementation], x, state)
    assert y.shape == shape
    reference = TRAIN_FORWARD["numpy"](x, fresh_state(shape[1]))
    np.testing.assert_allclose(y, reference, atol=1e-4)
