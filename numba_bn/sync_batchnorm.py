"""``SyncBatchNorm``: batch normalisation of a batch split over MPI processes.

A training forward computes this process's per-channel ``(count, mean, M2)``
states with the backend's kernels, exchanges them (one all-gather of
``2C + 2`` float64 values per process: the channel count, the count, the
means and M2, after a validity flag) and merges them with Chan's formula in
rank order, so every process normalises with the statistics of the whole
batch and updates its running buffers with the same bits. Unlike sending
means and inverse standard deviations (and recovering the variance as
``1 / invstd**2 - eps``) or averaging ``E[x]`` and ``E[x**2]``, this is exact
for any per-process batch sizes, empty ones included. A backward exchanges
the ``2C`` totals ``sum(dy)`` and ``sum(dy * (x - mean))``. On a GPU the
states are copied to the host for the exchange (O(C) values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ._backend import BatchStatistics
from ._mpi import RankExchange
from ._stats import merge_in_order
from ._typing import Array
from ._validation import describe_type
from .modules import _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation with the statistics of a batch spread over MPI processes.

    Every process builds the same module and calls it on its share of the
    batch, in the same order (SPMD, as with ``mpiexec -n 4 python train.py``).
    A training forward normalises each share with the statistics of the
    union of all shares: exactly what a ``BatchNorm`` computes on the
    concatenation of the shares in rank order, for unequal and empty
    shares too. Running buffers and ``num_batches_tracked`` are updated
    identically, bit for bit, on every process. Evaluation mode communicates
    nothing. With one process it behaves like ``BatchNorm``.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, bias, dtype, device, channel_axis, activation
        As for :class:`numba_bn.BatchNorm2d`. Input may have any rank of 2
        or more: ``(N, C, *)``, or ``(N, *, C)`` with ``channel_axis=-1``.
    comm : mpi4py.MPI.Comm or None, default None
        Keyword-only. The processes that share the batch; None means
        ``MPI.COMM_WORLD``.

    Raises
    ------
    ImportError
        mpi4py (or an MPI library) is not installed: ``pip install 'numba_bn[mpi]'``.
    TypeError, ValueError
        As for ``BatchNorm``, and a ``comm`` that is not a communicator.

    Notes
    -----
    - ``backward(dy)`` returns this process's share of the ``grad_input`` of
      a ``BatchNorm`` backward on the concatenated batch and ``dy``.
      ``grad_weight`` and ``grad_bias`` are this process's contributions, as
      in PyTorch's ``SyncBatchNorm``: their sum over processes is the
      gradient of the whole batch (sum them with ``comm.Allreduce`` or
      with the rest of the model's gradients).
    - When one process's input (or ``grad_output``) is invalid, every
      process raises a ``ValueError``, none is left waiting: that process
      its usual error (a ``TypeError`` there is also a ``ValueError``), the
      others one naming it. A call that raises changes no state on any process.
    - Collectives are called in lockstep: every process must call
      ``forward``/``backward`` the same number of times, in the same mode.
    - A pickled or copied module uses ``MPI.COMM_WORLD`` when restored.

    Examples
    --------
    Run with ``mpiexec -n 4 python script.py``::

        from mpi4py import MPI
        import numba_bn as nbn

        bn = nbn.SyncBatchNorm(64)
        y = bn(x_share)                  # statistics of every process's x_share together
        grad_x = bn.backward(dy_share)
        MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, bn.grad_weight)  # the whole batch's gradient
    """

    _input_ranks = range(2, 65)
    _rank_description = "2D or higher"
    _repeats_small_calls = False  # the statistics are every process's

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        dtype: DTypeLike = np.float32,
        device: str = "cpu",
        channel_axis: int = 1,
        activation: str | None = None,
        comm: Any = None,
    ) -> None:
        exchange = RankExchange(comm)  # first: no module without its communicator
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats,
            bias=bias, dtype=dtype, device=device, channel_axis=channel_axis, activation=activation,
        )
        self._exchange = exchange
        self._synced_forward = False

    @classmethod
    def from_batchnorm(cls, module: _BatchNorm, comm: Any = None) -> SyncBatchNorm:
        """A ``SyncBatchNorm`` with ``module``'s configuration, mode, parameters and buffers.

        Like PyTorch's ``convert_sync_batchnorm``, the new module holds the
        same parameter and buffer arrays (not copies), so code that updates
        ``module.weight`` in place also updates the new module's.

        Parameters
        ----------
        module : BatchNorm1d, BatchNorm2d or BatchNorm3d
            The module to synchronise.
        comm : mpi4py.MPI.Comm or None, default None
            The processes that share the batch; None means ``MPI.COMM_WORLD``.

        Returns
        -------
        SyncBatchNorm

        Raises
        ------
        TypeError
            ``module`` is not a numba_bn batch normalisation module.
        """
        if not isinstance(module, _BatchNorm) or isinstance(module, SyncBatchNorm):
            raise TypeError(f"expected a numba_bn BatchNorm1d/2d/3d module, got {describe_type(module)}")
        sync = cls(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
            bias=module._use_bias, dtype=module.dtype, device=module.device,
            channel_axis=module.channel_axis, activation=module.activation, comm=comm,
        )
        for name in module._ARRAY_NAMES:
            setattr(sync, name, getattr(module, name))
        sync.num_batches_tracked = module.num_batches_tracked
        sync.training = module.training
        return sync

    @property
    def comm(self) -> Any:
        """The mpi4py communicator of the processes that share the batch."""
        return self._exchange.comm

    # ------------------------------------------------------------ forward

    def forward(self, x: Array, residual: Array | None = None, *, out: Array | None = None) -> Array:
        """Normalise this process's share ``x`` of the batch; see the class docstring.

        In training mode every process of ``comm`` must call it too (one
        exchange of O(C) values); in evaluation mode it is ``BatchNorm``'s
        forward and communicates nothing.

        Parameters
        ----------
        x : numpy.ndarray or DeviceArray
            This process's share: ``(N, C, *)`` (or channels-last), any
            ``N`` including 0, of the module's dtype and device.
        residual : numpy.ndarray or DeviceArray or None, default None
            Added before the activation, as in ``BatchNorm.forward``.
        out : numpy.ndarray or DeviceArray or None, default None
            Keyword-only. Receives the result, as in ``BatchNorm.forward``.

        Returns
        -------
        numpy.ndarray or DeviceArray
            The normalised share, a new C-contiguous array of ``x``'s shape and dtype.

        Raises
        ------
        ValueError
            As ``BatchNorm.forward`` on the process whose input is wrong (its
            TypeErrors are ValueErrors too), and a ValueError naming that
            process on every other one. Also when the whole batch has a
            single value per channel.
        """
        y = super().forward(x, residual, out=out)
        self._synced_forward = self.training
        return y

    def _normalizing_statistics(self, x, out, residual):
        if not self.training:
            return super()._normalizing_statistics(x, out, residual)
        backend, channels = self._backend, self.num_features
        try:
            x, axis, out, residual = self._checked_forward_input(x, out, residual)
            local = backend.batch_statistics(x, axis)
        except Exception as error:
            raise self._exchange.report_failure(2 * channels + 2, error)  # noqa: B904 (it is error, or caused by it)
        # This process's row: [C, count, mean..., M2...] (an empty share has count 0: the merge's identity).
        row = np.empty(2 * channels + 2)
        row[0], row[1] = channels, local.count
        row[2 : channels + 2] = backend.to_host(local.mean)
        row[channels + 2 :] = backend.to_host(local.m2)
        rows = self._exchange.gather(row)
        if rows[:, 0].tolist() != [channels] * len(rows):
            raise ValueError(
                f"expected {channels} channels on every process, got {rows[:, 0].astype(np.int64).tolist()} by rank"
            )
        count, mean, m2 = merge_in_order(rows[:, 1].tolist(), rows[:, 2 : channels + 2], rows[:, channels + 2 :])
        if count == 1:  # PyTorch's check, on the whole batch's count
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got 1 value per channel over all {self._exchange.size} processes"
            )
        mean, m2 = backend.from_host(np.stack((mean, m2)), np.float64)
        return x, axis, BatchStatistics(int(count), mean, m2), out, residual

    # ----------------------------------------------------------- backward

    def backward(self, grad_output: Array) -> Array | tuple[Array, Array]:
        """This process's share of ``grad_input``; see the class docstring.

        After a training forward every process of ``comm`` must call it too
        (one exchange of ``2C`` values); after an evaluation forward it is
        ``BatchNorm``'s backward and communicates nothing. Sets
        ``grad_weight`` and ``grad_bias`` to this process's contributions.

        Parameters
        ----------
        grad_output : numpy.ndarray or DeviceArray
            The gradient w.r.t. this process's output share (its shape and dtype).

        Returns
        -------
        numpy.ndarray or DeviceArray, or a tuple of two
            This process's share of the input's gradient (and, after a
            forward with a residual, of the residual's).

        Raises
        ------
        ValueError
            As ``BatchNorm.backward`` on the process whose call is wrong (its
            TypeErrors and RuntimeErrors are ValueErrors too), and a
            ValueError naming that process on every other one.
        """
        if not self._synced_forward:
            return super().backward(grad_output)
        try:
            saved, grad_output = self._checked_backward_input(grad_output)
        except Exception as error:
            raise self._exchange.report_failure(2 * self.num_features, error)  # noqa: B904 (it is error, or caused by it)
        # One process's sums are the totals: BatchNorm's own backward then (its paths, its bits).
        combine_totals = None if self._exchange.size == 1 else self._sum_over_processes
        grads = self._backend.backward(saved, grad_output, self._weight_grad_dtype(), combine_totals=combine_totals)
        return self._store_gradients(grads)

    def _sum_over_processes(self, sum_dy, sum_dy_xmu):
        """The whole batch's ``sum(dy)`` and ``sum(dy * (x - mean))`` from every process's (one exchange)."""
        totals = self._exchange.sum(np.concatenate((sum_dy, sum_dy_xmu)))
        return totals[: self.num_features], totals[self.num_features :]

    # --------------------------------------------------------------- misc

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["_exchange"]
        state["_synced_forward"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._exchange = RankExchange(None)
