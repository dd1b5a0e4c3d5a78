"""Without mpi4py, ``import numba_bn`` works and SyncBatchNorm's ImportError names the extra."""

import sys

sys.modules["mpi4py"] = None  # as if it were not installed: importing it raises ImportError

import numba_bn as nbn  # noqa: E402

try:
    nbn.SyncBatchNorm(3)
except ImportError as error:
    print(error)
else:
    sys.exit("SyncBatchNorm was built without mpi4py")
