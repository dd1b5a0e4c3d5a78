"""The collectives of ``SyncBatchNorm`` over MPI; the one module that imports mpi4py.

Each exchange is one ``Allgather`` of a fixed-size float64 row per process
(no pickling), led by a validity flag. Gathering rows, rather than reducing
them inside MPI, lets every process combine them itself in rank order, so
that every process computes the same bits (MPI does not promise that of
``Allreduce``); the rows are O(C) values, so the extra volume is nothing
next to the data. A process whose input is invalid still joins the exchange,
with its flag down: then every process raises instead of one raising and
the others waiting forever.
"""

from __future__ import annotations

import numpy as np

from ._validation import describe_type

INSTALL_HINT = "pip install 'numba_bn[mpi]'"

_OK, _FAILED = 1.0, 0.0


class InvalidInputTypeError(TypeError, ValueError):
    """A TypeError on the process whose input was invalid, that is also the ValueError every process raises."""


class InvalidCallError(RuntimeError, ValueError):
    """A RuntimeError (no forward to go back through) that is also the ValueError every process raises."""


_ALSO_VALUE_ERRORS = {TypeError: InvalidInputTypeError, RuntimeError: InvalidCallError}


def world_communicator():
    """``mpi4py.MPI.COMM_WORLD``, or ImportError naming the extra to install."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            f"SyncBatchNorm needs mpi4py and an MPI library ({error}); install them with {INSTALL_HINT} "
            "(the mpich wheel), or mpi4py built against the system's MPI"
        ) from error
    return MPI.COMM_WORLD


def _check_communicator(comm):
    for method in ("Allgather", "allgather", "Get_rank", "Get_size"):
        if not callable(getattr(comm, method, None)):
            raise TypeError(f"expected comm to be an mpi4py communicator (with {method}), got {describe_type(comm)}")
    return comm


class RankExchange:
    """Fixed-size float64 exchanges between the processes of one communicator."""

    def __init__(self, comm=None):
        self.comm = world_communicator() if comm is None else _check_communicator(comm)
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every process's ``values`` (the same length on each), as a ``(size, len)`` float64 array in rank order.

        ValueError on every process when a process called :meth:`report_failure` instead.
        """
        rows = self._allgather(_OK, np.asarray(values, np.float64).ravel())
        if rows[:, 0].tolist() != [_OK] * self.size:
            self._raise_for_failures(rows, None)
        return rows[:, 1:]

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The sum over processes of the vector ``values`` (the same length on each), added in rank order."""
        rows = self.gather(values)
        total = rows[0].copy()
        for row in rows[1:]:
            total += row
        return total

    def report_failure(self, length: int, error: Exception) -> Exception:
        """Join the exchange that the other processes are in (rows of ``length`` values) with the flag down.

        Returns the exception for the caller to raise: ``error`` when it is a
        ValueError, else one that is both ``error``'s kind and a ValueError
        (so that every process can catch the same ValueError). The other
        processes raise a ValueError that names this process and the error.
        """
        rows = self._allgather(_FAILED, np.zeros(length))
        self._raise_for_failures(rows, error)
        if isinstance(error, ValueError):
            return error
        for kind, combined_kind in _ALSO_VALUE_ERRORS.items():
            if isinstance(error, kind):
                combined = combined_kind(str(error))
                combined.__cause__ = error
                return combined
        return error

    def _allgather(self, flag, values):
        row = np.empty(values.size + 1)
        row[0] = flag
        row[1:] = values
        rows = np.empty((self.size, row.size))
        self.comm.Allgather(row, rows)
        return rows

    def _raise_for_failures(self, rows, own_error):
        """Exchange the failed processes' messages (only on this rare path), then raise on the healthy ones."""
        message = None if own_error is None else f"{type(own_error).__name__}: {own_error}"
        messages = self.comm.allgather(message)
        if own_error is not None:
            return  # the caller re-raises its own, more precise, exception
        failed = [rank for rank in range(self.size) if rows[rank, 0] != _OK]
        details = "; ".join(f"rank {rank}: {messages[rank]}" for rank in failed)
        raise ValueError(
            f"expected valid input on every one of the {self.size} processes, got invalid input on "
            f"rank{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} ({details})"
        )
