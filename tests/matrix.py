"""Parameter axes shared by the suites that sweep layouts, dtypes and flags,
and :func:`cases` to combine them.

Shapes stay with each suite: the reference, PyTorch and simulator suites pick
theirs for different reasons (work units, tolerances, simulator speed).
"""

import numpy as np
import pytest

#: channel_axis values: channels first, channels last.
AXES = [pytest.param(1, id="cfirst"), pytest.param(-1, id="clast")]

#: (module dtype, input dtype)
DTYPES = [
    pytest.param(np.float32, np.float32, id="f32"),
    pytest.param(np.float64, np.float64, id="f64"),
    pytest.param(np.float32, np.float16, id="f16in"),
]

#: Module flags (keyword arguments of the constructor).
FLAGS = [
    pytest.param({}, id="default"),
    pytest.param({"bias": False, "momentum": None}, id="nobias-cumavg"),
    pytest.param({"affine": False, "eps": 0.25, "momentum": 0.5}, id="noaffine-eps"),
    pytest.param({"track_running_stats": False}, id="notrack"),
    pytest.param({"affine": False, "track_running_stats": False, "momentum": None}, id="noaffine-notrack"),
]

_PARAM = type(pytest.param())


def cases(*axes):
    """The product of lists of ``pytest.param``, as one list of ``pytest.param``.

    Each case's values are its parts' values in order, its id their ids joined
    with ``-`` and its marks all their marks, so ``cases([CUDA], LAYOUTS, AXES)``
    gives ``cuda-2d-cfirst`` cases that carry the CUDA skip mark. Lists of
    cases concatenate, so one test can sweep a different matrix per device.
    """
    combined = [((), (), ())]
    for axis in axes:
        for part in axis:
            assert isinstance(part, _PARAM) and part.id, f"expected a pytest.param with an id, got {part!r}"
        combined = [
            (values + part.values, marks + tuple(part.marks), ids + (part.id,))
            for values, marks, ids in combined
            for part in axis
        ]
    return [pytest.param(*values, marks=marks, id="-".join(ids)) for values, marks, ids in combined]
