"""PyTorch-compatible Batch Normalization for NumPy arrays, with Numba kernels."""

from ._stream import cuda_stream
from .functional import batch_norm, batch_stats
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

__version__ = "0.1.0"

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm", "batch_stats", "cuda_stream", "__version__"]
