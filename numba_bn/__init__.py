"""PyTorch-compatible Batch Normalization for NumPy arrays, with Numba kernels.

``numba_bn`` computes batch normalisation with the semantics of
``torch.nn.BatchNorm*d`` and ``torch.nn.functional.batch_norm``, without
PyTorch: on NumPy arrays with parallel Numba CPU kernels, or on NVIDIA GPUs
with ``numba.cuda`` kernels (``device="cuda"``). The CPU path works on
machines without CUDA.

Public API
----------
BatchNorm1d, BatchNorm2d, BatchNorm3d
    Modules with parameters, running statistics, ``forward``/``backward``,
    training and evaluation modes, ``state_dict``/``load_state_dict`` and
    device moves; channels-first or channels-last input (``channel_axis``).
batch_norm
    The stateless ``torch.nn.functional.batch_norm``.
batch_stats
    Per-channel mean, biased variance and count in one pass.
ChannelStats, channel_stats
    Mergeable per-channel ``(count, mean, M2)`` statistics: exact
    statistics over many batches, processes or machines.
fold_batchnorm
    The weight and bias of a convolution or linear layer with an
    evaluation-mode BatchNorm folded in (inference).
GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm
    The normalisation family on the same machinery, with their functional
    forms ``group_norm``, ``instance_norm`` and ``layer_norm``.
SyncBatchNorm
    Batch normalisation of a batch split over MPI processes (extra ``mpi``).
cuda_stream
    A context manager that queues the GPU work on a chosen CUDA stream.
no_grad, is_grad_enabled
    Forwards that keep nothing for a backward pass (inference), and whether
    the calling thread is inside one.
precompile
    Compile the kernels ahead of their first use (``python -m numba_bn precompile``).

Examples
--------
>>> import numpy as np
>>> import numba_bn as nbn
>>> bn = nbn.BatchNorm2d(8)
>>> x = np.random.default_rng(0).standard_normal((4, 8, 6, 6), dtype=np.float32)
>>> y = bn(x)                              # training mode: batch statistics
>>> grad_x = bn.backward(np.ones_like(y))  # also sets bn.grad_weight, bn.grad_bias
>>> y_eval = bn.eval()(x)                  # evaluation mode: running statistics
"""

from .cuda.stream import cuda_stream
from ._grad_mode import is_grad_enabled, no_grad
from ._precompile import precompile
from ._stats import ChannelStats, channel_stats
from .fold import fold_batchnorm
from .functional import batch_norm, batch_stats
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .norm_functional import group_norm, instance_norm, layer_norm
from .norm_modules import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm
from .sync_batchnorm import SyncBatchNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batch_norm",
    "batch_stats",
    "ChannelStats",
    "channel_stats",
    "cuda_stream",
    "fold_batchnorm",
    "GroupNorm",
    "group_norm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "instance_norm",
    "LayerNorm",
    "layer_norm",
    "is_grad_enabled",
    "no_grad",
    "precompile",
    "SyncBatchNorm",
    "__version__",
]
