"""Which device runs the row normalisations: the twin of ``_backend.backend`` for
``numba_bn/cpu/row_backend.py`` and ``numba_bn/cuda/row_backend.py``."""

from __future__ import annotations

import functools
from typing import Any

from ._backend import require_cuda


@functools.lru_cache(maxsize=None)  # looked up on every forward: the imports and the CUDA check once
def row_backend(device: str) -> Any:
    """The row backend of a checked device name (``"cpu"`` or ``"cuda"``)."""
    if device == "cuda":
        require_cuda()
        from .cuda.row_backend import CUDA_ROWS

        return CUDA_ROWS
    from .cpu.row_backend import CPU_ROWS

    return CPU_ROWS
