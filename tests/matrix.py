"""Parameter axes shared by the suites that sweep layouts and dtypes.

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
