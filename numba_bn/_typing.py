"""Type aliases used in the public signatures.

``numba.cuda`` is imported only once CUDA is actually used (``import numba_bn``
must work without it), and GPU arrays may come from any library that exposes
``__cuda_array_interface__``, so device arrays and streams have no class to
name here: they are typed as ``Any`` under names that say what is expected.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

#: A ``numba.cuda`` device array, or any object with ``__cuda_array_interface__``
#: (a CuPy array, a PyTorch CUDA tensor); read without a copy.
DeviceArray = Any

#: A NumPy array on the CPU path, or a :data:`DeviceArray` on the GPU path.
Array = Union[np.ndarray, DeviceArray]

#: A ``numba.cuda`` stream: ``numba.cuda.stream()`` or ``numba.cuda.external_stream(ptr)``.
CudaStream = Any
